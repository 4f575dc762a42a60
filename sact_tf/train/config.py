"""The configuration of a training / evaluation run.

An `ExperimentConfig` holds everything a run needs: the model, the data, the
optimisation and where to write. The binaries build one from their flags; the
library never reads flags. It is saved as `config.json` in the model directory
so that later tools (evaluation, export, ponder maps) can rebuild the model.
"""

import dataclasses
import datetime
import json
import os
from typing import List, Optional

from absl import logging

from sact_tf import architectures
from sact_tf import fileio
from sact_tf import halting
from sact_tf import losses
from sact_tf.data import datasets
from sact_tf.data import pipelines

CONFIG_FILENAME = 'config.json'
MODES = ('train', 'eval', 'train_and_eval')
# Fields that define the network: a checkpoint only fits a model that agrees
# on all of them.
MODEL_FIELDS = ('family', 'units', 'model_type', 'num_classes',
                'base_channels')


@dataclasses.dataclass
class ExperimentConfig:
  """A run's settings (see the binaries' flags for their meaning).

  Attributes:
    family: 'imagenet' (bottleneck ResNet) or 'cifar'.
    units: units per block (4 ints for ImageNet, 3 for CIFAR).
    model_type: 'resnet', 'act' or 'sact'.
    num_classes: model outputs (the dataset's, with its label offset).
    base_channels: width of the first block (64 ImageNet, 16 CIFAR).
    tau: ponder cost weight.
    eps: halting threshold 1 - eps.
    halting_bias_init: initial bias of the halting heads.
    weight_decay: Keras L2 factor on conv kernels.
    dataset, data_dir, download: the TFDS dataset and where it lives.
    preprocessing: 'inception' or 'cifar'.
    image_size: training resolution.
    eval_image_sizes: resolutions to evaluate at.
    batch_size: global training batch size.
    eval_batch_size: evaluation batch size.
    eval_examples: evaluate on the first N examples only (0: all).
    train_steps: total training steps.
    learning_rate: the initial learning rate.
    lr_boundaries: steps at which the rate is multiplied by lr_decay.
    lr_decay: factor applied at each boundary.
    momentum: SGD momentum.
    label_smoothing: label smoothing of the cross-entropy.
    model_dir: checkpoints, summaries, config and evaluation results.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: how many checkpoints to keep.
    summary_every: steps between training summaries and log lines.
    seed: seed of the initial weights, data order and augmentation.
    init_checkpoint: checkpoint (directory or prefix) to initialise a new
      run from, or None.
    init_mode: 'finetune' (every weight except the halting heads) or
      'baseline' (the first units of each block), with init_checkpoint.
    init_model: the model fields (MODEL_FIELDS) of init_checkpoint's model.
    history: the settings changed when the run was resumed, oldest first:
      [{'step', 'time', 'changed': {field: [old, new]}}] (see
      `resume_config`).
  """

  family: str = 'imagenet'
  units: List[int] = dataclasses.field(default_factory=lambda: [3, 4, 23, 3])
  model_type: str = 'sact'
  num_classes: int = 1001
  base_channels: int = 64
  tau: float = 0.005
  eps: float = 0.01
  halting_bias_init: float = -3.0
  weight_decay: float = 5e-5
  dataset: str = 'imagenet2012'
  data_dir: Optional[str] = None
  download: bool = True
  preprocessing: str = 'inception'
  image_size: int = 224
  eval_image_sizes: List[int] = dataclasses.field(
      default_factory=lambda: [224])
  batch_size: int = 256
  eval_batch_size: int = 100
  eval_examples: int = 0
  # 90 ImageNet epochs at batch 256 with 0.05 per 32 images; the binaries
  # derive these (and the step schedule) from their flags.
  train_steps: int = 450_411
  learning_rate: float = 0.4
  lr_boundaries: List[int] = dataclasses.field(default_factory=list)
  lr_decay: float = 0.1
  momentum: float = 0.9
  label_smoothing: float = 0.1
  model_dir: str = ''
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  summary_every: int = 100
  seed: int = 0
  init_checkpoint: Optional[str] = None
  init_mode: Optional[str] = None
  init_model: Optional[dict] = None
  history: List[dict] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self.validate()

  def validate(self):
    """Raises ValueError naming the first bad field and how to fix it."""
    if self.family not in ('imagenet', 'cifar'):
      raise ValueError(f"family must be 'imagenet' or 'cifar', got "
                       f'{self.family!r}.')
    self.units = (architectures.imagenet_units(units=self.units)
                  if self.family == 'imagenet' else
                  architectures.cifar_units(list(self.units)))
    architectures.validate_model_type(self.model_type)
    losses.validate_tau(self.tau)
    halting.validate_eps(self.eps)
    check_finite('halting_bias_init', self.halting_bias_init)
    check_finite('weight_decay', self.weight_decay)
    if self.weight_decay < 0:
      raise ValueError(f'weight_decay must be >= 0, got {self.weight_decay}.')
    datasets.get_spec(self.dataset)
    if self.preprocessing not in pipelines.STYLES:
      raise ValueError(f'preprocessing must be one of {pipelines.STYLES}, '
                       f'got {self.preprocessing!r}.')
    for name in ('num_classes', 'base_channels', 'image_size', 'batch_size',
                 'eval_batch_size', 'checkpoint_every', 'keep_checkpoints',
                 'summary_every'):
      check_positive_int(name, getattr(self, name))
    if not self.eval_image_sizes:
      raise ValueError('eval_image_sizes must list at least one size.')
    for size in self.eval_image_sizes:
      check_positive_int('eval_image_sizes', size)
    check_steps(self)
    check_learning_rate(self)
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got '
                       f'{self.label_smoothing}.')
    check_momentum(self)
    if (self.init_mode is None) != (self.init_checkpoint is None):
      raise ValueError('init_checkpoint and init_mode go together: give both '
                       'or neither.')
    if self.init_mode not in (None, 'finetune', 'baseline'):
      raise ValueError(f"init_mode must be 'finetune' or 'baseline', got "
                       f'{self.init_mode!r}.')

  def model_kwargs(self):
    """Keyword arguments of `sact_tf.models.resnet.ResNet`."""
    return dict(family=self.family, units=list(self.units),
                model_type=self.model_type, num_classes=self.num_classes,
                base_channels=self.base_channels,
                halting_bias_init=self.halting_bias_init, eps=self.eps,
                tau=self.tau, weight_decay=self.weight_decay)

  def model_fields(self):
    return {name: getattr(self, name) for name in MODEL_FIELDS}

  def learning_rates(self):
    """The rate of each piece of the step schedule (boundaries + 1 values)."""
    return learning_rates(self)

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values):
    return cls(**known_fields(cls, values))


# Checks shared with `sact_tf.detection.config`: each raises ValueError
# naming the field and what it must be.


def known_fields(cls, values, what='config'):
  """A copy of the dict `values`, checked to hold only fields of the
  dataclass `cls` (`what` names it in the error)."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f'Unknown {what} fields {unknown}: was it written by a '
                     'newer sact_tf?')
  return dict(values)


def check_finite(name, value):
  """Raises ValueError unless `value` is a finite real number."""
  architectures.finite_float(name, value)


def check_positive_int(name, value):
  """Raises ValueError unless `value` is an int >= 1 (not a bool)."""
  architectures.positive_int(name, value)


def check_steps(config):
  """`config.train_steps` and `config.eval_examples` (0: all) are >= 0."""
  if config.train_steps < 0:
    raise ValueError(f'train_steps must be >= 0, got {config.train_steps}.')
  if config.eval_examples < 0:
    raise ValueError(f'eval_examples must be >= 0 (0: all), got '
                     f'{config.eval_examples}.')


def check_learning_rate(config):
  """`config.learning_rate` > 0; `config.lr_boundaries` increase, > 0."""
  if not config.learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got '
                     f'{config.learning_rate}.')
  if list(config.lr_boundaries) != sorted(set(config.lr_boundaries)) or any(
      b <= 0 for b in config.lr_boundaries):
    raise ValueError(f'lr_boundaries must be increasing positive steps, '
                     f'got {config.lr_boundaries}.')


def check_momentum(config):
  """`config.momentum` is in [0, 1)."""
  if not 0.0 <= config.momentum < 1.0:
    raise ValueError(f'momentum must be in [0, 1), got {config.momentum}.')


def learning_rates(config):
  """The rate of each piece of `config`'s step schedule: learning_rate,
  multiplied by lr_decay at each of the lr_boundaries."""
  return [config.learning_rate * config.lr_decay**i
          for i in range(len(config.lr_boundaries) + 1)]


def write_json(path, value):
  """Writes `value` as JSON to `path` atomically (temp file + rename).

  A reader sees the old file or the new one, never a partial one, even if
  the process dies mid-write.
  """
  text = json.dumps(value, indent=2, sort_keys=True) + '\n'
  fileio.write_bytes(path, text.encode('utf-8'))


def read_json(path):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'No such file: {path}') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e


def save(config):
  """Writes `config` to `<model_dir>/config.json` (atomically)."""
  write_json(os.path.join(config.model_dir, CONFIG_FILENAME),
             config.to_dict())


def load(model_dir, config_class=ExperimentConfig):
  """The config saved in `model_dir` (an instance of `config_class`, e.g.
  `sact_tf.detection.config.DetectionConfig`), or None if there is none."""
  path = os.path.join(model_dir, CONFIG_FILENAME)
  if not os.path.exists(path):
    return None
  return config_class.from_dict(read_json(path))


def check_same_fields(saved, current, names, where, what='model'):
  """Raises ValueError if `saved` and `current` differ in fields `names`.

  Lists and tuples compare as lists. The message lists every difference
  and says that `where` holds a different `what`.
  """
  diffs = []
  for name in names:
    old, new = getattr(saved, name), getattr(current, name)
    if isinstance(old, (list, tuple)):
      old, new = list(old), list(new)
    if old != new:
      diffs.append(f'{name}: {old!r} there, {new!r} now')
  if diffs:
    raise ValueError(
        f'{where} holds a different {what} ({"; ".join(diffs)}). Use the '
        'same model flags, or a new --model_dir for a new model.')


def check_same_model(config, saved, where):
  """Raises ValueError if `saved` describes another network than `config`."""
  if saved is not None:
    check_same_fields(saved, config, MODEL_FIELDS, where)


# Fields that may differ when a run is resumed: they change where data is
# read, what is evaluated and how often the run reports, not what it trains.
FREE_ON_RESUME = ('data_dir', 'download', 'eval_batch_size', 'eval_examples',
                  'eval_image_sizes', 'summary_images', 'model_dir',
                  'summary_every', 'checkpoint_every', 'keep_checkpoints',
                  'history')


# Fields that may change on resume without `allow_changed`, recorded in the
# history: a longer (or shorter) run is what restarting with a new
# --train_steps asks for, and the learning-rate drops stay where they were.
RECORDED_ON_RESUME = ('train_steps',)

# Fields that say how a new run is initialised.
INIT_FIELDS = ('init_checkpoint', 'init_mode', 'init_model', 'finetune_from')


def _flat(values, prefix=''):
  """A dict with nested dicts flattened to dotted keys."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict) and key not in ('init_model',):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = list(value) if isinstance(value, tuple) else value
  return flat


def changed_settings(saved, config, free=FREE_ON_RESUME):
  """{field: [saved value, new value]} of the training settings in which
  `config` differs from `saved` (nested fields dotted, e.g. `model.tau`)."""
  old, new = _flat(saved.to_dict()), _flat(config.to_dict())
  return {key: [old.get(key), new.get(key)]
          for key in sorted(set(old) | set(new))
          if key.split('.')[-1] not in free and old.get(key) != new.get(key)}


def learning_rate_at(config, step):
  """The learning rate of `config`'s step schedule at `step`."""
  index = sum(1 for b in config.lr_boundaries if step >= b)
  return learning_rates(config)[index]


def resume_config(config, saved, step, allow_changed=False):
  """The config a resumed run goes on with, its changes recorded.

  A run resumed with other training settings than `saved` (the run's
  config.json) is refused unless `allow_changed`; then each change goes to
  the new config's `history` with the step it applies from, and a learning
  rate that would jump up at `step` is logged as a warning. Fields of
  `FREE_ON_RESUME` may change freely; those of `RECORDED_ON_RESUME`
  (`train_steps`) without `allow_changed`, but they are recorded. The caller checks the model first
  (`check_same_model`).

  Args:
    config: the settings given now.
    saved: the run's saved config, or None for a new run.
    step: the step training resumes from.
    allow_changed: accept changed training settings.

  Returns:
    `config` with `saved`'s history (and the new entry) in `history`.

  Raises:
    ValueError: settings changed and `allow_changed` is False.
  """
  if saved is None:
    return config
  if step > 0:
    # How a new run is initialised does not apply to a resumed one: keep
    # the record of how this one was.
    for name in INIT_FIELDS:
      if hasattr(config, name) and getattr(config, name) != getattr(
          saved, name):
        logging.info('Resuming at step %d: %s=%r does not apply (the run '
                     'was initialised with %r).', step, name,
                     getattr(config, name), getattr(saved, name))
        setattr(config, name, getattr(saved, name))
  changed = changed_settings(saved, config)
  config.history = list(saved.history)
  if not changed:
    return config
  listing = '; '.join(f'{k}: {old!r} -> {new!r}'
                      for k, (old, new) in changed.items())
  if not allow_changed and set(changed) - set(RECORDED_ON_RESUME):
    raise ValueError(
        f'{config.model_dir} holds a run trained with other settings '
        f'({listing}). Resume it with the settings in its config.json, '
        'pass --allow_changed_flags to go on with the new ones from step '
        f'{step} (recorded in config.json\'s history), or use a new '
        '--model_dir.')
  old_rate = learning_rate_at(saved, step)
  new_rate = learning_rate_at(config, step)
  if new_rate > old_rate:
    logging.warning('The learning rate at step %d goes up from %.3g (the '
                    'saved schedule) to %.3g (the new settings).', step,
                    old_rate, new_rate)
  logging.warning('Resuming %s at step %d with changed settings: %s.',
                  config.model_dir, step, listing)
  config.history.append({
      'step': int(step),
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'changed': changed,
  })
  return config


# Fields that `--mode=eval` takes from the run's config.json unless they are
# given: what the run trained, on which data, at which resolution.
EVAL_FROM_SAVED = ('units', 'model_type', 'base_channels', 'num_classes',
                   'tau', 'eps', 'halting_bias_init', 'weight_decay',
                   'dataset', 'data_dir', 'preprocessing', 'image_size',
                   'eval_image_sizes')
# Fields a resumed training run keeps from its config.json unless given:
# derived learning-rate drops must not move when --train_steps grows.
RESUME_FROM_SAVED = ('lr_boundaries',)


def resolve(config, saved, mode, given=()):
  """The config a command runs with: the settings given, completed from the
  run's saved config.

  Args:
    config: the config built from the command line (defaults included).
    saved: the run's saved config (`load(model_dir)`), or None.
    mode: 'eval' takes the fields of `EVAL_FROM_SAVED` from `saved`, so that
      `--mode=eval --model_dir=RUN` evaluates what RUN trained without its
      flags; 'train' / 'train_and_eval' take those of `RESUME_FROM_SAVED`
      (learning-rate drops past the new `train_steps` are dropped).
    given: the fields set explicitly (on the command line); they win.

  Returns:
    A new, validated config (`config` itself when there is nothing saved).

  Raises:
    ValueError: `saved` is of another model family, or the result is not a
      valid config.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
  if saved is None:
    return config
  if saved.family != config.family:
    binary = 'imagenet' if saved.family == 'imagenet' else 'cifar10'
    raise ValueError(
        f'{config.model_dir} holds a model of family {saved.family!r}, not '
        f'{config.family!r}: use experiments.{binary} for it.')
  fields = EVAL_FROM_SAVED if mode == 'eval' else RESUME_FROM_SAVED
  values = config.to_dict()
  taken = {}
  for field in fields:
    if field in given:
      continue
    value = getattr(saved, field)
    if field == 'lr_boundaries':
      value = [b for b in value if b < config.train_steps]
    if value != values[field]:
      taken[field] = value
  if not taken:
    return config
  if mode != 'eval':
    logging.info('Keeping %s of the run in %s (give the flags to change '
                 'them).', ', '.join(f'{k}={v}' for k, v in taken.items()),
                 config.model_dir)
  values.update(taken)
  return type(config).from_dict(values)
