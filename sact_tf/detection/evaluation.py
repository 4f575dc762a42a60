"""Evaluation: COCO box AP and the feature extractor's FLOPs (paper Table 1).

`evaluate` runs a checkpoint over the evaluation split and returns a summary
dict, which it also writes to the model directory as a JSON record
(`eval_<split>.json`, plus the detections in COCO's results format,
`detections_<split>.json`) and to TensorBoard (a run of the record's name:
the scalars, and images with their detections and the feature extractor's
ponder map, as in the paper's fig. 10).

Record names follow `sact_tf.train.evaluation`: `eval_<split>.json` and
`detections_<split>.json` are the run's standard result (every image, the
run's own settings, its latest checkpoint); a partial evaluation
(`eval_examples`), settings of `EVAL_FIELDS` other than the run's
config.json, or another checkpoint add `_first<N>`, `_<field><value>` and
`_step<S>` to both names (`result_name`, `detections_path`), e.g.
`eval_test_first20_min_size600.json`. A different evaluation already at the
name is renamed after what it holds first, its detections with it.

Summary keys: dataset, split, num_images, step, checkpoint,
latest_checkpoint, eval_examples (0: all), partial, overrides ({field:
[config.json value, evaluated value]}), model (the `ModelConfig` dict), tau,
eps, min_size, max_size, precision; AP, AP50, AP75, AP_small, AP_medium, AP_large
(pycocotools, in [0, 1]); flops_mean, flops_std (the feature extractor's
FLOPs per image); flops_plain_mean and flops_ratio_mean / _std (relative to
the same stem + blocks 1-3 evaluating every unit, per image);
flops_stem_mean and flops_blocks_ratio_mean / _std (the same ratio without
the stem, which no model type skips: small models' 64-channel stem can
outweigh their blocks); flops_resnet101_mean and flops_resnet101_ratio_mean
/ _std (relative to plain ResNet-101 blocks 1-3 on the same images: the
paper's column); ponder_cost_mean / _std (ACT/SACT); blocks (name, units,
units_mean, units_std, ponder_cost_mean); replicas (that evaluated it);
seconds. The returned summary also holds `path` and `detections_path`, the
files written (None without `write`).

Progress (examples done, rate, ETA) is reported through `sact_tf.progress`.
With `write`, the record's main numbers (`hparams.EVAL_METRICS`) also go to
the run's HParams table as scalars `<record name>/<metric>`
(`sact_tf.train.hparams`).
"""

import math
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from sact_tf import architectures
from sact_tf import fileio
from sact_tf import progress as progress_lib
from sact_tf import viz
from sact_tf.detection import coco_eval
from sact_tf.detection import config as config_lib
from sact_tf.detection import data
from sact_tf.detection import model as model_lib
from sact_tf.detection import training
from sact_tf.train import checkpointing
from sact_tf.train import config as train_config
from sact_tf.train import evaluation as train_evaluation
from sact_tf.train import hparams

# Detections drawn in the TensorBoard images score at least this.
DRAW_SCORE = 0.5
_DRAW_MAX = 20


# Settings that change what a detection evaluation measures (or states),
# besides the detector's variables (which the checkpoint must match): the
# images (dataset, min_size, max_size), halting (eps), the ponder weight the
# record states (tau), the proposal and detection post-processing, and the
# precision (dtype policy, which changes results by rounding). The
# model's other fields act in training only (sampling, matching, batch-norm
# freezing, weight decay, halting_bias_init) or leave results as they are
# (sparse execution). Records name them without their section
# (`sact_tf.train.evaluation.config_value`): data.dataset, data.min_size,
# data.max_size, loss.tau, and the model's.
EVAL_FIELDS = ('dataset', 'min_size', 'max_size', 'tau', 'eps',
               'anchor_base_size', 'rpn_nms_iou', 'num_proposals',
               'pre_nms_top_k', 'crop_size', 'nms_iou',
               'max_detections_per_class', 'max_detections',
               'score_threshold', 'precision')


def result_name(split, eval_examples=0, overrides=None, step=None):
  """The name (no `.json`) of a detection record and TensorBoard run.

  `result_name(split)` is the standard `eval_<split>`; the other arguments
  add the suffixes of `sact_tf.train.evaluation.record_suffix`.
  """
  return f'eval_{split}' + train_evaluation.record_suffix(
      eval_examples, overrides, step, EVAL_FIELDS)


def result_path(model_dir, split, eval_examples=0, overrides=None,
                step=None):
  """`<model_dir>/<result_name(...)>.json`."""
  return os.path.join(model_dir, result_name(split, eval_examples, overrides,
                                             step) + '.json')


def detections_path(record_path):
  """The detections file of the record at `record_path`
  (`eval_<rest>.json` -> `detections_<rest>.json`)."""
  folder, name = os.path.split(record_path)
  return os.path.join(folder, 'detections_' + name[len('eval_'):])


def record_value(record, field):
  """A field of `EVAL_FIELDS` of a detection record (None if absent)."""
  if field in record:
    return record[field]
  model = record.get('model')
  return model.get(field) if isinstance(model, dict) else None


def total_ponder_map(model, outputs, size):
  """`[B, size...]` ponder map summed over the feature extractor's blocks.

  A plain ResNet block is ACT with halting scores 0 before its last unit:
  its ponder cost is L + 1 everywhere, which is what a plain model gets.
  """
  if model.adaptive:
    return viz.total_ponder_map(outputs, size)
  batch = tf.shape(outputs['flops'])[0]
  value = float(sum(u + 1 for u in model.config.units[:3]))
  return tf.fill(tf.concat([[batch], size], 0), value)


def max_ponder_value(model):
  return viz.max_ponder_value(model.config.units[:3])


def detection_image(images, boxes, scores, ponder_map, max_value):
  """[image with boxes | border | ponder overlay with boxes], `[B, H, W', 3]`.

  Args:
    images: `[B, H, W, 3]` in [-1, 1].
    boxes: `[B, D, 4]` normalised; scores: `[B, D]` (those >= DRAW_SCORE
      are drawn, at most 20).
    ponder_map: `[B, h, w]`.
    max_value: the ponder cost drawn in the top colour.
  """
  keep = tf.cast(scores >= DRAW_SCORE, tf.float32)[..., tf.newaxis]
  # Boxes that are not drawn collapse to nothing.
  boxes = (boxes * keep)[:, :_DRAW_MAX]
  red = tf.constant([[1.0, 0.2, 0.2, 1.0]])
  drawn = tf.image.draw_bounding_boxes((images + 1.0) / 2.0, boxes, red)
  return viz.summary_image(drawn * 2.0 - 1.0, ponder_map, max_value)


def _mean_std(values):
  # Unlike classification's, NaN values show (as a NaN mean).
  return train_evaluation.mean_std(values, finite_only=False)


def _one_image_per_replica(detect, strategy):
  """`detect` over the replicas of `strategy`, one image each.

  Returns `run(images)`: for a list of up to `num_replicas_in_sync` images
  `[1, H, W, 3]` (each its own size), the list of `detect`'s outputs, image
  i on replica i (a short list is padded with its last image, whose
  duplicate results are dropped).
  """
  replicas = strategy.num_replicas_in_sync

  def run(images):
    padded = list(images) + [images[-1]] * (replicas - len(images))
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: padded[context.replica_id_in_sync_group])
    # `detect` is a tf.function of any image size: each replica calls it on
    # its own device. (Given the tf.function itself, the strategy would
    # trace it once for all replicas, whose images differ in size.)
    outputs = strategy.run(lambda image: detect(image), args=(inputs,))
    local = {k: strategy.experimental_local_results(v)
             for k, v in outputs.items()}
    return [{k: v[i] for k, v in local.items()} for i in range(len(images))]

  return run


def _groups(iterable, size):
  """Lists of `size` consecutive items of `iterable` (the last may be
  shorter)."""
  group = []
  for item in iterable:
    group.append(item)
    if len(group) == size:
      yield group
      group = []
  if group:
    yield group


def evaluate(config, checkpoint=None, write=True, strategy=None):
  """Evaluates a checkpoint of the config's detector.

  Under a `strategy` of several replicas each replica detects one image at
  a time (the numbers are those of one device); the record notes the
  replica count.

  Args:
    config: the run's `DetectionConfig`.
    checkpoint: checkpoint directory or prefix (default: the latest in
      config.run.model_dir).
    write: write JSON and TensorBoard summaries to the model directory,
      under the record name of what was evaluated (see the module doc).

  Returns:
    The summary dict (see the module doc); `summary['path']` is the record
    written.

  Raises:
    DatasetNotReadyError: before any model is built, if the data is missing.
    FileNotFoundError: there is no checkpoint.
  """
  spec = data.get_spec(config.data.dataset)
  training.check_dataset(config, spec)
  builder = data.prepare(config.data.dataset, config.data.data_dir,
                         config.data.download)
  prefix = checkpointing.resolve(checkpoint or config.run.model_dir)
  latest = train_evaluation.evaluates_latest(checkpoint, prefix,
                                            config.run.model_dir)
  saved = config_lib.load(config.run.model_dir)
  config_lib.check_same_model(config, saved, config.run.model_dir)
  overrides = train_evaluation.settings_overrides(saved, config, EVAL_FIELDS)
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  with strategy.scope():
    model = config.build_model()
  training.restore_model(model, prefix)
  step = train_evaluation.checkpoint_step(prefix)
  first_block = model.feature_blocks[0].name

  @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3],
                                              tf.float32)])
  def detect(images):
    out = model(images, training=False)
    result = {k: out[k] for k in ('detection_boxes', 'detection_scores',
                                  'detection_classes', 'num_detections',
                                  'flops')}
    for block in model.feature_blocks:
      result[f'{block.name}/units'] = train_evaluation.units_per_image(
          out, block.name)
      if model.adaptive:
        result[f'{block.name}/ponder_cost'] = out[f'{block.name}/ponder_cost']
    if model.adaptive:
      result['ponder_cost'] = out['ponder_cost']
      size = tf.shape(out[f'{first_block}/ponder_map'])[1:3]
    else:
      # Block 1's resolution (stride 4).
      size = (tf.shape(images)[1:3] + 3) // 4
    result['ponder_map'] = total_ponder_map(model, out, size)
    return result

  evaluator = coco_eval.CocoEvaluator(spec.categories)
  units = model.config.units
  per_image = {'flops': [], 'plain': [], 'resnet101': [], 'stem': []}
  collected = {}
  images_for_summary = []
  started = time.time()
  dataset = data.eval_dataset(builder, spec, config.data.min_size,
                              config.data.max_size,
                              num_examples=config.data.eval_examples or None)
  images = progress_lib.track(
      dataset, f'Evaluation ({spec.eval_split})',
      train_evaluation.expected_examples(
          config.data.eval_examples,
          train_evaluation.split_size(builder, spec.eval_split)),
      unit='image')
  if replicas > 1:
    run = _one_image_per_replica(detect, strategy)
    results = ((example, out) for group in _groups(images, replicas)
               for example, out in zip(
                   group, run([e['image'] for e in group])))
  else:
    results = ((example, detect(example['image'])) for example in images)
  for index, (example, out) in enumerate(results):
    count = int(out['num_detections'][0])
    evaluator.add_image(
        example['image_id'], example['height'], example['width'],
        example['boxes'].numpy(), example['classes'].numpy(),
        example['is_crowd'].numpy(), example['area'].numpy(),
        out['detection_boxes'][0, :count].numpy(),
        out['detection_scores'][0, :count].numpy(),
        out['detection_classes'][0, :count].numpy())
    height, width = example['image'].shape[1:3]
    flops = float(out['flops'][0])
    per_image['flops'].append(flops)
    per_image['plain'].append(model_lib.feature_extractor_flops(
        units, height, width, model.config.base_channels))
    per_image['stem'].append(model_lib.stem_flops(height, width))
    per_image['resnet101'].append(model_lib.feature_extractor_flops(
        architectures.IMAGENET_DEPTHS[101], height, width, 64))
    for key, value in out.items():
      if key.endswith('/units') or key.endswith('ponder_cost'):
        collected.setdefault(key, []).append(float(value[0]))
    if index < config.run.summary_images:
      images_for_summary.append(detection_image(
          example['image'], out['detection_boxes'], out['detection_scores'],
          out['ponder_map'], max_ponder_value(model)))
  if not evaluator.num_images:
    raise ValueError(f'Split {spec.eval_split} of {config.data.dataset} gave '
                     'no images.')
  metrics, report = evaluator.evaluate()
  logging.info('COCOeval:\n%s', report)
  flops = np.asarray(per_image['flops'])
  summary = dict(metrics)
  summary['flops_mean'], summary['flops_std'] = _mean_std(flops)
  summary['flops_plain_mean'] = float(np.mean(per_image['plain']))
  summary['flops_ratio_mean'], summary['flops_ratio_std'] = _mean_std(
      flops / np.asarray(per_image['plain'], np.float64))
  stem = np.asarray(per_image['stem'], np.float64)
  (summary['flops_blocks_ratio_mean'],
   summary['flops_blocks_ratio_std']) = _mean_std(
       (flops - stem) / (np.asarray(per_image['plain'], np.float64) - stem))
  summary['flops_stem_mean'] = float(np.mean(stem))
  summary['flops_resnet101_mean'] = float(np.mean(per_image['resnet101']))
  (summary['flops_resnet101_ratio_mean'],
   summary['flops_resnet101_ratio_std']) = _mean_std(
       flops / np.asarray(per_image['resnet101'], np.float64))
  if model.adaptive:
    summary['ponder_cost_mean'], summary['ponder_cost_std'] = _mean_std(
        collected['ponder_cost'])
  blocks = []
  for block, num_units in zip(model.feature_blocks, units):
    entry = {'name': block.name, 'units': int(num_units)}
    entry['units_mean'], entry['units_std'] = _mean_std(
        collected[f'{block.name}/units'])
    if model.adaptive:
      entry['ponder_cost_mean'], _ = _mean_std(
          collected[f'{block.name}/ponder_cost'])
    blocks.append(entry)
  partial = train_evaluation.is_partial(
      config.data.eval_examples, evaluator.num_images,
      train_evaluation.split_size(builder, spec.eval_split))
  summary.update(
      blocks=blocks, dataset=config.data.dataset, split=spec.eval_split,
      num_images=evaluator.num_images, step=step,
      checkpoint=fileio.absolute(prefix), latest_checkpoint=latest,
      eval_examples=config.data.eval_examples if partial else 0,
      partial=partial, overrides=overrides, model=config.model.to_dict(),
      tau=config.loss.tau, eps=config.model.eps,
      min_size=config.data.min_size, max_size=config.data.max_size,
      precision=config.run.precision, replicas=replicas,
      seconds=time.time() - started)
  path = detections = None
  if write:
    split = spec.eval_split

    def path_of(limit, values, at_step):
      return result_path(config.run.model_dir, split, limit, values,
                         at_step)

    path = path_of(*train_evaluation.record_identity(summary))
    detections = detections_path(path)
    train_evaluation.keep_previous(path, summary, path_of, EVAL_FIELDS,
                                   record_value, [detections_path])
    train_config.write_json(path, train_evaluation.nan_to_none(summary))
    train_config.write_json(detections, evaluator.detections())
    if partial or overrides:
      logging.info('Wrote %s (%s), not the standard %s.', path,
                   train_evaluation.describe(summary), result_name(split))
    _write_summaries(os.path.splitext(path)[0], summary, images_for_summary)
    hparams.write_metrics(config.run.model_dir,
                          os.path.splitext(os.path.basename(path))[0],
                          summary, step, hparams.EVAL_METRICS)
  summary['path'], summary['detections_path'] = path, detections
  return summary


_SCALARS = coco_eval.METRICS + (
    'flops_mean', 'flops_std', 'flops_ratio_mean', 'flops_ratio_std',
    'flops_blocks_ratio_mean', 'flops_blocks_ratio_std',
    'flops_resnet101_ratio_mean', 'flops_resnet101_ratio_std',
    'ponder_cost_mean', 'ponder_cost_std')


def _write_summaries(log_dir, summary, images):
  writer = tf.summary.create_file_writer(log_dir)
  with writer.as_default(step=summary['step']):
    for key in _SCALARS:
      value = summary.get(key)
      if value is not None and math.isfinite(value):
        tf.summary.scalar(key, value)
    for block in summary['blocks']:
      tf.summary.scalar(f'{block["name"]}/units_mean', block['units_mean'])
    for index, image in enumerate(images):
      tf.summary.image(f'detections_and_ponder_map/{index}', image)
  writer.flush()
  writer.close()


def _percent(value):
  return 'n/a' if value is None or not math.isfinite(value) else (
      f'{100 * value:.1f}')


def format_table(summary):
  """The summary as a readable table (Table 1's columns first)."""
  model = summary['model']
  lines = [
      f'{summary["dataset"]} {summary["split"]}, {summary["num_images"]} '
      f'images (min side {summary["min_size"]}, max {summary["max_size"]}), '
      f'step {summary["step"]}',
      f'feature extractor: {model["model_type"]} ResNet blocks 1-3, units '
      f'{model["units"][:3]}, base channels {model["base_channels"]}, tau '
      f'{summary["tau"]}',
  ]
  if train_evaluation.describe(summary):
    lines.append('not the standard result: '
                 f'{train_evaluation.describe(summary)}')
  lines += [
      '',
      '  AP     AP50   AP75   APs    APm    APl',
      '  ' + ' '.join(f'{_percent(summary[k]):<6}' for k in coco_eval.METRICS),
      '',
      f'  feature extractor FLOPs   {summary["flops_mean"]:.4g} +- '
      f'{summary["flops_std"]:.3g} per image',
      f'  vs. all units evaluated   {_percent(summary["flops_ratio_mean"])} '
      f'+- {_percent(summary["flops_ratio_std"])} %  (plain: '
      f'{summary["flops_plain_mean"]:.4g})',
      f'  blocks 1-3 alone          '
      f'{_percent(summary["flops_blocks_ratio_mean"])} +- '
      f'{_percent(summary["flops_blocks_ratio_std"])} %  (stem: '
      f'{summary["flops_stem_mean"]:.4g})',
      f'  vs. ResNet-101 blocks 1-3 '
      f'{_percent(summary["flops_resnet101_ratio_mean"])} +- '
      f'{_percent(summary["flops_resnet101_ratio_std"])} %  (ResNet-101: '
      f'{summary["flops_resnet101_mean"]:.4g})',
  ]
  if 'ponder_cost_mean' in summary:
    lines.append(f'  ponder cost               '
                 f'{summary["ponder_cost_mean"]:.3f} +- '
                 f'{summary["ponder_cost_std"]:.3f}')
  lines += ['', f'  {"block":<10}{"units":>6}{"units used":>18}']
  for block in summary['blocks']:
    lines.append(f'  {block["name"]:<10}{block["units"]:>6}'
                 f'{block["units_mean"]:>10.2f} +- {block["units_std"]:.2f}')
  return '\n'.join(lines)


def format_comparison(named_summaries):
  """Table 1 in miniature: one row per (name, summary) pair.

  FLOPs are the feature extractor's per image (mean +- std over images);
  the percentages are relative to the same stem and blocks 1-3 evaluating
  every unit (the plain network of the same layout) on the same images,
  with and without the stem.
  """
  lines = [f'  {"feature extractor":<20}{"AP":>6}{"AP50":>7}'
           f'{"FLOPs / image":>21}{"FLOPs (%)":>15}{"blocks 1-3 (%)":>17}']
  for name, summary in named_summaries:
    flops = f'{summary["flops_mean"]:.3g} +- {summary["flops_std"]:.2g}'
    ratio = (f'{_percent(summary["flops_ratio_mean"])} +- '
             f'{_percent(summary["flops_ratio_std"])}')
    blocks = (f'{_percent(summary["flops_blocks_ratio_mean"])} +- '
              f'{_percent(summary["flops_blocks_ratio_std"])}')
    lines.append(f'  {name:<20}{_percent(summary["AP"]):>6}'
                 f'{_percent(summary["AP50"]):>7}{flops:>21}{ratio:>15}'
                 f'{blocks:>17}')
  return '\n'.join(lines)
