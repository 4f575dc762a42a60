"""What experiments.imagenet and experiments.cifar10 share.

Flags -> `ExperimentConfig` -> `sact_tf.train.train` / `evaluate`.

Each binary owns a `flags.FlagValues` filled by `define_flags` with its own
defaults, so both can be imported in one process (tests) without clashing.
"""

import dataclasses
import errno
import math
import os
import sys
from typing import Callable, List

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from sact_tf import architectures
from sact_tf import data
from sact_tf import losses
from sact_tf import train
from sact_tf.train import config as config_lib
from sact_tf.train import distribution


@dataclasses.dataclass(frozen=True)
class Binary:
  """What differs between the binaries.

  Attributes:
    family: 'imagenet' or 'cifar'.
    preprocessing: 'inception' or 'cifar'.
    defaults: flag name -> default value, plus help fragments (steps_help,
      lr_help, boundaries_help) describing the derived defaults.
    default_steps: steps per epoch -> train_steps when neither --train_steps
      nor --train_epochs is given.
    default_lr: batch size -> learning rate when --learning_rate is absent.
    default_boundaries: (train_steps, steps per epoch, flag values) -> steps
      at which the rate drops when --lr_boundaries is absent.
    model_help: help of --model.
  """

  family: str
  preprocessing: str
  defaults: dict
  default_steps: Callable[[float], int]
  default_lr: Callable[[int], float]
  default_boundaries: Callable[[int, float, flags.FlagValues], List[int]]
  model_help: str


def parse_model(family, value):
  """Units per block from --model: a named depth or a comma list of units."""
  parts = [p.strip() for p in str(value).split(',') if p.strip()]
  try:
    numbers = [int(p) for p in parts]
    if family == 'imagenet':
      if len(numbers) == 1:
        return architectures.imagenet_units(depth=numbers[0])
      if len(numbers) == 4:
        return architectures.imagenet_units(units=numbers)
    elif len(numbers) in (1, 3):
      return architectures.cifar_units(numbers[0] if len(numbers) == 1
                                       else numbers)
  except ValueError:
    pass
  if family == 'imagenet':
    raise ValueError(
        f'Unknown ImageNet model {value!r}: give a depth (one of '
        f'{sorted(architectures.IMAGENET_DEPTHS)}) or four comma-separated '
        'positive units per block, e.g. --model=3,4,6,3.')
  raise ValueError(
      f'Unknown CIFAR model {value!r}: give n, the units per block (5 for '
      'ResNet-32, 18 for ResNet-110), or three comma-separated positive '
      'units, e.g. --model=5,5,5.')


def _int_list(text, name):
  if text is None or str(text).strip() == '':
    return []
  try:
    return [int(p) for p in str(text).split(',') if p.strip()]
  except ValueError:
    raise ValueError(f'--{name} must be comma-separated ints, got '
                     f'{text!r}.') from None


def define_flags(binary, flag_values):
  """Defines the binaries' flags in `flag_values` with `binary`'s defaults."""
  d = binary.defaults
  fv = dict(flag_values=flag_values)
  flags.DEFINE_float('tau', d['tau'], 'Ponder cost weight (>= 0).', **fv)
  flags.DEFINE_enum('model_type', 'sact', architectures.MODEL_TYPES,
                    'Plain ResNet, ACT or SACT.', **fv)
  flags.DEFINE_string('model', d['model'], binary.model_help, **fv)
  flags.DEFINE_integer('base_channels', d['base_channels'],
                       'Width of the first block (tiny values for tests).',
                       **fv)
  flags.DEFINE_enum('mode', 'train_and_eval', config_lib.MODES,
                    'Train, evaluate the latest checkpoint, or both.', **fv)
  flags.DEFINE_string('model_dir', None, 'Where checkpoints, TensorBoard '
                      'logs, config.json and evaluation results go.', **fv)
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: '
                      '$TFDS_DATA_DIR or ~/tensorflow_datasets).', **fv)
  flags.DEFINE_enum('dataset', d['dataset'], sorted(data.datasets.SPECS),
                    'TFDS dataset; clutter_digits is the offline demo.', **fv)
  flags.DEFINE_boolean('download', True, 'Let TFDS download a missing '
                       'dataset that it can download.', **fv)
  flags.DEFINE_integer('batch_size', d['batch_size'], 'Global training '
                       'batch size (divisible by the number of replicas).',
                       **fv)
  flags.DEFINE_integer('eval_batch_size', 100, 'Evaluation batch size.', **fv)
  flags.DEFINE_integer('eval_examples', 0, 'Evaluate on the first N '
                       'examples only (0: all).', **fv)
  flags.DEFINE_integer('train_steps', None, 'Training steps (exclusive with '
                       f'--train_epochs). {d["steps_help"]}', **fv)
  flags.DEFINE_float('train_epochs', None, 'Training epochs, turned into '
                     'steps (exclusive with --train_steps).', **fv)
  flags.DEFINE_float('learning_rate', None, d['lr_help'], **fv)
  flags.DEFINE_string('lr_boundaries', None, 'Comma-separated steps at which '
                      f'the learning rate is multiplied by 0.1. '
                      f'{d["boundaries_help"]}', **fv)
  flags.DEFINE_float('lr_decay_epochs', 30.0, 'ImageNet schedule: epochs '
                     'between learning rate drops.', **fv)
  flags.DEFINE_float('label_smoothing', d['label_smoothing'],
                     'Label smoothing of the cross-entropy.', **fv)
  flags.DEFINE_float('weight_decay', d['weight_decay'],
                     'Keras L2 factor on conv kernels.', **fv)
  flags.DEFINE_integer('image_size', None, 'Training resolution (default: '
                       'the dataset\'s, 224 for imagenet2012).', **fv)
  flags.DEFINE_string('eval_image_size', None, 'Comma-separated evaluation '
                      'resolutions (default: --image_size); larger ones '
                      'reproduce fig. 7.', **fv)
  flags.DEFINE_enum('strategy', 'default', distribution.STRATEGIES,
                    'tf.distribute strategy; multi_worker reads TF_CONFIG.',
                    **fv)
  flags.DEFINE_string('tpu', None, 'TPU name or address (--strategy=tpu).',
                      **fv)
  flags.DEFINE_string('finetune_from', None, 'Checkpoint (directory or '
                      'prefix) of a plain ResNet to start from: every weight '
                      'but the halting heads (two-stage training).', **fv)
  flags.DEFINE_string('baseline_from', None, 'Evaluation JSON of an ACT/SACT '
                      'run: train the plain ResNet with its rounded average '
                      'units per block, initialised from its first units.',
                      **fv)
  flags.DEFINE_integer('checkpoint_every', d['checkpoint_every'],
                       'Steps between checkpoints.', **fv)
  flags.DEFINE_integer('keep_checkpoints', 3, 'Checkpoints to keep.', **fv)
  flags.DEFINE_integer('summary_every', 100, 'Steps between training '
                       'summaries and log lines.', **fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the initial weights, data order '
                       'and augmentation.', **fv)
  flags.DEFINE_string('checkpoint', None, 'Checkpoint (prefix or directory) '
                      'to evaluate instead of the newest intact one in '
                      '--model_dir (--mode=eval).', **fv)
  define_run_flags(flag_values)
  _register_validators(binary, flag_values)


def define_run_flags(flag_values):
  """The flags of resuming a run directory, shared by every trainer."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_boolean('allow_changed_flags', False, 'Resume a run with '
                       'training settings other than those in its '
                       'config.json (the changes are recorded in its '
                       'history); without it such a restart is refused.',
                       **fv)
  flags.DEFINE_boolean('restart_from_scratch', False, 'Start from step 0 '
                       'in a --model_dir that holds a run: its checkpoints '
                       'and config.json are moved to replaced-<time>/ '
                       'there, not deleted.', **fv)


def _validator(flag_values, names, check):
  """Registers `check(values)` (raising ValueError) as an absl validator."""

  def validate(values):
    try:
      check(values)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True

  flags.register_multi_flags_validator(names, validate,
                                       flag_values=flag_values)


def _register_validators(binary, fv):
  _validator(fv, ['tau'], lambda v: losses.validate_tau(v['tau']))
  _validator(fv, ['model'], lambda v: parse_model(binary.family, v['model']))

  def positive(name):
    def check(values):
      if values[name] is not None and values[name] < 1:
        raise ValueError(f'--{name} must be a positive int, got '
                         f'{values[name]}.')
    _validator(fv, [name], check)

  for name in ('base_channels', 'batch_size', 'eval_batch_size',
               'image_size', 'checkpoint_every', 'keep_checkpoints',
               'summary_every'):
    positive(name)

  def batch_vs_replicas(values):
    replicas = distribution.expected_replicas(values['strategy'])
    if replicas and values['batch_size'] % replicas:
      raise ValueError(
          f'--batch_size={values["batch_size"]} is not divisible by the '
          f'{replicas} replicas of --strategy={values["strategy"]}: use a '
          f'multiple of {replicas}.')
  _validator(fv, ['batch_size', 'strategy'], batch_vs_replicas)

  def steps_or_epochs(values):
    if values['train_steps'] is not None and values['train_epochs'] is not None:
      raise ValueError('Give --train_steps or --train_epochs, not both.')
    if values['train_steps'] is not None and values['train_steps'] < 0:
      raise ValueError(f'--train_steps must be >= 0, got '
                       f'{values["train_steps"]}.')
    if values['train_epochs'] is not None and not values['train_epochs'] > 0:
      raise ValueError(f'--train_epochs must be > 0, got '
                       f'{values["train_epochs"]}.')
  _validator(fv, ['train_steps', 'train_epochs'], steps_or_epochs)

  def learning_rate(values):
    if values['learning_rate'] is not None and not values['learning_rate'] > 0:
      raise ValueError(f'--learning_rate must be > 0, got '
                       f'{values["learning_rate"]}.')
    if not values['lr_decay_epochs'] > 0:
      raise ValueError(f'--lr_decay_epochs must be > 0, got '
                       f'{values["lr_decay_epochs"]}.')
  _validator(fv, ['learning_rate', 'lr_decay_epochs'], learning_rate)

  def sizes(values):
    for size in _int_list(values['eval_image_size'], 'eval_image_size'):
      if size < 1:
        raise ValueError(f'--eval_image_size sizes must be positive, got '
                         f'{size}.')
  _validator(fv, ['eval_image_size'], sizes)
  _validator(fv, ['lr_boundaries'],
             lambda v: _int_list(v['lr_boundaries'], 'lr_boundaries'))

  def checkpoint_for_eval(values):
    if values['checkpoint'] and values['mode'] != 'eval':
      raise ValueError('--checkpoint picks the checkpoint to evaluate: use '
                       'it with --mode=eval (training resumes from the '
                       'newest intact checkpoint).')
  _validator(fv, ['checkpoint', 'mode'], checkpoint_for_eval)

  def one_init(values):
    if values['finetune_from'] and values['baseline_from']:
      raise ValueError('Give --finetune_from or --baseline_from, not both.')
  _validator(fv, ['finetune_from', 'baseline_from'], one_init)


def _source_fields(path, target_fields):
  """The model fields of the checkpoint at `path` (its run's config.json).

  Without a config.json next to it, the checkpoint is taken to be the plain
  ResNet of the target's layout.
  """
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  saved = config_lib.load(directory) if directory else None
  if saved is not None:
    return saved.model_fields()
  return dict(target_fields, model_type='resnet')


def _baseline(path, family):
  """Units and init settings of the baseline of an evaluation JSON."""
  summary = train.evaluation.read_result(path, require_full=True,
                                         use='--baseline_from')
  units = train.baseline_units(summary, source=path)
  source = summary.get('model')
  if not source or 'checkpoint' not in summary:
    raise ValueError(f'{path} lacks "model" or "checkpoint": pass the JSON '
                     'that evaluation wrote (eval_<split>_<size>px.json).')
  if source['family'] != family:
    raise ValueError(f'{path} describes a {source["family"]} model; this '
                     f'binary trains {family} models.')
  return units, summary['checkpoint'], source


# The config fields each flag sets: those of the flags given on the command
# line win over the run's config.json (`config_lib.resolve`).
_FLAG_FIELDS = {
    'model': ('units',),
    'model_type': ('model_type',),
    'base_channels': ('base_channels',),
    'tau': ('tau',),
    'weight_decay': ('weight_decay',),
    'dataset': ('dataset', 'num_classes', 'data_dir'),
    'data_dir': ('data_dir',),
    'image_size': ('image_size', 'eval_image_sizes'),
    'eval_image_size': ('eval_image_sizes',),
    'lr_boundaries': ('lr_boundaries',),
}


def _given_fields(fv):
  """The config fields set by flags given on the command line."""
  return {field for flag, fields in _FLAG_FIELDS.items()
          if fv[flag].present for field in fields}


def flags_to_config(binary, fv):
  """The `ExperimentConfig` of parsed flags `fv`.

  Raises:
    ValueError: inconsistent flags, with the fix.
  """
  if not fv.model_dir:
    raise ValueError('--model_dir is required: the directory for '
                     'checkpoints, logs and results.')
  spec = data.get_spec(fv.dataset)
  units = parse_model(binary.family, fv.model)
  model_type = fv.model_type
  init = dict(init_checkpoint=None, init_mode=None, init_model=None)
  if fv.baseline_from:
    for name in ('model', 'model_type'):
      if fv[name].present:
        raise ValueError(f'--{name} cannot be combined with --baseline_from: '
                         'the baseline is the plain ResNet with the evaluated '
                         'run\'s average units per block.')
    units, checkpoint, source = _baseline(fv.baseline_from, binary.family)
    model_type = 'resnet'
    init = dict(init_checkpoint=checkpoint, init_mode='baseline',
                init_model=source)
  image_size = fv.image_size or spec.image_size
  eval_sizes = (_int_list(fv.eval_image_size, 'eval_image_size')
                or [image_size])
  steps_per_epoch = spec.num_train_examples / fv.batch_size
  if fv.train_steps is not None:
    train_steps = fv.train_steps
  elif fv.train_epochs is not None:
    train_steps = int(math.ceil(fv.train_epochs * steps_per_epoch))
  else:
    train_steps = binary.default_steps(steps_per_epoch)
  boundaries = (_int_list(fv.lr_boundaries, 'lr_boundaries')
                if fv.lr_boundaries is not None else
                binary.default_boundaries(train_steps, steps_per_epoch, fv))
  config = train.ExperimentConfig(
      family=binary.family, units=units, model_type=model_type,
      num_classes=spec.num_classes, base_channels=fv.base_channels,
      tau=fv.tau, weight_decay=fv.weight_decay, dataset=fv.dataset,
      data_dir=fv.data_dir, download=fv.download,
      preprocessing=binary.preprocessing, image_size=image_size,
      eval_image_sizes=eval_sizes, batch_size=fv.batch_size,
      eval_batch_size=fv.eval_batch_size, eval_examples=fv.eval_examples,
      train_steps=train_steps,
      learning_rate=(fv.learning_rate if fv.learning_rate is not None
                     else binary.default_lr(fv.batch_size)),
      lr_boundaries=sorted({b for b in boundaries if 0 < b < train_steps}),
      label_smoothing=fv.label_smoothing, model_dir=fv.model_dir,
      checkpoint_every=fv.checkpoint_every,
      keep_checkpoints=fv.keep_checkpoints, summary_every=fv.summary_every,
      seed=fv.seed, **init)
  if not fv.restart_from_scratch:
    config = config_lib.resolve(config, config_lib.load(fv.model_dir),
                                fv.mode, _given_fields(fv))
  if fv.finetune_from:
    config.init_checkpoint = fv.finetune_from
    config.init_mode = 'finetune'
    config.init_model = _source_fields(fv.finetune_from,
                                       config.model_fields())
  return config


def parse(fv, argv):
  """Parses `argv` into the binary's `fv` when it carries flags.

  Under `app.run` the flags are parsed already and argv holds only the
  program name; tests call the binaries' `main` with a full command line.

  Raises:
    app.UsageError: positional arguments were given.
  """
  if any(arg.startswith('-') for arg in argv[1:]):
    fv.unparse_flags()
    argv = fv(argv)
  elif not fv.is_parsed():
    fv.mark_as_parsed()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')


def require(fv, *names):
  """Raises app.UsageError naming the first of `names` left empty."""
  for name in names:
    if not fv[name].value:
      raise app.UsageError(f'--{name} is required.')


def run(binary, fv, argv):
  """Parses `argv` into `fv` when it carries flags, then runs the experiment.
  """
  parse(fv, argv)
  try:
    config = flags_to_config(binary, fv)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  strategy = distribution.make_strategy(fv.strategy, fv.tpu)
  if strategy.num_replicas_in_sync and (
      config.batch_size % strategy.num_replicas_in_sync):
    raise app.UsageError(
        f'--batch_size={config.batch_size} is not divisible by the '
        f'{strategy.num_replicas_in_sync} replicas of --strategy='
        f'{fv.strategy}.')
  summaries = []
  if fv.mode in ('train', 'train_and_eval'):
    result = train.train(config, strategy,
                         allow_changed=fv.allow_changed_flags,
                         restart_from_scratch=fv.restart_from_scratch)
    logging.info('Trained to step %d in %.0f s; checkpoint %s.', result.step,
                 result.seconds, result.checkpoint)
  if fv.mode in ('eval', 'train_and_eval') and distribution.is_chief(
      strategy):
    for size in config.eval_image_sizes:
      summary = train.evaluate(config, image_size=size,
                               checkpoint=fv.checkpoint)
      summaries.append(summary)
      path = summary['path']
      print(train.format_table(summary), flush=True)
      print(f'Results: {path}\nTensorBoard: tensorboard --logdir '
            f'{config.model_dir}', flush=True)
  return summaries


_DISK_FULL = ('No space left on device', 'Disk quota exceeded')


def _remedy_for_os_error(e):
  """One line (problem and remedy) for an `OSError`, or None."""
  where = f' ({e.filename})' if getattr(e, 'filename', None) else ''
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return (f'No space left on the device{where}. Free some space, or '
            'write to another disk (--model_dir, --export_dir, '
            '--output_dir).')
  if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
    return (f'{e.strerror}{where}: a part of the path is a file where a '
            'folder is needed, or the other way round. Choose another path.')
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f'{e.strerror}{where}: choose a path you can write to, or fix '
            'its permissions.')
  return None


def user_error_message(error):
  """The one-line message of an error the user can fix, or None for an
  unexpected one (a bug, shown with its traceback)."""
  if isinstance(error, app.UsageError):
    # A library error passed on as a usage error says what to do itself;
    # a missing or unexpected flag gets the pointer to the flag list.
    if error.__cause__ is not None:
      return str(error)
    return f'{error} (--helpshort lists the flags)'
  if isinstance(error, (data.DatasetNotReadyError,
                        train.TrainingDivergedError, FileNotFoundError,
                        ValueError)):
    return str(error)
  if isinstance(error, OSError):
    return _remedy_for_os_error(error)
  if isinstance(error, tf.errors.OpError):
    text = error.message or str(error)
    if any(marker in text for marker in _DISK_FULL):
      return ('No space left on the device. Free some space, or write to '
              'another disk (--model_dir, --export_dir, --output_dir).')
    if isinstance(error, (tf.errors.PermissionDeniedError,
                          tf.errors.FailedPreconditionError,
                          tf.errors.NotFoundError,
                          tf.errors.AlreadyExistsError)):
      first = text.strip().splitlines()[0] if text.strip() else text
      return (f'{first}. Check the paths given (a part of one may be a '
              'file, missing, or not writable).')
  return None


def report_errors(main):
  """`main` with the errors a user can fix reported as one line.

  `sys.exit('Error: ...')` (exit status 1) instead of a traceback; with
  --verbosity=1 (or higher) the traceback is shown as well.
  """

  def main_reporting_errors(argv):
    try:
      # app.run exits with what main returns: the binaries' return values
      # are for tests, not exit statuses.
      main(argv)
    except Exception as e:  # pylint: disable=broad-except
      message = user_error_message(e)
      if message is None:
        raise
      if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
        logging.exception('The error in full:')
      sys.exit(f'Error: {message}')

  return main_reporting_errors


def main_with_flags(main, fv):
  """`app.run(main)` with the binary's own flags shown and parsed, and the
  errors a user can fix reported in one line (`report_errors`).

  absl parses the process-wide flags.FLAGS; the binary's flags join it here
  (and only here) so that importing both binaries never clashes.
  """
  flags.FLAGS.append_flag_values(fv)
  for name in fv:
    flags.FLAGS.register_flag_by_module(sys.argv[0], fv[name])
  app.run(report_errors(main))
