"""sact_tf checkpoints: save, restore, and initialise one model from another.

A sact_tf checkpoint is a `tf.train.Checkpoint(model=..., optimizer=...,
step=...)` whose `model` entry holds every model variable under its Keras path
(e.g. `resnet_v2/block1/unit_1/conv1/kernel`). Keying by path rather than by
Python attribute keeps checkpoints readable by name, lets a model of another
type or depth pick the variables it shares with the saved one, and does not
depend on how Keras tracks lists of layers (Keras 3 does not expose the
model's lists of blocks and units to `tf.train.Checkpoint`).

A directory written by `write_model_checkpoint` (or by training) can be given
to `--finetune_from` and evaluated with `--mode=eval`.
"""

import collections
import re

from absl import logging
import tensorflow as tf

from sact_tf.train import config as config_lib
from sact_tf.train import rundir

class InitSummary(collections.namedtuple(
    'InitSummary', ['copied', 'kept', 'checkpoint'])):
  """What `copy_from_checkpoint` did: variables copied, variables kept at
  their initialisation, and the checkpoint prefix read."""

  @property
  def skipped(self):
    return self.kept


# Whether and how `copy_from_checkpoint` initialises a variable.
COPY = 'copy'            # From the checkpoint; it must be there, same shape.
COPY_IF_FITS = 'if_fits'  # From the checkpoint if there with the same shape.
KEEP = 'keep'            # Left at its initialisation (counted as kept).
SKIP = 'skip'            # Not this function's business (not counted).

_MODEL_KEY = re.compile(r'^model/(.+)/\.ATTRIBUTES/VARIABLE_VALUE$')


def model_trackable(model):
  """A trackable holding `model`'s variables under their paths."""
  by_path = {}
  for variable in model.variables:
    if variable.path in by_path:
      raise ValueError(f'Two variables of {model.name} share the path '
                       f'{variable.path}; cannot checkpoint them by path.')
    by_path[variable.path] = variable
  if not by_path:
    raise ValueError('The model has no variables yet: build it (call it on a '
                     'batch of images) before checkpointing.')
  return tf.train.Checkpoint(**by_path)


def make_checkpoint(model, optimizer=None, step=None):
  """The run checkpoint: model variables by path, optimizer and step."""
  parts = {'model': model_trackable(model)}
  if optimizer is not None:
    parts['optimizer'] = optimizer
  if step is not None:
    parts['step'] = step
  return tf.train.Checkpoint(**parts)


def resolve(path):
  """The intact checkpoint prefix of `path`: a directory's newest, or `path`.

  Checkpoints are found by their files (the `checkpoint` state file may be
  missing or garbage) and checked before use (`rundir.check_intact`).

  Raises:
    FileNotFoundError: there is no checkpoint there.
    rundir.CorruptCheckpointError (a ValueError): the newest checkpoint, or
      the prefix given, cannot be read; the message names the intact one.
  """
  return rundir.resolve(path)


def is_folder(path):
  """Whether `path` is a checkpoint folder rather than a prefix (see
  `rundir.is_folder`)."""
  return rundir.is_folder(path)


def load_checkpoint(prefix):
  """A checkpoint reader of `prefix` (`tf.train.load_checkpoint`, also on
  filesystems that call a prefix a folder; see `rundir.load_checkpoint`)."""
  return rundir.load_checkpoint(prefix)


_STEP_KEY = 'step/.ATTRIBUTES/VARIABLE_VALUE'


def saved_step(prefix):
  """The training step saved in checkpoint `prefix` (its `step` variable),
  or None if it has none."""
  reader = load_checkpoint(prefix)
  return int(reader.get_tensor(_STEP_KEY)) if reader.has_tensor(
      _STEP_KEY) else None


def describe_model(model):
  """A model's layout in words, for error messages."""
  return (f'model {model.name} ({model.family}, {model.model_type}, units '
          f'{model.units_per_block}, base_channels {model.base_channels}, '
          f'{model.num_classes} classes)')


def restore_model(model, path, description=None):
  """Restores every variable of a built `model` from a checkpoint.

  Other entries (optimizer, step) are ignored. Returns the prefix read.
  Serves every model kind (ResNets, detectors): `description` names the
  model in errors (default: `describe_model(model)`).

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: the checkpoint lacks some model variable or holds one with
      another shape, or cannot be read.
  """
  prefix = resolve(path)
  checkpoint = tf.train.Checkpoint(model=model_trackable(model))
  try:
    status = checkpoint.read(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
        f'Checkpoint {prefix} does not fit '
        f'{description or describe_model(model)}: {e}') from e
  return prefix


def write_model_checkpoint(model, directory, step=0):
  """Writes `model`'s variables as a sact_tf checkpoint in `directory`.

  For tools that produce models outside training (e.g. importers); the
  directory then works with `--finetune_from` and `--mode=eval` (put the
  run's config.json next to it).
  """
  step = tf.Variable(step, dtype=tf.int64, trainable=False)
  manager = tf.train.CheckpointManager(make_checkpoint(model, step=step),
                                       directory, max_to_keep=1,
                                       checkpoint_name='ckpt')
  return manager.save(checkpoint_number=int(step.numpy()))


def is_halting_variable(path):
  return '_halting/' in path


def is_classifier_variable(path):
  return '/logits/' in '/' + path


def mismatch_error(header, missing, wrong_shape, noun='variable', hint=None):
  """The ValueError of an initialisation the checkpoint does not fit.

  Args:
    header: the first line (what could not be initialised from where).
    missing: names of the weights the checkpoint lacks.
    wrong_shape: '<name>: checkpoint <shape>, ... <shape>' of the weights it
      holds with another shape.
    noun: what the weights are called ('variable', 'weight').
    hint: a last line saying what to do, or None.

  Returns:
    A `ValueError` listing the first 10 of each kind.
  """
  lines = [header]
  if missing:
    lines.append(f'{len(missing)} {noun}(s) not in the checkpoint: '
                 + ', '.join(missing[:10])
                 + (' ...' if len(missing) > 10 else ''))
  if wrong_shape:
    lines.append(f'{len(wrong_shape)} with another shape: '
                 + '; '.join(wrong_shape[:10]))
  if hint:
    lines.append(hint)
  return ValueError('\n'.join(lines))


def relative_name(path):
  """A variable path without the model's name: 'faster_rcnn/block1/...' and
  'resnet_v2/block1/...' name the same weight."""
  return path.split('/', 1)[1] if '/' in path else path


def _unescape(name):
  # tf.train.Checkpoint escapes '.' as '..' and '/' as '.S' in names.
  return re.sub(r'\.([.S])', lambda m: '/' if m.group(1) == 'S' else '.',
                name)


def checkpoint_weights(prefix):
  """{weight name without the model's name: checkpoint key} of a sact_tf
  checkpoint (the format of this module)."""
  reader = load_checkpoint(prefix)
  weights = {}
  for key in reader.get_variable_to_shape_map():
    match = _MODEL_KEY.match(key)
    if match:
      weights[relative_name(_unescape(match.group(1)))] = key
  if not weights:
    raise ValueError(f'{prefix} holds no model weights by path: expected a '
                     'checkpoint written by sact_tf training (or '
                     'sact_tf.train.checkpointing).')
  return weights


def copy_from_checkpoint(model, path, select, header, hint=None,
                         noun='variable'):
  """Initialises `model`'s variables from a checkpoint of another model.

  The one way one model starts from another's weights (fine-tuning,
  baselines, detectors from classifiers): variables are matched by their
  path below the model's name (`relative_name`), so the models may differ
  in name, type and depth.

  Args:
    model: a built model (may live under a strategy scope).
    path: checkpoint directory or prefix (a sact_tf checkpoint).
    select: `select(name) -> COPY | COPY_IF_FITS | KEEP | SKIP` for each
      variable's relative name.
    header: the first line of the error when something does not fit.
    hint: its last line, what to do (or None).
    noun: what the variables are called in messages.

  Returns:
    `InitSummary(copied, kept, checkpoint)`.

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: a COPY variable is missing or has another shape.
  """
  prefix = resolve(path)
  reader = load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  keys = checkpoint_weights(prefix)
  pairs, missing, wrong_shape, kept = [], [], [], 0
  for variable in model.variables:
    name = relative_name(variable.path)
    how = select(name)
    if how == SKIP:
      continue
    key = keys.get(name)
    fits = key is not None and tuple(shapes[key]) == tuple(variable.shape)
    if how == KEEP or (how == COPY_IF_FITS and not fits):
      kept += 1
    elif fits:
      pairs.append((variable, key))
    elif key is None:
      missing.append(name)
    else:
      wrong_shape.append(f'{name}: checkpoint {tuple(shapes[key])}, model '
                         f'{tuple(variable.shape)}')
  if missing or wrong_shape:
    raise mismatch_error(header.format(prefix=prefix), missing, wrong_shape,
                         noun=noun, hint=hint)
  for variable, key in pairs:
    variable.assign(reader.get_tensor(key))
  return InitSummary(len(pairs), kept, prefix)


def init_from_checkpoint(model, path, source_fields, mode):
  """Initialises a ResNet from a checkpoint of another ResNet.

  Args:
    model: the built model to initialise (may live under a strategy scope).
    path: checkpoint directory or prefix.
    source_fields: the saved model's family, units, model_type, num_classes
      and base_channels.
    mode: 'finetune': copy every variable except the halting heads, which
      keep their initialisation (bias -3), e.g. from a plain ResNet into an
      ACT/SACT one (paper's two-stage training); when the number of
      classes differs, the classifier (logits) is left at its
      initialisation too. 'baseline': copy the
      variables of the first units of each block, e.g. from an ACT/SACT model
      into the plain ResNet with its average number of units (paper 4.1).

  Returns:
    `InitSummary(copied, kept, checkpoint)` (`skipped` is `kept`).

  Raises:
    ValueError: some variable to copy is missing or has another shape.
  """
  if mode not in ('finetune', 'baseline'):
    raise ValueError(f"mode must be 'finetune' or 'baseline', got {mode!r}.")
  source = dict(source_fields)
  # Fine-tuning onto a dataset with other classes re-initialises the
  # classifier (e.g. from an ImageNet model to clutter_digits).
  new_classes = (mode == 'finetune'
                 and source['num_classes'] != model.num_classes)

  def select(name):
    if mode == 'finetune' and (
        is_halting_variable(name)
        or (new_classes and is_classifier_variable(name))):
      return KEEP
    return COPY

  summary = copy_from_checkpoint(
      model, path, select,
      header=(f'Cannot initialise {model.name} ({model.model_type}, units '
              f'{model.units_per_block}) from {{prefix}} '
              f'({source["model_type"]}, units {source["units"]}) in {mode} '
              'mode:'))
  logging.info('Initialised %d variables of %s from %s (%s mode, %d halting '
               '%svariables left at their initialisation).', summary.copied,
               model.name, summary.checkpoint, mode, summary.kept,
               'and classifier ' if new_classes else '')
  return summary


def load_run(model_dir, checkpoint=None, image_size=32, **model_overrides):
  """The model of a run directory, restored: `(config, model, prefix)`.

  Reads the run's `config.json` (written by training or by
  `experiments.import_checkpoint`) to rebuild the model, then restores the
  latest checkpoint of `model_dir` (or `checkpoint`, a directory or prefix).

  Args:
    model_dir: the run's model directory.
    checkpoint: optional checkpoint directory or prefix to restore instead.
    image_size: size of the square zeros the model is built on (any size
      works afterwards: the models are fully convolutional).
    **model_overrides: `ResNet` keyword arguments replacing the config's,
      e.g. `sparse=False`.

  Raises:
    FileNotFoundError: no config.json or no checkpoint.
    ValueError: the checkpoint does not fit the configured model.
  """
  config = config_lib.load(model_dir)
  if config is None:
    raise FileNotFoundError(
        f'No {config_lib.CONFIG_FILENAME} in {model_dir}: point --model_dir '
        'at the directory of a training run (experiments.imagenet / cifar10) '
        'or of experiments.import_checkpoint.')
  prefix = resolve(checkpoint or model_dir)
  model = config.build_model(image_size, **model_overrides)
  restore_model(model, prefix)
  return config, model, prefix
