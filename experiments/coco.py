r"""Faster R-CNN with a plain / ACT / SACT ResNet feature extractor (Table 1).

The paper's COCO run (SACT ResNet-101, tau 0.005, from an ImageNet run):

  python -m experiments.coco --model_type=sact --model=101 --tau=0.005 \
      --finetune_from=/runs/imagenet_sact101 --model_dir=/runs/coco_sact101

The offline demo (README), a small model on clutter_digits_detection:

  python -m experiments.coco --dataset=clutter_digits_detection \
      --model=2,2,3,1 --base_channels=8 --min_size=128 --max_size=128 \
      --anchor_base_size=32 --anchor_scales=1 --model_dir=/tmp/digits_sact

Any field of the run's config (config.json) can be set with
--set=section.field=value, e.g. --set=model.rpn_nms_iou=0.6 (--helpfull
lists the keys).

Modes: train, eval (the latest checkpoint of --model_dir), train_and_eval.
Evaluation prints COCO AP and the feature extractor's FLOPs (absolute,
relative to the same network evaluating every unit and to ResNet-101
blocks 1-3), and writes them to <model_dir>/eval_<split>.json and
TensorBoard. --export_dir=BASE also writes a serving SavedModel of the
latest checkpoint to BASE/<step>/, the layout TF Serving reads (other
versions in BASE are left alone).
"""

from absl import app
from absl import flags
from absl import logging

from experiments import common
from sact_tf import architectures
from sact_tf.detection import anchors
from sact_tf.detection import config as config_lib
from sact_tf.detection import data
from sact_tf.detection import evaluation
from sact_tf.detection import export
from sact_tf.detection import training
from sact_tf.train import config as config_train
from sact_tf.train import distribution

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
_model = config_lib.ModelConfig
_loss = config_lib.LossConfig
_optimizer = config_lib.OptimizerConfig
_data = config_lib.DataConfig
_run = config_lib.RunConfig

flags.DEFINE_float('tau', _loss.tau, 'Ponder cost weight on the feature '
                   'extractor (blocks 1-3), >= 0.', **_fv)
flags.DEFINE_enum('model_type', 'sact', architectures.MODEL_TYPES,
                  'Feature extractor: plain ResNet, ACT or SACT.', **_fv)
flags.DEFINE_string('model', '101', 'ResNet depth (50, 101, 152, 200) or '
                    'four comma-separated units per block.', **_fv)
flags.DEFINE_integer('base_channels', _model.base_channels,
                     'Bottleneck width of block 1 (64 for the real models).',
                     **_fv)
flags.DEFINE_enum('mode', 'train_and_eval', config_lib.MODES,
                  'Train, evaluate the latest checkpoint, or both.', **_fv)
flags.DEFINE_string('model_dir', None, 'Where checkpoints, TensorBoard logs, '
                    'config.json and evaluation results go.', **_fv)
flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: '
                    '$TFDS_DATA_DIR or ~/tensorflow_datasets).', **_fv)
flags.DEFINE_enum('dataset', _data.dataset, sorted(data.SPECS),
                  'TFDS dataset; clutter_digits_detection is the offline '
                  'demo.', **_fv)
flags.DEFINE_boolean('download', True, 'Let TFDS download a missing dataset.',
                     **_fv)
flags.DEFINE_string('finetune_from', None, 'Checkpoint (directory or prefix) '
                    'of an experiments.imagenet run: its stem, blocks 1-4 and '
                    'final batch norm initialise the detector.', **_fv)
flags.DEFINE_integer('train_steps', _optimizer.train_steps, 'Training steps, '
                     'one image each.', **_fv)
flags.DEFINE_float('learning_rate', _optimizer.learning_rate, 'Initial '
                   'learning rate (x0.1 at each --lr_boundaries step).', **_fv)
flags.DEFINE_list('lr_boundaries',
                  [str(b) for b in _optimizer().lr_boundaries],
                  'Steps at which the learning rate drops by 10x.', **_fv)
flags.DEFINE_float('clip_gradient_norm', _optimizer.clip_gradient_norm,
                   'Global gradient norm clipping (0: off).', **_fv)
flags.DEFINE_enum('strategy', 'default', distribution.STRATEGIES,
                  'tf.distribute strategy (one image per replica and step).',
                  **_fv)
flags.DEFINE_string('tpu', None, 'TPU name or address (--strategy=tpu).',
                    **_fv)
flags.DEFINE_integer('min_size', _data.min_size, 'Images are resized keeping '
                     'their aspect ratio to this short side, unless the long '
                     'side would then exceed --max_size.', **_fv)
flags.DEFINE_integer('max_size', _data.max_size, 'The longest image side '
                     'after resizing.', **_fv)
flags.DEFINE_float('anchor_base_size', anchors.BASE_SIZE, 'Anchor size in '
                   'pixels at scale 1.', **_fv)
flags.DEFINE_list('anchor_scales', [str(s) for s in anchors.SCALES],
                  'Anchor scales (times --anchor_base_size).', **_fv)
flags.DEFINE_list('anchor_aspect_ratios',
                  [str(r) for r in anchors.ASPECT_RATIOS],
                  'Anchor aspect ratios (width / height).', **_fv)
flags.DEFINE_integer('rpn_depth', _model.rpn_depth, 'Channels of the RPN\'s '
                     '3x3 conv.', **_fv)
flags.DEFINE_integer('num_proposals', _model.num_proposals, 'Proposals per '
                     'image.', **_fv)
flags.DEFINE_boolean('freeze_batch_norm', _model.freeze_batch_norm,
                     'Keep the ResNet\'s batch-norm statistics and scales '
                     'fixed (batch 1 gives poor batch statistics).', **_fv)
flags.DEFINE_boolean('add_ground_truth_proposals',
                     _model.add_ground_truth_proposals, 'Also train the box '
                     'classifier on the ground-truth boxes (not in the '
                     'paper; helps short runs).', **_fv)
flags.DEFINE_float('weight_decay', _loss.weight_decay, 'Keras L2 factor on '
                   'the ResNet\'s conv kernels.', **_fv)
flags.DEFINE_integer('eval_examples', 0, 'Evaluate on the first N images '
                     'only (0: all).', **_fv)
flags.DEFINE_integer('summary_images', _run.summary_images, 'Evaluation '
                     'images drawn to TensorBoard with detections and ponder '
                     'maps.', **_fv)
flags.DEFINE_integer('checkpoint_every', _run.checkpoint_every,
                     'Steps between checkpoints.', **_fv)
flags.DEFINE_integer('keep_checkpoints', _run.keep_checkpoints,
                     'Checkpoints to keep.', **_fv)
flags.DEFINE_integer('summary_every', _run.summary_every, 'Steps between '
                     'training summaries and log lines.', **_fv)
flags.DEFINE_integer('seed', 0, 'Seed of the data order, augmentation and '
                     'sampling.', **_fv)
flags.DEFINE_string('export_dir', None, 'After training / evaluation, write '
                    'a serving SavedModel of the latest checkpoint to '
                    '<export_dir>/<its step>/ (TF Serving\'s base path; other '
                    'versions are left alone). A local path or a '
                    'tf.io.gfile URL (gs://...).', **_fv)
flags.DEFINE_boolean('overwrite', False, 'Let --export_dir replace a '
                     'non-empty version folder that is not an earlier export '
                     'of this run (never the run directory itself).', **_fv)
common.define_run_flags(FLAGS)
common.define_scale_flags(FLAGS)
common.define_profile_flag(FLAGS)
common.define_settings_flag(FLAGS, config_lib.DetectionConfig)


def _floats(values, name):
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ValueError(f'--{name} must be comma-separated numbers, got '
                     f'{",".join(values)!r}.') from None


def _ints(values, name):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--{name} must be comma-separated ints, got '
                     f'{",".join(values)!r}.') from None


# The config field each flag sets (a field whose flag is given may not be
# set with --set as well).
FLAG_FIELDS = {
    'model': 'model.units',
    'model_type': 'model.model_type',
    'base_channels': 'model.base_channels',
    'freeze_batch_norm': 'model.freeze_batch_norm',
    'anchor_base_size': 'model.anchor_base_size',
    'anchor_scales': 'model.anchor_scales',
    'anchor_aspect_ratios': 'model.anchor_aspect_ratios',
    'rpn_depth': 'model.rpn_depth',
    'num_proposals': 'model.num_proposals',
    'add_ground_truth_proposals': 'model.add_ground_truth_proposals',
    'tau': 'loss.tau',
    'weight_decay': 'loss.weight_decay',
    'train_steps': 'optimizer.train_steps',
    'learning_rate': 'optimizer.learning_rate',
    'lr_boundaries': 'optimizer.lr_boundaries',
    'clip_gradient_norm': 'optimizer.clip_gradient_norm',
    'dataset': 'data.dataset',
    'data_dir': 'data.data_dir',
    'download': 'data.download',
    'min_size': 'data.min_size',
    'max_size': 'data.max_size',
    'eval_examples': 'data.eval_examples',
    'model_dir': 'run.model_dir',
    'summary_images': 'run.summary_images',
    'checkpoint_every': 'run.checkpoint_every',
    'keep_checkpoints': 'run.keep_checkpoints',
    'summary_every': 'run.summary_every',
    'seed': 'run.seed',
    'finetune_from': 'run.finetune_from',
    'precision': 'run.precision',
    'sync_batch_norm': 'run.sync_batch_norm',
    'steps_per_loop': 'run.steps_per_loop',
}
# Flags whose text is converted before it is a field's value.
_CONVERSIONS = {
    'model': lambda value: common.parse_model('imagenet', value),
    'anchor_scales': lambda value: _floats(value, 'anchor_scales'),
    'anchor_aspect_ratios': lambda value: _floats(value,
                                                  'anchor_aspect_ratios'),
    'lr_boundaries': lambda value: _ints(value, 'lr_boundaries'),
}


def flags_to_config(fv):
  """The `DetectionConfig` of parsed flags `fv`: each field from its flag
  (defaults included) or its --set entry; the classes from the dataset.

  Raises:
    ValueError: bad or inconsistent flags or settings, with the fix.
  """
  config_class = config_lib.DetectionConfig
  settings = config_train.parse_settings(
      config_class, fv.set, common.flagged_fields(fv, FLAG_FIELDS))
  values = {field: _CONVERSIONS.get(flag, lambda value: value)(fv[flag].value)
            for flag, field in FLAG_FIELDS.items()}
  values['model.num_classes'] = data.get_spec(
      settings.get('data.dataset', fv.dataset)).num_classes
  values.update(settings)
  if not values['run.model_dir']:
    raise ValueError('--model_dir is required: the directory for '
                     'checkpoints, logs and results.')
  # Boundaries past the end would never apply.
  values['optimizer.lr_boundaries'] = [
      b for b in values['optimizer.lr_boundaries']
      if b < values['optimizer.train_steps']]
  return config_train.from_values(config_class, values)


def main(argv):
  """Runs the flags' mode (see the module doc).

  Under `app.run` the flags are parsed already; tests call `main` with a
  full command line. The results are printed and written to --model_dir.

  Returns:
    The evaluation summary (with the record's `path`), or None when the
    mode does not evaluate.
  """
  common.parse(FLAGS, argv)
  try:
    config = flags_to_config(FLAGS)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if FLAGS.export_dir:
    # A folder the export may not write is refused before any training
    # (the version folder, named after the step, is checked at the end).
    try:
      export.check_export_base(FLAGS.export_dir, config.run.model_dir)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  strategy = distribution.make_strategy(FLAGS.strategy, FLAGS.tpu)
  if FLAGS.mode in ('train', 'train_and_eval'):
    result = training.train(config, strategy,
                            allow_changed=FLAGS.allow_changed_flags,
                            restart_from_scratch=FLAGS.restart_from_scratch,
                            profile_steps=FLAGS.profile_steps)
    logging.info('Trained to step %d in %.0f s; checkpoint %s.', result.step,
                 result.seconds, result.checkpoint)
  summary = None
  if not distribution.is_chief(strategy):
    return summary
  if FLAGS.mode in ('eval', 'train_and_eval'):
    summary = evaluation.evaluate(
        config, strategy=distribution.evaluation_strategy(strategy))
    print(evaluation.format_table(summary), flush=True)
    print(f'Results: {summary["path"]}\nDetections: '
          f'{summary["detections_path"]}', flush=True)
  if FLAGS.export_dir:
    model = config.build_model()
    prefix = training.restore_model(model, config.run.model_dir)
    version = export.checkpoint_step(prefix)
    path = export.export_versioned(
        model, FLAGS.export_dir, version, min_size=config.data.min_size,
        max_size=config.data.max_size, overwrite=FLAGS.overwrite,
        run_dir=config.run.model_dir, checkpoint=prefix)
    print(f'Exported version {version} to {path}', flush=True)
  return summary


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)
