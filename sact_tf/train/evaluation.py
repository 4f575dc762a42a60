"""Evaluation: accuracy, FLOPs and ponder statistics of a checkpoint.

`evaluate` runs the model over the evaluation split and returns a summary
dict, which it also writes as a JSON record in the model directory and as
TensorBoard scalars (a run of the record's name). Means and standard
deviations are over images; a block's units used are first averaged over the
positions of each image (SACT).

Record names. `eval_<split>_<size>px.json` (and the TensorBoard run
`eval_<split>_<size>px`) is the run's standard result: every example of the
split, the run's own settings (its config.json) and its latest checkpoint.
Any other evaluation gets its own name (`result_name`), the standard one
followed by
  `_first<N>`       only the first N examples (`eval_examples`, partial);
  `_<field><value>` a setting of `EVAL_FIELDS` that differs from
                    config.json, e.g. `_tau0.9`, `_dataset-cifar10`;
  `_step<S>`        a checkpoint other than the run's latest;
e.g. `eval_test_32px_first20_tau0.9.json`. A record is never overwritten by
a different evaluation: the record already at the name is renamed after
what it holds first (a standard record of an older checkpoint becomes
`eval_<split>_<size>px_step<S>.json`), and that is logged. Evaluating the
same checkpoint with the same settings again replaces its record.

Summary keys: dataset, split, image_size, num_examples, step, checkpoint,
latest_checkpoint (whether it was the run's latest), eval_examples (the
examples limit, 0: all), partial (fewer examples than the split holds),
overrides ({field: [config.json value, evaluated value]} of the
`EVAL_FIELDS` that differ), model (family, units, model_type, num_classes,
base_channels), tau, eps, preprocessing, precision (the Keras dtype
policy evaluated in), top1, top5, cross_entropy, loss
(cross-entropy + tau * ponder cost), flops_mean, flops_std, flops_no_halting
(the same network evaluating every unit), flops_ratio, ponder_cost_mean /
_std (ACT/SACT), ponder_on_object_mean / _std (datasets with boxes,
ACT/SACT), replicas (that evaluated it), seconds, and blocks: a list of
{name, num_units, units_mean,
units_std, ponder_cost_mean, ponder_cost_std, ponder_on_object_mean}. The
returned summary also holds `path`, the JSON written (None without
`write`); the JSON itself does not (a record may be renamed later).

For ACT/SACT models the TensorBoard run also holds the ponder-map images of
the first batch (`PONDER_IMAGES` images; tags `ponder_map/total`,
`ponder_map/<block>`, `ponder_map/legend`) and per-block histograms of the
per-position ponder cost over the whole evaluation
(`ponder_cost_per_position/<block>`, fixed bins, bounded memory).

Progress (examples done, rate, ETA) is reported through `sact_tf.progress`.
With `write`, the record's main numbers (`hparams.EVAL_METRICS`) also go to
the run's HParams table as scalars `<record name>/<metric>`
(`sact_tf.train.hparams`).
"""

import dataclasses
import math
import os
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf

from sact_tf import fileio
from sact_tf import flops as flops_lib
from sact_tf import progress as progress_lib
from sact_tf import summaries as summaries_lib
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import hparams
from sact_tf.train import metrics


# Images of the first batch whose ponder maps evaluation writes.
PONDER_IMAGES = 4
# Keys every evaluation JSON holds (see `read_result`).
RESULT_KEYS = ('flops_mean', 'top1', 'model', 'tau', 'image_size')
# Fields of `ExperimentConfig`, besides the model fields (which the
# checkpoint must match), that change what an evaluation measures: tau
# weighs the ponder cost in the loss, eps decides where units halt, dataset
# and preprocessing make the images. halting_bias_init only initialises
# (the checkpoint holds the biases); weight decay and label smoothing only
# enter the training loss; batch size and data location change nothing.
# Records name them without their section (loss.tau, model.eps,
# data.dataset, data.preprocessing, run.precision): see `config_value`.
# The precision (dtype policy) changes the outputs by rounding: a float32
# run evaluated in bfloat16 is a record of its own.
EVAL_FIELDS = ('tau', 'eps', 'dataset', 'preprocessing', 'precision')


def _format_value(value):
  """A setting's value as it appears in a record name."""
  if isinstance(value, float):
    text = repr(value)
  elif isinstance(value, (list, tuple)):
    text = ','.join(_format_value(v) for v in value)
  else:
    text = str(value)
  return re.sub(r'[^A-Za-z0-9.,+_-]+', '-', text)


def evaluated_values(overrides):
  """{field: evaluated value} of a record's `overrides`.

  Accepts the record form {field: [saved, evaluated]} and plain values
  {field: evaluated}.
  """
  values = {}
  for field, value in (overrides or {}).items():
    if isinstance(value, (list, tuple)) and len(value) == 2:
      value = value[1]
    values[field] = value
  return values


def record_suffix(eval_examples=0, overrides=None, step=None, order=()):
  """The part of a record name after the standard name (see module doc).

  Args:
    eval_examples: N of a partial evaluation (first N examples); 0 for all.
    overrides: {field: evaluated value} (or the record form {field: [saved,
      evaluated]}) of the settings that differ from the run's config.json.
    step: the checkpoint step of an evaluation of another checkpoint than
      the run's latest; None for the latest.
    order: fields in the order their parts appear; others follow, sorted.
  """
  parts = []
  if eval_examples:
    parts.append(f'first{int(eval_examples)}')
  values = evaluated_values(overrides)
  fields = [f for f in order if f in values] + sorted(
      f for f in values if f not in order)
  for field in fields:
    value = values[field]
    separator = '-' if isinstance(value, str) else ''
    parts.append(f'{field}{separator}{_format_value(value)}')
  if step is not None:
    parts.append(f'step{int(step)}')
  return ''.join('_' + p for p in parts)


def result_name(split, image_size, eval_examples=0, overrides=None,
                step=None):
  """The name (no `.json`) of an evaluation record and TensorBoard run.

  `result_name(split, image_size)` is the standard name
  `eval_<split>_<size>px`, the full evaluation of the run's settings at its
  latest checkpoint; the other arguments add the suffixes of
  `record_suffix`, e.g. `result_name('test', 32, eval_examples=20,
  overrides={'tau': 0.9})` is `eval_test_32px_first20_tau0.9`.
  """
  return f'eval_{split}_{image_size}px' + record_suffix(
      eval_examples, overrides, step, EVAL_FIELDS)


def result_path(model_dir, split, image_size, eval_examples=0,
                overrides=None, step=None):
  """`<model_dir>/<result_name(...)>.json`."""
  return os.path.join(model_dir, result_name(
      split, image_size, eval_examples, overrides, step) + '.json')


def record_identity(record):
  """(eval_examples, {field: evaluated value}, step) that name a record.

  The inverse of what `evaluate` passes to `result_name`: the examples
  limit of a partial record (0 if full), its overrides and its step unless
  it was of the run's latest checkpoint.
  """
  partial = record.get('partial')
  limit = (record.get('eval_examples') or record.get('num_examples')
           or record.get('num_images') or 0) if partial else 0
  step = None if record.get('latest_checkpoint', True) else record.get('step')
  return limit, evaluated_values(record.get('overrides')), step


def split_size(builder, split):
  """The number of examples of a prepared builder's `split`, or None if
  unknown (nothing is read)."""
  try:
    count = int(pipelines.load_encoded(builder, split).cardinality())
  except (ValueError, TypeError, tf.errors.OpError):
    return None
  return count if count >= 0 else None


def expected_examples(eval_examples, size):
  """The examples an evaluation limited to `eval_examples` (0: all) of a
  split of `size` examples (None: unknown) sees, or None if unknown."""
  if size is None:
    return eval_examples or None
  return min(eval_examples, size) if eval_examples else size


def is_partial(eval_examples, num_examples, size):
  """Whether an evaluation limited to `eval_examples` (0: all) that saw
  `num_examples` left part of a split of `size` examples (None: unknown)."""
  if not eval_examples or num_examples < eval_examples:
    return False
  return size is None or size > eval_examples


def is_latest_checkpoint(prefix, model_dir):
  """Whether checkpoint `prefix` is the latest checkpoint of `model_dir`.

  False when `model_dir` has no usable latest checkpoint (none, or its
  newest is corrupt and `prefix` an older one).
  """
  try:
    latest = checkpointing.resolve(model_dir)
  except (FileNotFoundError, ValueError):
    return False
  return fileio.absolute(latest) == fileio.absolute(prefix)


def evaluates_latest(checkpoint, prefix, model_dir):
  """Whether `checkpoint` (as given to `evaluate`, resolved to `prefix`)
  is the run's latest checkpoint."""
  if checkpoint is None or (
      checkpointing.is_folder(checkpoint)
      and fileio.absolute(checkpoint) == fileio.absolute(model_dir)):
    return True
  return is_latest_checkpoint(prefix, model_dir)


def config_value(config, field):
  """A field of a run's config named without its section, as records name
  `EVAL_FIELDS` (e.g. 'tau' is loss.tau)."""
  return config_lib.get(config, config.key_of(field))


def settings_overrides(saved, config, fields, value_of=config_value):
  """{field: [saved value, config value]} of `fields` that differ.

  Lists and tuples compare as lists; `saved` None (no config.json) gives
  no overrides. `value_of(config, field)` reads a field.
  """
  if saved is None:
    return {}
  overrides = {}
  for field in fields:
    old, new = value_of(saved, field), value_of(config, field)
    if isinstance(old, (list, tuple)):
      old, new = list(old), list(new)
    if old != new:
      overrides[field] = [old, new]
  return overrides


def previous_identity(old, new, fields, value_of):
  """`record_identity` of the record `old`, found where `new` will go.

  Records written before records said what they hold (no `partial` or
  `overrides` keys) were written at the standard name; what they hold is
  inferred against `new`: fewer examples than a full `new` means partial,
  a setting of `fields` other than the config.json value `new` was
  evaluated against is an override. The step is added when it differs
  from `new`'s (training went on since).

  Args:
    old, new: the records.
    fields: the settings that name overrides.
    value_of: `value_of(record, field)`, a record's value or None.
  """
  old = dict(old)
  count = 'num_images' if 'num_images' in new else 'num_examples'
  if 'partial' not in old:
    old['partial'] = (not new.get('partial') and old.get(count) is not None
                      and old[count] < new[count])
    old['eval_examples'] = old.get(count)
  if 'overrides' not in old:
    reference = {f: new.get('overrides', {}).get(f, [value_of(new, f)])[0]
                 for f in fields}
    old['overrides'] = {
        f: [reference[f], value_of(old, f)] for f in fields
        if value_of(old, f) is not None and value_of(old, f) != reference[f]}
  limit, overrides, step = record_identity(old)
  if step is None and old.get('step') != new.get('step'):
    step = old.get('step')
  return limit, overrides, step


def keep_previous(path, new, name_of, fields, value_of, companions=()):
  """Renames the record at `path`, if any, after what it holds.

  Nothing is lost when `new` is about to be written to `path`: a different
  evaluation already there (another checkpoint, other examples or
  settings) moves to the name of its own identity (`previous_identity`),
  its companion files with it. The same evaluation again (the same name)
  is replaced. Both are logged.

  Args:
    path: where `new` goes.
    new: the new record.
    name_of: (eval_examples, overrides, step) -> the path of a record with
      that identity.
    fields, value_of: as in `previous_identity`.
    companions: functions (record path -> path of a file that belongs to
      the record, e.g. its detections), moved along.

  Returns:
    The path the old record moved to, or None.
  """
  if not fileio.exists(path):
    return None
  try:
    old = config_lib.read_json(path)
  except ValueError as e:
    logging.warning('Replacing %s, which is not an evaluation record: %s',
                    path, e)
    return None
  if not isinstance(old, dict):
    logging.warning('Replacing %s, which is not an evaluation record.', path)
    return None
  target = name_of(*previous_identity(old, new, fields, value_of))
  if fileio.absolute(target) == fileio.absolute(path):
    logging.info('Replacing %s: the same checkpoint (step %s), examples and '
                 'settings evaluated again.', path, old.get('step'))
    return None
  if fileio.exists(target):
    logging.info('Replacing %s, an evaluation of the same checkpoint, '
                 'examples and settings.', target)
  fileio.rename(path, target)
  for companion in companions:
    if fileio.exists(companion(path)):
      fileio.rename(companion(path), companion(target))
  logging.info('Kept the previous record %s (step %s) as %s.', path,
               old.get('step'), target)
  return target


def plain_flops(config, image_size):
  """FLOPs per image of the config's network with every unit evaluated."""
  model = config.model
  kwargs = dict(units=list(model.units), height=image_size, width=image_size,
                num_classes=model.num_classes,
                base_channels=model.base_channels)
  if model.family == 'imagenet':
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
  adaptive = config.model.model_type != 'resnet'

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
                                         min(5, config.model.num_classes)),
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
  adaptive = config.model.model_type != 'resnet'
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
    loss += config.loss.tau * summary['ponder_cost_mean']
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


def _value(record, field):
  return record.get(field)


def _sharded(eval_step, strategy, batch_size):
  """`eval_step` over the replicas of `strategy`: each evaluates a shard.

  Returns `step(batch)` giving what `eval_step(batch)` gives (numpy): the
  batch is padded to `batch_size` rounded up to a multiple of the replicas,
  replica i takes the i-th contiguous shard, the per-example results are
  gathered in order and the padding is dropped.
  """
  replicas = strategy.num_replicas_in_sync
  shard = -(-batch_size // replicas)

  @tf.function
  def run(inputs):
    values, maps = strategy.run(eval_step, args=(inputs,))
    return tf.nest.map_structure(lambda v: strategy.gather(v, axis=0),
                                 (values, maps))

  def step(batch):
    count = int(tf.shape(batch['image'])[0])
    padded = {k: tf.pad(v, [[0, shard * replicas - count]]
                        + [[0, 0]] * (v.shape.rank - 1))
              for k, v in batch.items()}
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: {k: v[context.replica_id_in_sync_group * shard:
                              (context.replica_id_in_sync_group + 1) * shard]
                         for k, v in padded.items()})
    values, maps = run(inputs)
    return ({k: v[:count] for k, v in values.items()},
            {k: v[:count] for k, v in maps.items()})

  return step


def evaluation_spec(config, builder):
  """The dataset's `DatasetSpec` with the split `config` evaluates on.

  Raises:
    ValueError: `data.eval_split` names a split the dataset does not have.
  """
  spec = datasets.get_spec(config.data.dataset)
  split = getattr(config.data, 'eval_split', None)
  if not split or split == spec.eval_split:
    return spec
  known = sorted(builder.info.splits.keys())
  if split not in known:
    raise ValueError(f'data.eval_split={split!r}: {config.data.dataset} has '
                     f'no such split; its splits are {known}.')
  return dataclasses.replace(spec, eval_split=split)


def evaluate(config, image_size=None, checkpoint=None, write=True,
             strategy=None):
  """Evaluates a checkpoint of the config's model.

  Under a `strategy` of several replicas each replica evaluates a shard of
  every batch (the numbers are those of one device); the record notes the
  replica count.

  Args:
    config: the run's `ExperimentConfig`.
    image_size: evaluation resolution (default: the config's first
      eval_image_sizes entry).
    checkpoint: checkpoint directory or prefix (default: the latest in
      config.run.model_dir).
    write: write the JSON and TensorBoard summaries to the model directory,
      under the record name of what was evaluated (see the module doc).

  Returns:
    The summary dict (see the module docstring); `summary['path']` is the
    JSON written.

  Raises:
    DatasetNotReadyError: before any model is built, if the data is missing.
    FileNotFoundError: there is no checkpoint.
  """
  image_size = image_size or config.data.eval_image_sizes[0]
  builder = datasets.prepare(config.data.dataset, config.data.data_dir,
                             config.data.download)
  spec = evaluation_spec(config, builder)
  prefix = checkpointing.resolve(checkpoint or config.run.model_dir)
  latest = evaluates_latest(checkpoint, prefix, config.run.model_dir)
  saved = config_lib.load(config.run.model_dir)
  config_lib.check_same_model(config, saved, config.run.model_dir)
  overrides = settings_overrides(saved, config, EVAL_FIELDS)
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  with strategy.scope():
    model = config.build_model(image_size)
  checkpointing.restore_model(model, prefix)
  step = checkpoint_step(prefix)
  has_bbox = spec.bbox_key is not None
  dataset = pipelines.eval_dataset(
      builder, spec, config.data.preprocessing, image_size,
      config.data.eval_batch_size,
      num_examples=config.data.eval_examples or None)
  eval_step = _make_eval_step(model, config, has_bbox)
  if replicas > 1:
    eval_step = _sharded(eval_step, strategy, config.data.eval_batch_size)
  collected = {}
  adaptive = config.model.model_type != 'resnet'
  histograms = (summaries_lib.PonderHistograms(
      model.block_names, model.units_per_block) if write and adaptive
                else None)
  ponder_images = None
  started = time.time()
  for batch in progress_lib.track(
      dataset, f'Evaluation ({spec.eval_split}, {image_size}px)',
      expected_examples(config.data.eval_examples,
                        split_size(builder, spec.eval_split)),
      unit='example', count=lambda batch: int(batch['label'].shape[0])):
    values, maps = eval_step(batch)
    for key, value in values.items():
      collected.setdefault(key, []).append(np.asarray(value))
    if histograms is not None:
      maps = {k: np.asarray(v) for k, v in maps.items()}
      histograms.add(maps)
      if ponder_images is None:
        ponder_images = (
            summaries_lib.display_images(batch['image'][:PONDER_IMAGES],
                                         config.data.preprocessing),
            {k: v[:PONDER_IMAGES] for k, v in maps.items()})
  if not collected:
    raise ValueError(f'Split {spec.eval_split} of {config.data.dataset} gave '
                     'no examples.')
  per_example = {k: np.concatenate(v) for k, v in collected.items()}
  summary = summarize(per_example, config, image_size, model.block_names,
                      model.units_per_block)
  partial = is_partial(config.data.eval_examples, summary['num_examples'],
                       split_size(builder, spec.eval_split))
  summary.update(
      dataset=config.data.dataset, split=spec.eval_split,
      image_size=image_size, step=step, checkpoint=fileio.absolute(prefix),
      latest_checkpoint=latest,
      eval_examples=config.data.eval_examples if partial else 0,
      partial=partial, overrides=overrides, model=config.model_fields(),
      tau=config.loss.tau, eps=config.model.eps,
      preprocessing=config.data.preprocessing,
      precision=config.run.precision, replicas=replicas,
      seconds=time.time() - started)
  path = None
  if write:
    split = spec.eval_split

    def path_of(limit, values, at_step):
      return result_path(config.run.model_dir, split, image_size, limit,
                         values, at_step)

    path = path_of(*record_identity(summary))
    keep_previous(path, summary, path_of, EVAL_FIELDS, _value)
    config_lib.write_json(path, nan_to_none(summary))
    if partial or overrides:
      logging.info('Wrote %s (%s), not the standard %s.', path,
                   describe(summary), result_name(split, image_size))
    _write_summaries(os.path.splitext(path)[0], summary, ponder_images,
                     histograms, model.block_names, model.units_per_block)
    hparams.write_metrics(config.run.model_dir,
                          os.path.splitext(os.path.basename(path))[0],
                          summary, step, hparams.EVAL_METRICS)
  summary['path'] = path
  return summary


def describe(summary):
  """What sets a record apart from the standard one, in words ('' if
  nothing): partial, overridden settings, not the latest checkpoint."""
  parts = []
  if summary.get('partial'):
    count = summary.get('num_examples', summary.get('num_images'))
    parts.append(f'partial: the first {count} examples only')
  for field, (old, new) in (summary.get('overrides') or {}).items():
    parts.append(f'{field} {new!r} instead of the run\'s {old!r}')
  if summary.get('latest_checkpoint') is False:
    parts.append(f'checkpoint of step {summary.get("step")}, not the '
                 'latest')
  return '; '.join(parts)


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
  step = checkpointing.saved_step(prefix)
  return 0 if step is None else step


def is_standard(path, summary):
  """Whether the record `summary` read from `path` is its run's standard
  result: named `eval_<split>_<size>px.json` and not partial."""
  name = result_name(summary.get('split'), summary.get('image_size'))
  return (os.path.basename(path) == name + '.json'
          and not summary.get('partial'))


def partial_error(summary, source, use):
  """The ValueError of a partial record given where a full one is needed.

  Args:
    summary: the partial record.
    source: what it came from (a path), for the message.
    use: what needs a full evaluation, e.g. 'a baseline'.
  """
  count = summary.get('num_examples', summary.get('num_images'))
  split = summary.get('split', 'evaluation')
  size = summary.get('image_size')
  standard = (result_name(split, size) if size is not None
              else f'eval_{split}') + '.json'
  return ValueError(
      f'{source} is a partial evaluation (the first {count} examples of '
      f'the {split} split only), and {use} needs a full evaluation. '
      'Evaluate every example (--mode=eval without --eval_examples) and '
      f'pass the {standard} it writes.')


def read_result(path, require_full=False, use='this tool'):
  """An evaluation JSON (`eval_<split>_<size>px*.json`), checked.

  Args:
    path: the record.
    require_full: refuse a partial record (the first N examples only);
      otherwise it is returned with a logged warning.
    use: what needs the full record, for the error message.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not JSON, not an evaluation summary (names what lacks), or
      partial with `require_full`.
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
  if summary.get('partial'):
    if require_full:
      raise partial_error(summary, path, use)
    logging.warning('%s is a partial evaluation (%s).', path,
                    describe(summary))
  return summary


def baseline_units(summary, source='The evaluation summary'):
  """Units per block of the non-adaptive baseline of an evaluated model.

  The average units used per block, rounded to the nearest integer (halves
  up) and at least 1 (paper 4.1).

  Args:
    summary: an evaluation record.
    source: what it came from (e.g. its path), for error messages.

  Raises:
    ValueError: not an evaluation summary, or a partial one (the average of
      a few examples is no model's average).
  """
  if isinstance(summary, dict) and summary.get('partial'):
    raise partial_error(summary, source, 'a baseline')
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
  ]
  if describe(summary):
    lines.append(f'not the standard result: {describe(summary)}')
  lines += [
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
