"""What experiments.imagenet and experiments.cifar10 share.

Flags -> config fields -> `sact_tf.train.recipes.experiment_config` (the
binary's recipe completes them) -> `sact_tf.train.recipes.run`. Every
config field can also be given as `--set=section.field=value`
(`define_settings_flag`); a field's own flag (`FLAG_FIELDS`) and `--set`
together are refused.

Each binary owns a `flags.FlagValues` filled by `define_flags` with its own
defaults, so both can be imported in one process (tests) without clashing.
"""

import dataclasses
import errno
import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from experiments import startup
from sact_tf import architectures
from sact_tf import data
from sact_tf import losses
from sact_tf import precision
from sact_tf import train
from sact_tf.train import config as config_lib
from sact_tf.train import distribution
from sact_tf.train import profiling
from sact_tf.train import recipes


@dataclasses.dataclass(frozen=True)
class Binary:
  """What differs between the binaries.

  Attributes:
    recipe: the `sact_tf.train.recipes.Recipe` that completes the config.
    defaults: flag name -> default value, plus help fragments (steps_help,
      lr_help, boundaries_help) describing the recipe's derived defaults.
    model_help: help of --model.
  """

  recipe: recipes.Recipe
  defaults: dict
  model_help: str

  @property
  def family(self):
    return self.recipe.family


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


def number_list(text, name, kind=float, lower=None):
  """The comma-separated numbers of flag --`name`, each of type `kind` and
  at least `lower` (None: any).

  Raises:
    app.UsageError: the text is empty or holds something else.
  """
  allowed = f'comma-separated {"integers" if kind is int else "numbers"}'
  allowed += '' if lower is None else f' >= {lower}'
  try:
    values = [kind(p) for p in str(text).split(',') if p.strip()]
  except ValueError:
    values = []
  if not values or (lower is not None and min(values) < lower):
    raise app.UsageError(f'--{name} must be {allowed}, got {text!r}.')
  return values


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
  define_scale_flags(flag_values)
  flags.DEFINE_string('finetune_from', None, 'Checkpoint (directory or '
                      'prefix) of a plain ResNet to start from: every weight '
                      'but the halting heads (two-stage training); with '
                      '--baseline_from, the first units of each block.',
                      **fv)
  flags.DEFINE_string('baseline_from', None, 'Evaluation JSON of an ACT/SACT '
                      'run: train the plain ResNet with its rounded average '
                      'units per block, initialised from the first units of '
                      'each block of that run or, with --finetune_from, of '
                      'that checkpoint (e.g. the full plain ResNet the '
                      'ACT/SACT run started from, as in the paper).', **fv)
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
  define_profile_flag(flag_values)
  define_settings_flag(flag_values, train.ExperimentConfig)
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


def define_profile_flag(flag_values):
  """--profile_steps=FIRST,LAST of every trainer, checked at parse time."""
  flags.DEFINE_string('profile_steps', None, 'Training steps FIRST,LAST '
                      '(both included, e.g. 10,15) to capture a TensorBoard '
                      'profile of, into <model_dir>/train (Profile tab).',
                      flag_values=flag_values)
  _validator(flag_values, ['profile_steps'],
             lambda v: profiling.parse_steps(v['profile_steps']))


def define_settings_flag(flag_values, config_class):
  """`--set=section.field=value` (repeatable): any field of
  `config_class`; its help lists the keys, a validator checks them."""
  flags.DEFINE_multi_string('set', [], config_lib.settings_help(config_class),
                            flag_values=flag_values)
  _validator(flag_values, ['set'],
             lambda v: config_lib.parse_settings(config_class, v['set']))


def define_scale_flags(flag_values):
  """--precision, --sync_batch_norm and --steps_per_loop (both tasks)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_enum('precision', 'float32', precision.PRECISIONS,
                    'Keras dtype policy of the model: mixed_bfloat16 (TPU, '
                    'recent GPUs and CPUs) or mixed_float16 (GPU; the loss '
                    'is scaled) compute in 16 bits with float32 weights; the '
                    'halting bookkeeping, FLOPs and losses stay float32.',
                    **fv)
  flags.DEFINE_boolean('sync_batch_norm', False, 'Batch norm statistics '
                       'over the examples of all replicas (synchronised), '
                       'not each replica\'s own; plain ResNets only '
                       '(--model_type=resnet).', **fv)
  flags.DEFINE_integer('steps_per_loop', 1, 'Training steps per tf.function '
                       'call: the host checks the loss and collects metrics '
                       'once per loop (same results as 1).', lower_bound=1,
                       **fv)


def flagged_fields(fv, flag_fields):
  """{'section.field': '--flag'} of the fields whose own flags (in
  `flag_fields`, {flag: field}) were given on the command line."""
  return {field: f'--{flag}' for flag, field in flag_fields.items()
          if fv[flag].present}


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
      if values[name] is not None:
        config_lib.check_positive_int(f'--{name}', values[name])
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
    if values['train_steps'] is not None:
      config_lib.check_non_negative('--train_steps', values['train_steps'])
    if values['train_epochs'] is not None:
      config_lib.check_positive('--train_epochs', values['train_epochs'])
  _validator(fv, ['train_steps', 'train_epochs'], steps_or_epochs)

  def learning_rate(values):
    if values['learning_rate'] is not None:
      config_lib.check_positive('--learning_rate', values['learning_rate'])
    config_lib.check_positive('--lr_decay_epochs', values['lr_decay_epochs'])
  _validator(fv, ['learning_rate', 'lr_decay_epochs'], learning_rate)

  def sizes(values):
    for size in _int_list(values['eval_image_size'], 'eval_image_size'):
      config_lib.check_positive_int('--eval_image_size', size)
  _validator(fv, ['eval_image_size'], sizes)
  _validator(fv, ['lr_boundaries'],
             lambda v: _int_list(v['lr_boundaries'], 'lr_boundaries'))

  def checkpoint_for_eval(values):
    if values['checkpoint'] and values['mode'] != 'eval':
      raise ValueError('--checkpoint picks the checkpoint to evaluate: use '
                       'it with --mode=eval (training resumes from the '
                       'newest intact checkpoint).')
  _validator(fv, ['checkpoint', 'mode'], checkpoint_for_eval)


# The config field each flag sets. A field whose flag is given may not be
# set with --set as well; the fields given (by their flags or by --set) win
# over the run's config.json (`config_lib.resolve`).
FLAG_FIELDS = {
    'model': 'model.units',
    'model_type': 'model.model_type',
    'base_channels': 'model.base_channels',
    'tau': 'loss.tau',
    'weight_decay': 'loss.weight_decay',
    'label_smoothing': 'loss.label_smoothing',
    'train_steps': 'optimizer.train_steps',
    'train_epochs': 'optimizer.train_steps',
    'learning_rate': 'optimizer.learning_rate',
    'lr_boundaries': 'optimizer.lr_boundaries',
    'dataset': 'data.dataset',
    'data_dir': 'data.data_dir',
    'download': 'data.download',
    'image_size': 'data.image_size',
    'eval_image_size': 'data.eval_image_sizes',
    'batch_size': 'data.batch_size',
    'eval_batch_size': 'data.eval_batch_size',
    'eval_examples': 'data.eval_examples',
    'model_dir': 'run.model_dir',
    'checkpoint_every': 'run.checkpoint_every',
    'keep_checkpoints': 'run.keep_checkpoints',
    'summary_every': 'run.summary_every',
    'seed': 'run.seed',
    'precision': 'run.precision',
    'sync_batch_norm': 'run.sync_batch_norm',
    'steps_per_loop': 'run.steps_per_loop',
}
# Flags whose value is their field's as it is; flags_to_config reads the
# others (and derives what they leave open) by the binary's recipe.
_AS_IS = ('model_type', 'base_channels', 'tau', 'weight_decay',
          'label_smoothing', 'learning_rate', 'dataset', 'data_dir',
          'download', 'image_size', 'batch_size', 'eval_batch_size',
          'eval_examples', 'model_dir', 'checkpoint_every',
          'keep_checkpoints', 'summary_every', 'seed', 'precision',
          'sync_batch_norm', 'steps_per_loop')
# Fields given along with a field: a dataset brings its classes (and its
# data directory), a training size the evaluation sizes.
_IMPLIED = {
    'data.dataset': ('model.num_classes', 'data.data_dir'),
    'data.image_size': ('data.eval_image_sizes',),
}


def _flagged(fv):
  """{field: flag} of the fields set by the flags given."""
  flagged = flagged_fields(fv, FLAG_FIELDS)
  if fv.baseline_from:
    # The baseline's units and type come from the evaluation JSON.
    flagged.update({'model.units': '--baseline_from',
                    'model.model_type': '--baseline_from'})
  return flagged


def _given_fields(fv, settings):
  """The config fields given on the command line: by their flags or by
  --set (`settings`), with the fields they imply."""
  given = set(flagged_fields(fv, FLAG_FIELDS)) | set(settings)
  return given.union(*(_IMPLIED.get(field, ()) for field in list(given)))


def flags_to_config(binary, fv):
  """The `ExperimentConfig` of parsed flags `fv`.

  Each field comes from its flag (defaults included) or its --set entry;
  `sact_tf.train.recipes.experiment_config` derives what neither gives by
  the binary's recipe (a --set field feeding the derivations as its flag
  would) and, unless --restart_from_scratch, completes the fields not
  given from the run's config.json.

  Raises:
    ValueError: inconsistent flags or settings, with the fix.
  """
  settings = config_lib.parse_settings(train.ExperimentConfig, fv.set,
                                       _flagged(fv))
  values = {FLAG_FIELDS[flag]: fv[flag].value for flag in _AS_IS}
  values.update(settings)
  if 'model.units' not in values:
    values['model.units'] = parse_model(binary.family, fv.model)
  if fv.baseline_from:
    for name in ('model', 'model_type'):
      if fv[name].present:
        raise ValueError(f'--{name} cannot be combined with --baseline_from: '
                         'the baseline is the plain ResNet with the evaluated '
                         'run\'s average units per block.')
    values.update(recipes.baseline_fields(fv.baseline_from, binary.family,
                                          init_from=fv.finetune_from))
  if 'data.eval_image_sizes' not in values:
    values['data.eval_image_sizes'] = _int_list(fv.eval_image_size,
                                                'eval_image_size')
  # The flags below and --set of their field exclude each other.
  if fv.train_steps is not None:
    values['optimizer.train_steps'] = fv.train_steps
  if fv.lr_boundaries is not None:
    values['optimizer.lr_boundaries'] = _int_list(fv.lr_boundaries,
                                                  'lr_boundaries')
  return recipes.experiment_config(
      binary.recipe, values, train_epochs=fv.train_epochs,
      lr_decay_epochs=fv.lr_decay_epochs,
      finetune_from=None if fv.baseline_from else fv.finetune_from,
      mode=fv.mode,
      given=(False if fv.restart_from_scratch
             else _given_fields(fv, settings)))


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
  startup.apply_flags()


def require(fv, *names):
  """Raises app.UsageError naming the first of `names` left empty."""
  for name in names:
    if not fv[name].value:
      raise app.UsageError(f'--{name} is required.')


def run(binary, fv, argv):
  """Parses `argv` into `fv` when it carries flags, then runs the experiment
  (`sact_tf.train.recipes.run`)."""
  parse(fv, argv)
  try:
    config = flags_to_config(binary, fv)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  strategy = distribution.make_strategy(fv.strategy, fv.tpu)
  return recipes.run(config, fv.mode, strategy, checkpoint=fv.checkpoint,
                     allow_changed=fv.allow_changed_flags,
                     restart_from_scratch=fv.restart_from_scratch,
                     profile_steps=fv.profile_steps)


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


def binary_flags_and_main(binary):
  """(flags, main) of a classification binary: its own `flags.FlagValues`
  with `define_flags`, and `main(argv)` running `run` with them."""
  flag_values = flags.FlagValues()
  define_flags(binary, flag_values)

  def main(argv):
    return run(binary, flag_values, argv)

  return flag_values, main


def main_with_flags(main, fv):
  """`app.run(main)` with the binary's own flags shown and parsed, and the
  errors a user can fix reported in one line (`report_errors`).

  absl parses the process-wide flags.FLAGS; the binary's flags join it here
  (and only here) so that importing both binaries never clashes.
  """
  flags.FLAGS.append_flag_values(fv)
  for name in fv:
    flags.FLAGS.register_flag_by_module(sys.argv[0], fv[name])
  startup.show_in_help(sys.argv[0])
  app.run(report_errors(main))
