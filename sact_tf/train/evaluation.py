"""Evaluation: accuracy, FLOPs and ponder statistics of a checkpoint.

`evaluate` runs the model over the evaluation split and returns a summary
dict, which it also writes as JSON (`eval_<split>_<size>px.json` in the model
directory) and as TensorBoard scalars (run `eval_<split>_<size>px`). Means and
standard deviations are over images; a block's units used are first averaged
over the positions of each image (SACT).

Summary keys: dataset, split, image_size, num_examples, step, checkpoint,
model (family, units, model_type, num_classes, base_channels), tau, top1,
top5, cross_entropy, loss (cross-entropy + tau * ponder cost), flops_mean,
flops_std, flops_no_halting (the same network evaluating every unit),
flops_ratio, ponder_cost_mean / _std (ACT/SACT), ponder_on_object_mean / _std
(datasets with boxes, ACT/SACT), and blocks: a list of {name, num_units,
units_mean, units_std, ponder_cost_mean, ponder_cost_std,
ponder_on_object_mean}.

For ACT/SACT models the TensorBoard run also holds the ponder-map images of
the first batch (`PONDER_IMAGES` images; tags `ponder_map/total`,
`ponder_map/<block>`, `ponder_map/legend`) and per-block histograms of the
per-position ponder cost over the whole evaluation
(`ponder_cost_per_position/<block>`, fixed bins, bounded memory).
"""

import math
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from sact_tf import flops as flops_lib
from sact_tf import summaries as summaries_lib
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import metrics


# Images of the first batch whose ponder maps evaluation writes.
PONDER_IMAGES = 4
# Keys every evaluation JSON holds (see `read_result`).
RESULT_KEYS = ('flops_mean', 'top1', 'model', 'tau', 'image_size')


def result_name(split, image_size):
  return f'eval_{split}_{image_size}px'


def result_path(model_dir, split, image_size):
  return os.path.join(model_dir, result_name(split, image_size) + '.json')


def plain_flops(config, image_size):
  """FLOPs per image of the config's network with every unit evaluated."""
  kwargs = dict(units=list(config.units), height=image_size, width=image_size,
                num_classes=config.num_classes,
                base_channels=config.base_channels)
  if config.family == 'imagenet':
    return flops_lib.imagenet_resnet_flops(**kwargs)
  return flops_lib.cifar_resnet_flops(**kwargs)


def units_per_image(outputs, block_name):
  """A block's units used per image, float32 `[B]` (SACT: position mean)."""
  units = tf.cast(outputs[f'{block_name}/num_units'], tf.float32)
  if units.shape.rank > 1:
    units = tf.reduce_mean(units, axis=[1, 2])
  return units


def _make_eval_step(model, config, has_bbox):
  """A `tf.function`: batch -> (per-example values, per-block ponder maps)."""
  adaptive = config.model_type != 'resnet'

  @tf.function
  def eval_step(batch):
    images, labels = batch['image'], batch['label']
    outputs = model(images, training=False)
    logits = outputs['logits']
    result = {
        'cross_entropy': tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, logits),
        'top1': tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32),
        'top5': tf.cast(tf.math.in_top_k(labels, logits,
                                         min(5, config.num_classes)),
                        tf.float32),
        'flops': tf.cast(outputs['flops'], tf.float64),
    }
    inside_sum, total_sum = 0.0, 0.0
    maps = {}
    for name in model.block_names:
      result[f'{name}/units'] = units_per_image(outputs, name)
      if adaptive:
        result[f'{name}/ponder_cost'] = outputs[f'{name}/ponder_cost']
        maps[f'{name}/ponder_map'] = outputs[f'{name}/ponder_map']
        if has_bbox:
          inside, total = metrics.ponder_mass_in_box(
              outputs[f'{name}/ponder_map'], batch['bbox'])
          result[f'{name}/ponder_on_object'] = metrics.ponder_on_object(
              inside, total, batch['bbox'])
          inside_sum += inside
          total_sum += total
    if adaptive:
      result['ponder_cost'] = outputs['ponder_cost']
      if has_bbox:
        result['ponder_on_object'] = metrics.ponder_on_object(
            inside_sum, total_sum, batch['bbox'])
    return result, maps

  return eval_step


def mean_std(values, finite_only=True):
  """(mean, std) of `values` as Python floats, (nan, nan) if there are none.

  `finite_only` leaves out NaN and infinite values first.
  """
  values = np.asarray(values, np.float64)
  if finite_only:
    values = values[np.isfinite(values)]
  if values.size == 0:
    return float('nan'), float('nan')
  return float(values.mean()), float(values.std())


def summarize(per_example, config, image_size, block_names, block_units):
  """The summary dict of concatenated per-example arrays."""
  adaptive = config.model_type != 'resnet'
  summary = {
      'num_examples': int(len(per_example['top1'])),
      'top1': float(np.mean(per_example['top1'])),
      'top5': float(np.mean(per_example['top5'])),
      'cross_entropy': float(np.mean(per_example['cross_entropy'])),
  }
  summary['flops_mean'], summary['flops_std'] = mean_std(
      per_example['flops'])
  summary['flops_no_halting'] = plain_flops(config, image_size)
  summary['flops_ratio'] = summary['flops_mean'] / summary['flops_no_halting']
  loss = summary['cross_entropy']
  if adaptive:
    summary['ponder_cost_mean'], summary['ponder_cost_std'] = mean_std(
        per_example['ponder_cost'])
    loss += config.tau * summary['ponder_cost_mean']
    if 'ponder_on_object' in per_example:
      (summary['ponder_on_object_mean'],
       summary['ponder_on_object_std']) = mean_std(
           per_example['ponder_on_object'])
  summary['loss'] = loss
  blocks = []
  for name, num_units in zip(block_names, block_units):
    block = {'name': name, 'num_units': int(num_units)}
    block['units_mean'], block['units_std'] = mean_std(
        per_example[f'{name}/units'])
    if adaptive:
      block['ponder_cost_mean'], block['ponder_cost_std'] = mean_std(
          per_example[f'{name}/ponder_cost'])
      if f'{name}/ponder_on_object' in per_example:
        block['ponder_on_object_mean'], _ = mean_std(
            per_example[f'{name}/ponder_on_object'])
    blocks.append(block)
  summary['blocks'] = blocks
  return summary


def _write_summaries(log_dir, summary, ponder_images=None, histograms=None,
                     block_names=(), units_per_block=()):
  writer = tf.summary.create_file_writer(log_dir)
  scalars = {k: v for k, v in summary.items()
             if k in ('top1', 'top5', 'loss', 'cross_entropy', 'flops_mean',
                      'flops_std', 'flops_ratio', 'ponder_cost_mean',
                      'ponder_cost_std', 'ponder_on_object_mean',
                      'ponder_on_object_std')}
  for block in summary['blocks']:
    for key, value in block.items():
      if key not in ('name', 'num_units'):
        scalars[f'{block["name"]}/{key}'] = value
  with writer.as_default(step=summary['step']):
    for key, value in scalars.items():
      if value is not None and math.isfinite(value):
        tf.summary.scalar(key, value)
    if ponder_images is not None:
      images, maps = ponder_images
      summaries_lib.write_ponder_images(
          images, maps, block_names, units_per_block, summary['step'],
          max_outputs=PONDER_IMAGES)
    if histograms is not None:
      histograms.write(summary['step'])
  writer.flush()
  writer.close()


def evaluate(config, image_size=None, checkpoint=None, write=True):
  """Evaluates a checkpoint of the config's model.

  Args:
    config: the run's `ExperimentConfig`.
    image_size: evaluation resolution (default: the config's first
      eval_image_sizes entry).
    checkpoint: checkpoint directory or prefix (default: the latest in
      config.model_dir).
    write: write the JSON and TensorBoard summaries to the model directory.

  Returns:
    The summary dict (see the module docstring).

  Raises:
    DatasetNotReadyError: before any model is built, if the data is missing.
    FileNotFoundError: there is no checkpoint.
  """
  image_size = image_size or config.eval_image_sizes[0]
  spec = datasets.get_spec(config.dataset)
  builder = datasets.prepare(config.dataset, config.data_dir, config.download)
  prefix = checkpointing.resolve(checkpoint or config.model_dir)
  saved = config_lib.load(config.model_dir)
  config_lib.check_same_model(config, saved, config.model_dir)
  model = checkpointing.build_model(config.model_kwargs(), image_size)
  checkpointing.restore_model(model, prefix)
  step = checkpoint_step(prefix)
  has_bbox = spec.bbox_key is not None
  dataset = pipelines.eval_dataset(builder, spec, config.preprocessing,
                                   image_size, config.eval_batch_size,
                                   num_examples=config.eval_examples or None)
  eval_step = _make_eval_step(model, config, has_bbox)
  collected = {}
  adaptive = config.model_type != 'resnet'
  histograms = (summaries_lib.PonderHistograms(
      model.block_names, model.units_per_block) if write and adaptive
                else None)
  ponder_images = None
  started = time.time()
  for index, batch in enumerate(dataset):
    values, maps = eval_step(batch)
    for key, value in values.items():
      collected.setdefault(key, []).append(value.numpy())
    if histograms is not None:
      maps = {k: v.numpy() for k, v in maps.items()}
      histograms.add(maps)
      if ponder_images is None:
        ponder_images = (
            summaries_lib.display_images(batch['image'][:PONDER_IMAGES],
                                         config.preprocessing),
            {k: v[:PONDER_IMAGES] for k, v in maps.items()})
    if (index + 1) % 50 == 0:
      logging.info('Evaluated %d batches (%.0f s).', index + 1,
                   time.time() - started)
  if not collected:
    raise ValueError(f'Split {spec.eval_split} of {config.dataset} gave no '
                     'examples.')
  per_example = {k: np.concatenate(v) for k, v in collected.items()}
  summary = summarize(per_example, config, image_size, model.block_names,
                      model.units_per_block)
  summary.update(
      dataset=config.dataset, split=spec.eval_split, image_size=image_size,
      step=step, checkpoint=os.path.abspath(prefix),
      model=config.model_fields(), tau=config.tau,
      seconds=time.time() - started)
  if write:
    name = result_name(spec.eval_split, image_size)
    config_lib.write_json(os.path.join(config.model_dir, name + '.json'),
                          nan_to_none(summary))
    _write_summaries(os.path.join(config.model_dir, name), summary,
                     ponder_images, histograms, model.block_names,
                     model.units_per_block)
  return summary


def nan_to_none(value):
  """`value` with every NaN or infinite float (in dicts, lists, tuples) None.

  JSON has no NaN; null says "undefined" (e.g. no valid box) portably.
  """
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [nan_to_none(v) for v in value]
  return value


def checkpoint_step(prefix):
  """The training step saved in a checkpoint (0 if it has none)."""
  reader = tf.train.load_checkpoint(prefix)
  key = 'step/.ATTRIBUTES/VARIABLE_VALUE'
  return int(reader.get_tensor(key)) if reader.has_tensor(key) else 0


def read_result(path):
  """An evaluation JSON (`eval_<split>_<size>px.json`), checked.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not JSON, or not an evaluation summary (names what lacks).
  """
  summary = config_lib.read_json(path)
  missing = ([k for k in RESULT_KEYS if k not in summary]
             if isinstance(summary, dict) else list(RESULT_KEYS))
  if not missing:
    model = summary['model']
    missing = [f'model.{k}' for k in ('model_type', 'family', 'units')
               if not isinstance(model, dict) or k not in model]
  if missing:
    raise ValueError(
        f'{path} is not an evaluation JSON: it lacks {", ".join(missing)}. '
        'Pass the eval_<split>_<size>px.json files that evaluation writes '
        'in the model directory.')
  if summary['flops_mean'] is None or summary['top1'] is None:
    raise ValueError(f'{path} has no FLOPs or accuracy (null values).')
  return summary


def baseline_units(summary):
  """Units per block of the non-adaptive baseline of an evaluated model.

  The average units used per block, rounded to the nearest integer (halves
  up) and at least 1 (paper 4.1).
  """
  try:
    blocks = summary['blocks']
    return [max(1, int(math.floor(b['units_mean'] + 0.5))) for b in blocks]
  except (KeyError, TypeError) as e:
    raise ValueError('Not an evaluation summary: it needs "blocks" with '
                     f'"units_mean" per block ({e}).') from e


def format_table(summary):
  """A readable table of an evaluation summary."""
  model = summary['model']
  tau = (f', tau {summary["tau"]}' if model['model_type'] != 'resnet'
         else '')
  lines = [
      f'{summary["dataset"]} {summary["split"]}, {summary["num_examples"]} '
      f'images at {summary["image_size"]}px, step {summary["step"]}',
      f'model: {model["model_type"]} {model["family"]} ResNet, units '
      f'{model["units"]}, base channels {model["base_channels"]}{tau}',
      '',
      f'  top-1 accuracy       {100 * summary["top1"]:8.2f} %',
      f'  top-5 accuracy       {100 * summary["top5"]:8.2f} %',
      f'  loss                 {summary["loss"]:8.4f}  (cross-entropy '
      f'{summary["cross_entropy"]:.4f})',
      f'  FLOPs per image      {summary["flops_mean"]:.4g} +- '
      f'{summary["flops_std"]:.3g}',
      f'  without halting      {summary["flops_no_halting"]:.4g}  '
      f'({100 * summary["flops_ratio"]:.1f} % used)',
  ]
  if 'ponder_cost_mean' in summary:
    lines.append(f'  ponder cost          {summary["ponder_cost_mean"]:8.3f} '
                 f'+- {summary["ponder_cost_std"]:.3f}')
  if 'ponder_on_object_mean' in summary:
    lines.append(f'  ponder on object     '
                 f'{summary["ponder_on_object_mean"]:8.3f} +- '
                 f'{summary["ponder_on_object_std"]:.3f}  (>1: computation '
                 'goes to the object)')
  adaptive = 'ponder_cost_mean' in summary
  header = f'  {"block":<10}{"units":>6}{"units used":>18}'
  if adaptive:
    header += f'{"ponder cost":>18}'
  if 'ponder_on_object_mean' in summary:
    header += f'{"on object":>11}'
  lines += ['', header]
  for block in summary['blocks']:
    row = (f'  {block["name"]:<10}{block["num_units"]:>6}'
           f'{block["units_mean"]:>10.2f} +- {block["units_std"]:<4.2f}')
    if adaptive:
      row += (f'{block["ponder_cost_mean"]:>10.2f} +- '
              f'{block["ponder_cost_std"]:<4.2f}')
    if 'ponder_on_object_mean' in block:
      row += f'{block["ponder_on_object_mean"]:>11.2f}'
    lines.append(row)
  return '\n'.join(lines)
