"""The configuration of a training / evaluation run, in five sections.

A run's config (`ExperimentConfig` for classification,
`sact_tf.detection.config.DetectionConfig` for detection) has the same five
sections (`SECTIONS`), each a dataclass:

  model      the network: what a checkpoint must match, and how it halts;
  loss       what training minimises besides the task loss: the ponder cost
             weight tau, weight decay (and label smoothing);
  optimizer  momentum SGD: the step schedule of the learning rate and the
             number of steps;
  data       the dataset, its preprocessing, image sizes, batches and the
             examples evaluated;
  run        where and how often the run writes, its seed, how a new run is
             initialised, and `history`, the settings changed on resume.

Fields are named `section.field` (`optimizer.learning_rate`) wherever a
setting is named: in messages, in `changed_settings` and the history, and on
the command line (`--set=section.field=value`, parsed by `parse_settings`).
The binaries build a config from their flags; the library never reads flags.
It is saved nested as `config.json` in the model directory so that later
tools (evaluation, export, ponder maps) can rebuild the model; `load` also
reads the layout of earlier versions (flat classification fields; the
detector's `model` with the run's fields beside it).
"""

import dataclasses
import datetime
import json
import os
import typing
from typing import List, Optional

from absl import logging
import tensorflow as tf

from sact_tf import architectures
from sact_tf import fileio
from sact_tf import halting
from sact_tf import losses
from sact_tf import precision as precision_lib
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.layers import common as common_layers
from sact_tf.models import resnet

CONFIG_FILENAME = 'config.json'
MODES = ('train', 'eval', 'train_and_eval')
SECTIONS = ('model', 'loss', 'optimizer', 'data', 'run')
# Fields of the model section that define the network: a checkpoint only
# fits a model that agrees on all of them.
MODEL_FIELDS = ('family', 'units', 'model_type', 'num_classes',
                'base_channels')


# Checks shared by the sections of both tasks: each raises ValueError
# naming the field and what it must be.


def check_finite(name, value):
  """Raises ValueError unless `value` is a finite real number."""
  architectures.finite_float(name, value)


def check_positive_int(name, value):
  """Raises ValueError unless `value` is an int >= 1 (not a bool)."""
  architectures.positive_int(name, value)


def check_positive(name, value):
  """Raises ValueError unless `value` > 0."""
  if not value > 0:
    raise ValueError(f'{name} must be > 0, got {value}.')


def check_learning_rate(learning_rate, boundaries):
  """`learning_rate` > 0; the step `boundaries` increase and are > 0."""
  check_positive('learning_rate', learning_rate)
  if list(boundaries) != sorted(set(boundaries)) or any(
      b <= 0 for b in boundaries):
    raise ValueError(f'lr_boundaries must be increasing positive steps, '
                     f'got {list(boundaries)}.')


def check_non_negative(name, value, meaning=''):
  """Raises ValueError unless `value` >= 0 (`meaning`, e.g. ' (0: all)',
  completes the message)."""
  if value < 0:
    raise ValueError(f'{name} must be >= 0{meaning}, got {value}.')


def known_fields(cls, values, what):
  """A copy of the dict `values`, checked to hold only fields of the
  dataclass `cls` (`what` names it in the error, e.g. a section)."""
  if not isinstance(values, dict):
    raise ValueError(f'{what} must be a JSON object of fields, got '
                     f'{values!r}.')
  known = [f.name for f in dataclasses.fields(cls)]
  _refuse_unknown(values, known, 'field', lambda k: f'{what}.{k}',
                  f'the fields of {what}')
  return dict(values)


def _refuse_unknown(values, known, kind, show, listing):
  """Raises ValueError naming the keys of `values` not in `known` (each as
  `show(key)`), with the known ones (introduced by `listing`)."""
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(
        f'Unknown config {kind} {", ".join(show(k) for k in unknown)} '
        f'({listing}: {", ".join(known)}): was it written by a newer '
        'sact_tf?')


class Section:
  """Base of the sections: validated on construction, dict conversion."""

  def __post_init__(self):
    self.validate()

  def validate(self):
    """Raises ValueError naming the first bad field and how to fix it."""

  def to_dict(self):
    """The fields as JSON-ready values (tuples as lists)."""
    values = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in values.items()}

  @classmethod
  def from_dict(cls, values, name=None):
    """The section of a dict of its fields; `name` (default: the class's)
    names it in errors."""
    return cls(**known_fields(cls, values, name or cls.__name__))


@dataclasses.dataclass
class ModelConfig(Section):
  """The classification network (`sact_tf.models.resnet.ResNet`).

  Attributes:
    family: 'imagenet' (bottleneck ResNet) or 'cifar'.
    units: units per block (4 ints for ImageNet, 3 for CIFAR).
    model_type: 'resnet', 'act' or 'sact'.
    num_classes: model outputs (the dataset's, with its label offset).
    base_channels: width of the first block (64 ImageNet, 16 CIFAR).
    eps: halting threshold 1 - eps.
    halting_bias_init: initial bias of the halting heads.
  """

  family: str = 'imagenet'
  units: List[int] = dataclasses.field(default_factory=lambda: [3, 4, 23, 3])
  model_type: str = 'sact'
  num_classes: int = 1001
  base_channels: int = 64
  eps: float = 0.01
  halting_bias_init: float = -3.0

  def validate(self):
    if self.family not in ('imagenet', 'cifar'):
      raise ValueError(f"family must be 'imagenet' or 'cifar', got "
                       f'{self.family!r}.')
    self.units = (architectures.imagenet_units(units=self.units)
                  if self.family == 'imagenet' else
                  architectures.cifar_units(list(self.units)))
    architectures.validate_model_type(self.model_type)
    halting.validate_eps(self.eps)
    check_finite('halting_bias_init', self.halting_bias_init)
    for name in ('num_classes', 'base_channels'):
      check_positive_int(name, getattr(self, name))


@dataclasses.dataclass
class LossConfig(Section):
  """What training adds to the task loss (the detector's section).

  Attributes:
    tau: ponder cost weight.
    weight_decay: Keras L2 factor on the conv kernels.
  """

  tau: float = 0.005
  weight_decay: float = 0.0

  def validate(self):
    losses.validate_tau(self.tau)
    check_finite('weight_decay', self.weight_decay)
    check_non_negative('weight_decay', self.weight_decay)


@dataclasses.dataclass
class ClassificationLossConfig(LossConfig):
  """`LossConfig` with the classifier's label smoothing.

  Attributes:
    label_smoothing: label smoothing of the cross-entropy.
  """

  weight_decay: float = 5e-5
  label_smoothing: float = 0.1

  def validate(self):
    super().validate()
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got '
                       f'{self.label_smoothing}.')


@dataclasses.dataclass
class OptimizerConfig(Section):
  """Momentum SGD with a step schedule (classification's defaults).

  Attributes:
    train_steps: total training steps.
    learning_rate: the initial learning rate.
    lr_boundaries: steps at which the rate is multiplied by lr_decay.
    lr_decay: factor applied at each boundary.
    momentum: SGD momentum.
  """

  # 90 ImageNet epochs at batch 256 with 0.05 per 32 images; the binaries
  # derive these (and the step schedule) from their flags.
  train_steps: int = 450_411
  learning_rate: float = 0.4
  lr_boundaries: List[int] = dataclasses.field(default_factory=list)
  lr_decay: float = 0.1
  momentum: float = 0.9

  def validate(self):
    check_non_negative('train_steps', self.train_steps)
    check_learning_rate(self.learning_rate, self.lr_boundaries)
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f'momentum must be in [0, 1), got {self.momentum}.')

  def learning_rates(self):
    """The rate of each piece of the step schedule: learning_rate,
    multiplied by lr_decay at each of the lr_boundaries."""
    return [self.learning_rate * self.lr_decay**i
            for i in range(len(self.lr_boundaries) + 1)]

  def learning_rate_at(self, step):
    """The learning rate of the step schedule at `step`."""
    index = sum(1 for b in self.lr_boundaries if step >= b)
    return self.learning_rates()[index]


@dataclasses.dataclass
class DataConfig(Section):
  """Where the data comes from (the fields both tasks have).

  Attributes:
    dataset, data_dir, download: the TFDS dataset, where it lives, and
      whether TFDS may download it.
    eval_examples: evaluate on the first N examples only (0: all).
  """

  dataset: str = ''
  data_dir: Optional[str] = None
  download: bool = True
  eval_examples: int = 0

  def validate(self):
    check_non_negative('eval_examples', self.eval_examples, ' (0: all)')


@dataclasses.dataclass
class ClassificationDataConfig(DataConfig):
  """`DataConfig` with the classifiers' preprocessing, sizes and batches.

  Attributes:
    preprocessing: 'inception' or 'cifar'.
    image_size: training resolution.
    eval_image_sizes: resolutions to evaluate at.
    batch_size: global training batch size.
    eval_batch_size: evaluation batch size.
    eval_split: the split to evaluate on (None: the dataset's evaluation
      split, e.g. ImageNet's 'validation'); it names the evaluation records
      (eval_<split>_<size>px.json).
  """

  dataset: str = 'imagenet2012'
  preprocessing: str = 'inception'
  image_size: int = 224
  eval_image_sizes: List[int] = dataclasses.field(
      default_factory=lambda: [224])
  batch_size: int = 256
  eval_batch_size: int = 100
  eval_split: Optional[str] = None

  def validate(self):
    super().validate()
    datasets.get_spec(self.dataset)
    if self.preprocessing not in pipelines.STYLES:
      raise ValueError(f'preprocessing must be one of {pipelines.STYLES}, '
                       f'got {self.preprocessing!r}.')
    for name in ('image_size', 'batch_size', 'eval_batch_size'):
      check_positive_int(name, getattr(self, name))
    if not self.eval_image_sizes:
      raise ValueError('eval_image_sizes must list at least one size.')
    for size in self.eval_image_sizes:
      check_positive_int('eval_image_sizes', size)
    if self.eval_split is not None and not (
        isinstance(self.eval_split, str) and self.eval_split.strip()):
      raise ValueError(f'eval_split must be a split name or None, got '
                       f'{self.eval_split!r}.')


@dataclasses.dataclass
class RunConfig(Section):
  """Where and how often a run writes (the fields both tasks have).

  Attributes:
    model_dir: checkpoints, summaries, config and evaluation results.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: how many checkpoints to keep.
    summary_every: steps between training summaries and log lines.
    seed: seed of the initial weights, data order and augmentation.
    precision: the model's Keras dtype policy, 'float32', 'mixed_bfloat16'
      or 'mixed_float16' (`sact_tf.precision`; float16 training scales the
      loss).
    sync_batch_norm: batch norm statistics over all replicas' examples
      (Keras' synchronised batch norm) instead of each replica's own; plain
      ResNets only (ACT/SACT units run inside the halting loop's control
      flow, a `tf.cond` per unit in training, where a replica cannot
      synchronise).
    steps_per_loop: training steps per `tf.function` call; the host
      synchronises (NaN check, metrics, summaries) once per loop.
    replicas: replicas the run trained with (recorded by training).
    history: the settings changed when the run was resumed, oldest first:
      [{'step', 'time', 'changed': {'section.field': [old, new]}}] (see
      `resume_config`).
  """

  model_dir: str = ''
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  summary_every: int = 100
  seed: int = 0
  precision: str = 'float32'
  sync_batch_norm: bool = False
  steps_per_loop: int = 1
  replicas: int = 1
  history: List[dict] = dataclasses.field(default_factory=list)

  def validate(self):
    for name in ('checkpoint_every', 'keep_checkpoints', 'summary_every',
                 'steps_per_loop', 'replicas'):
      check_positive_int(name, getattr(self, name))
    precision_lib.validate(self.precision)


@dataclasses.dataclass
class ClassificationRunConfig(RunConfig):
  """`RunConfig` with the initialisation of a new classification run.

  Attributes:
    init_checkpoint: checkpoint (directory or prefix) to initialise a new
      run from, or None.
    init_mode: 'finetune' (every weight except the halting heads) or
      'baseline' (the first units of each block), with init_checkpoint.
    init_model: the model fields (MODEL_FIELDS) of init_checkpoint's model.
  """

  init_checkpoint: Optional[str] = None
  init_mode: Optional[str] = None
  init_model: Optional[dict] = None

  def validate(self):
    super().validate()
    if (self.init_mode is None) != (self.init_checkpoint is None):
      raise ValueError('init_checkpoint and init_mode go together: give both '
                       'or neither.')
    if self.init_mode not in (None, 'finetune', 'baseline'):
      raise ValueError(f"init_mode must be 'finetune' or 'baseline', got "
                       f'{self.init_mode!r}.')


class Config:
  """Base of a task's config: a dataclass of the five `SECTIONS`.

  Sections may be given as dicts of their fields. `NOT_SETTABLE` lists the
  fields (`section.field`) that `--set` leaves alone: what other flags or
  the run itself write.
  """

  NOT_SETTABLE = ('run.history',)

  def build_model(self, image_size=None, **overrides):
    """The task's Keras model of this config, built (variables created).

    The one way every tool builds a run's model: training, evaluation,
    export and the imports. `image_size` and `overrides` (model arguments,
    e.g. `sparse=False`) where the task has them.
    """
    raise NotImplementedError

  def __post_init__(self):
    for name, section_class in self.section_classes().items():
      value = getattr(self, name)
      if isinstance(value, dict):
        setattr(self, name, section_class.from_dict(value, name))
      elif not isinstance(value, section_class):
        raise ValueError(f'{name} must be a {section_class.__name__} (or a '
                         f'dict of its fields), got {value!r}.')
    self.validate()

  def validate(self):
    """Raises ValueError naming the first bad field and how to fix it."""
    for name in SECTIONS:
      getattr(self, name).validate()
    if self.run.sync_batch_norm and self.model.model_type != 'resnet':
      # Keras' synchronised batch norm all-reduces in each call, which
      # MirroredStrategy cannot do inside the halting loop's control flow
      # (a tf.cond per unit in training).
      raise ValueError(
          f'run.sync_batch_norm (--sync_batch_norm) needs a plain ResNet '
          f'(model_type resnet), not {self.model.model_type}: the units of '
          'ACT/SACT blocks run inside control flow (a tf.cond per unit), '
          'where a replica cannot synchronise. Train the plain network '
          'with it and fine-tune ACT/SACT without (--finetune_from).')

  @classmethod
  def section_classes(cls):
    """{section name: its dataclass}."""
    return {f.name: f.default_factory for f in dataclasses.fields(cls)}

  def to_dict(self):
    """The nested dict written as config.json."""
    return {name: getattr(self, name).to_dict() for name in SECTIONS}

  @classmethod
  def from_dict(cls, values):
    """The config of a nested dict (missing fields take their defaults).

    Raises:
      ValueError: an unknown section or field (named), or a bad value.
    """
    if not isinstance(values, dict):
      raise ValueError(f'A config must be a JSON object, got {values!r}.')
    _refuse_unknown(values, SECTIONS, 'section', repr, 'the sections')
    return cls(**{name: section_class.from_dict(values.get(name, {}), name)
                  for name, section_class in cls.section_classes().items()})

  @classmethod
  def from_saved(cls, values):
    """The config of a config.json's contents, in the current layout or in
    an earlier one (`convert_layout`)."""
    return cls.from_dict(cls.convert_layout(values))

  @classmethod
  def convert_layout(cls, values):
    """`values` in the nested layout.

    Earlier versions wrote classification configs flat ({'tau': ...,
    'learning_rate': ...}) and detection configs as a `model` dict (which
    also held tau and weight_decay) with the run's fields beside it. Each
    field goes to the section that has it now, and the history's field
    names become `section.field`. A dict holding any of the sections other
    than `model` is taken to be nested already and returned as it is.

    Raises:
      ValueError: a field that no section has, named.
    """
    if not isinstance(values, dict) or set(values) & set(SECTIONS[1:]):
      return values
    flat = dict(values)
    old_model = flat.pop('model', None)
    if old_model is not None:
      if not isinstance(old_model, dict):
        raise ValueError(f'model must be a JSON object of fields, got '
                         f'{old_model!r}.')
      flat.update(old_model)
    nested = {name: {} for name in SECTIONS}
    for name, value in flat.items():
      key = cls.key_of(name)
      if key is None:
        raise ValueError(
            f'Unknown config field {name!r} (in the flat layout of earlier '
            'versions): was it written by a newer sact_tf?')
      section, field = key.split('.')
      nested[section][field] = value
    history = nested['run'].get('history')
    if isinstance(history, list):
      nested['run']['history'] = [_renamed_entry(cls, e) for e in history]
    return nested

  @classmethod
  def key_of(cls, name):
    """The `section.field` key of the field called `name` (a bare name or
    the `model.`-prefixed one of older detection histories), or None."""
    name = name.rsplit('.', 1)[-1]
    for section, section_class in cls.section_classes().items():
      if name in {f.name for f in dataclasses.fields(section_class)}:
        return f'{section}.{name}'
    return None


def _renamed_entry(config_class, entry):
  """A history entry with its `changed` fields named `section.field`."""
  if not isinstance(entry, dict) or not isinstance(entry.get('changed'),
                                                   dict):
    return entry
  changed = {(config_class.key_of(name) or name): value
             for name, value in entry['changed'].items()}
  return dict(entry, changed=changed)


@dataclasses.dataclass
class ExperimentConfig(Config):
  """A classification run's settings (see the binaries' flags for their
  meaning), in the five sections (see the module doc)."""

  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: ClassificationLossConfig = dataclasses.field(
      default_factory=ClassificationLossConfig)
  optimizer: OptimizerConfig = dataclasses.field(
      default_factory=OptimizerConfig)
  data: ClassificationDataConfig = dataclasses.field(
      default_factory=ClassificationDataConfig)
  run: ClassificationRunConfig = dataclasses.field(
      default_factory=ClassificationRunConfig)

  # The initialisation comes from --finetune_from / --baseline_from, which
  # also read the source model's fields.
  NOT_SETTABLE = ('run.history', 'run.init_checkpoint', 'run.init_mode',
                  'run.init_model')

  def build_model(self, image_size=None, **overrides):
    """The config's `sact_tf.models.resnet.ResNet` (`model_kwargs` with
    `overrides`), built by a call on zeros of `image_size` (default: the
    training size). The model's dtype policy is `run.precision` unless
    `overrides` has `dtype`; with `run.sync_batch_norm` its batch norms
    are synchronised across replicas."""
    kwargs = dict(self.model_kwargs(), dtype=self.run.precision)
    kwargs.update(overrides)
    with common_layers.batch_norm_synchronized(self.run.sync_batch_norm):
      model = resnet.ResNet(**kwargs)
      size = image_size or self.data.image_size
      model(tf.zeros([1, size, size, 3]), training=False)
    return model

  def model_kwargs(self):
    """Keyword arguments of `sact_tf.models.resnet.ResNet`."""
    m = self.model
    return dict(family=m.family, units=list(m.units),
                model_type=m.model_type, num_classes=m.num_classes,
                base_channels=m.base_channels,
                halting_bias_init=m.halting_bias_init, eps=m.eps,
                tau=self.loss.tau, weight_decay=self.loss.weight_decay)

  def model_fields(self):
    """{field: value} of the model's `MODEL_FIELDS`."""
    return {name: getattr(self.model, name) for name in MODEL_FIELDS}


# Settings by name: `section.field` keys.


def split_key(config_class, key):
  """(section, field) of the key `section.field` of `config_class`.

  Raises:
    ValueError: not a key of `config_class`, with its sections or the
      section's fields.
  """
  section, dot, field = str(key).partition('.')
  classes = config_class.section_classes()
  if not dot or section not in classes:
    raise ValueError(f'Unknown setting {key!r}: settings are named '
                     f'section.field with a section of '
                     f'{", ".join(SECTIONS)}.')
  names = [f.name for f in dataclasses.fields(classes[section])]
  if field not in names:
    raise ValueError(f'Unknown setting {key!r}: section {section} has the '
                     f'fields {", ".join(names)}.')
  return section, field


def get(config, key):
  """The value of the field `section.field` of `config`."""
  section, field = split_key(type(config), key)
  return getattr(getattr(config, section), field)


def replace(config, values):
  """A new, validated config: `config` with the fields of `values`
  ({'section.field': value}) replaced.

  Raises:
    ValueError: an unknown key, or the result is not a valid config.
  """
  nested = config.to_dict()
  for key, value in values.items():
    section, field = split_key(type(config), key)
    nested[section][field] = value
  return type(config).from_dict(nested)


def from_values(config_class, values):
  """A `config_class` of {'section.field': value}; other fields take their
  defaults."""
  nested = {}
  for key, value in values.items():
    section, field = split_key(config_class, key)
    nested.setdefault(section, {})[field] = value
  return config_class.from_dict(nested)


def flatten(config):
  """{'section.field': value} of every field of `config` (lists for
  tuples)."""
  return {f'{section}.{field}': value
          for section, fields in config.to_dict().items()
          for field, value in fields.items()}


# `--set=section.field=value`: every field from the command line.


_TRUE = ('true', 'yes', '1')
_FALSE = ('false', 'no', '0')


def _parse_bool(text):
  if text.strip().lower() in _TRUE:
    return True
  if text.strip().lower() in _FALSE:
    return False
  raise ValueError(text)


_SCALARS = {
    bool: ('bool', 'true or false', _parse_bool),
    int: ('int', 'an int', lambda text: int(text.strip())),
    float: ('float', 'a number', lambda text: float(text.strip())),
    str: ('str', 'a string', lambda text: text),
}


def _split_list(text):
  return [p.strip() for p in text.split(',') if p.strip()]


def field_type(hint):
  """(short name, description, parse) of a field's type hint, or None
  when the type cannot be given as text (dicts).

  Scalars (bool, int, float, str), lists and tuples of them
  (comma-separated) and Optional ones ('none' for None) can.
  """
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin is typing.Union and type(None) in args:
    inner = [a for a in args if a is not type(None)]
    parsed = field_type(inner[0]) if len(inner) == 1 else None
    if parsed is None:
      return None
    short, description, parse = parsed
    return (f'{short} or none', f'{description} or none',
            lambda text: (None if text.strip().lower() in ('none', 'null')
                          else parse(text)))
  if origin in (list, tuple) and args and args[0] in _SCALARS:
    short, _, parse_item = _SCALARS[args[0]]
    return (f'{short}s', f'comma-separated {short}s',
            lambda text: [parse_item(p) for p in _split_list(text)])
  if hint in _SCALARS:
    return _SCALARS[hint]
  return None


def settable_fields(config_class):
  """{'section.field': (short type, description, parse)} of the fields that
  `--set` can set, in section order."""
  fields = {}
  for section, section_class in config_class.section_classes().items():
    hints = typing.get_type_hints(section_class)
    for f in dataclasses.fields(section_class):
      key = f'{section}.{f.name}'
      parsed = field_type(hints[f.name])
      if parsed is not None and key not in config_class.NOT_SETTABLE:
        fields[key] = parsed
  return fields


def section_listing(config_class, section):
  """'field (type), ...' of the settable fields of `section`."""
  return ', '.join(f'{key.split(".", 1)[1]} ({short})'
                   for key, (short, _, _) in settable_fields(
                       config_class).items()
                   if key.split('.', 1)[0] == section)


def settings_help(config_class):
  """The help text of `--set` for `config_class`: the syntax and every
  settable key with its type."""
  sections = ''.join(
      f'\n{section}: {section_listing(config_class, section)}.'
      for section in SECTIONS)
  return ('Sets a config field, repeatable: --set=section.field=value, e.g. '
          '--set=model.eps=0.02 --set=optimizer.momentum=0.95. Values are '
          'parsed by the field\'s type: lists comma-separated, bools '
          'true/false, "none" leaves an optional field empty. A field with a '
          'flag of its own (--tau is loss.tau, ...) takes that flag or '
          f'--set, not both. The keys (config.json\'s fields):{sections}\n')


def parse_setting(config_class, entry):
  """(key, value) of one `--set` entry, 'section.field=value', the value
  parsed by the field's type.

  Raises:
    ValueError: not of the form key=value, an unknown key or one `--set`
      cannot set, or a value of the wrong type; the message names the key,
      the type expected and the keys of the section.
  """
  key, equals, text = str(entry).partition('=')
  key = key.strip()
  if not equals:
    raise ValueError(f'--set={entry}: give section.field=value, e.g. '
                     '--set=model.eps=0.02.')
  section, dot, field = key.partition('.')
  classes = config_class.section_classes()
  if not dot or section not in classes:
    raise ValueError(f'--set={entry}: unknown key {key!r}: keys are '
                     f'section.field with a section of {", ".join(SECTIONS)} '
                     '(--helpfull lists the keys under --set).')
  fields = settable_fields(config_class)
  listing = (f'The keys of section {section}: '
             f'{section_listing(config_class, section)}.')
  if key not in fields:
    reason = ('cannot be set with --set' if key in config_class.NOT_SETTABLE
              else 'is not a key')
    raise ValueError(f'--set={entry}: {key} {reason}. {listing}')
  short, description, parse = fields[key]
  try:
    value = parse(text)
  except ValueError:
    raise ValueError(f'--set={entry}: {key} takes {description} ({short}), '
                     f'got {text!r}. {listing}') from None
  return key, value


def parse_settings(config_class, entries, flagged=None):
  """{key: value} of the `--set` entries (see `parse_setting`).

  Args:
    config_class: the config the keys belong to.
    entries: 'section.field=value' strings.
    flagged: {key: flag} of the fields whose own flags were given on the
      command line, e.g. {'loss.tau': '--tau'}.

  Raises:
    ValueError: a bad entry, a key given twice, or a key also set by its
      own flag.
  """
  settings = {}
  for entry in entries or ():
    key, value = parse_setting(config_class, entry)
    if key in settings:
      raise ValueError(f'--set={entry}: {key} is set twice; give it once.')
    if flagged and key in flagged:
      raise ValueError(f'--set={entry}: {key} is also set by '
                       f'{flagged[key]}; give one of them.')
    settings[key] = value
  return settings


# Reading and writing.


def write_json(path, value):
  """Writes `value` as JSON to `path` atomically (temp file + rename).

  A reader sees the old file or the new one, never a partial one, even if
  the process dies mid-write. `path` may be on any `tf.io.gfile`
  filesystem (`gs://...`; see `sact_tf.fileio` for those that cannot
  rename).
  """
  text = json.dumps(value, indent=2, sort_keys=True) + '\n'
  fileio.write_bytes(path, text.encode('utf-8'))


def read_json(path):
  """The JSON value in file `path` (local or any `tf.io.gfile` path).

  Raises:
    FileNotFoundError: there is no such file.
    ValueError: it is not valid JSON (the message names the file).
  """
  try:
    return json.loads(fileio.read_text(path))
  except FileNotFoundError:
    raise FileNotFoundError(f'No such file: {path}') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e


def save(config):
  """Writes `config` to `<model_dir>/config.json` (atomically, nested)."""
  write_json(os.path.join(config.run.model_dir, CONFIG_FILENAME),
             config.to_dict())


def load(model_dir, config_class=ExperimentConfig):
  """The config saved in `model_dir` (an instance of `config_class`, e.g.
  `sact_tf.detection.config.DetectionConfig`), or None if there is none.

  A config.json in an earlier layout is converted (`Config.convert_layout`).

  Raises:
    ValueError: the file is not a valid config (the message names the file
      and the field).
  """
  path = os.path.join(model_dir, CONFIG_FILENAME)
  if not fileio.exists(path):
    return None
  try:
    return config_class.from_saved(read_json(path))
  except ValueError as e:
    if path in str(e):
      raise
    raise ValueError(f'{path}: {e}') from e


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
    check_same_fields(saved.model, config.model, MODEL_FIELDS, where)


# Fields that may differ when a run is resumed: they change where data is
# read, what is evaluated and how often the run reports, not what it trains.
FREE_ON_RESUME = ('data.data_dir', 'data.download', 'data.eval_batch_size',
                  'data.eval_examples', 'data.eval_image_sizes',
                  'data.eval_split',
                  'run.summary_images', 'run.model_dir', 'run.summary_every',
                  'run.checkpoint_every', 'run.keep_checkpoints',
                  'run.steps_per_loop', 'run.history')


# Fields that may change on resume without `allow_changed`, recorded in the
# history: a longer (or shorter) run is what restarting with a new
# --train_steps asks for, and the learning-rate drops stay where they were.
RECORDED_ON_RESUME = ('optimizer.train_steps', 'run.replicas')

# Fields that say how a new run is initialised.
INIT_FIELDS = ('run.init_checkpoint', 'run.init_mode', 'run.init_model',
               'run.finetune_from')


def changed_settings(saved, config, free=FREE_ON_RESUME):
  """{'section.field': [saved value, new value]} of the training settings
  in which `config` differs from `saved` (fields of `free` excepted)."""
  old, new = flatten(saved), flatten(config)
  return {key: [old.get(key), new.get(key)]
          for key in sorted(set(old) | set(new))
          if key not in free and old.get(key) != new.get(key)}


def _has(config, key):
  section, _, field = key.partition('.')
  return hasattr(getattr(config, section, None), field)


def resume_config(config, saved, step, allow_changed=False):
  """The config a resumed run goes on with, its changes recorded.

  A run resumed with other training settings than `saved` (the run's
  config.json) is refused unless `allow_changed`; then each change goes to
  the new config's `run.history` with the step it applies from, and a
  learning rate that would jump up at `step` is logged as a warning. Fields
  of `FREE_ON_RESUME` may change freely; those of `RECORDED_ON_RESUME`
  (`optimizer.train_steps`) without `allow_changed`, but they are recorded.
  The caller checks the model first (`check_same_model`).

  Args:
    config: the settings given now.
    saved: the run's saved config, or None for a new run.
    step: the step training resumes from.
    allow_changed: accept changed training settings.

  Returns:
    `config` with `saved`'s history (and the new entry) in `run.history`.

  Raises:
    ValueError: settings changed and `allow_changed` is False.
  """
  if saved is None:
    return config
  if step > 0:
    # How a new run is initialised does not apply to a resumed one: keep
    # the record of how this one was.
    for key in INIT_FIELDS:
      if not _has(config, key):
        continue
      old, new = get(saved, key), get(config, key)
      if new != old:
        logging.info('Resuming at step %d: %s=%r does not apply (the run '
                     'was initialised with %r).', step, key, new, old)
        setattr(config.run, key.split('.', 1)[1], old)
  changed = changed_settings(saved, config)
  config.run.history = list(saved.run.history)
  if not changed:
    return config
  listing = '; '.join(f'{k}: {old!r} -> {new!r}'
                      for k, (old, new) in changed.items())
  if not allow_changed and set(changed) - set(RECORDED_ON_RESUME):
    raise ValueError(
        f'{config.run.model_dir} holds a run trained with other settings '
        f'({listing}). Resume it with the settings in its config.json, '
        'pass --allow_changed_flags to go on with the new ones from step '
        f'{step} (recorded in config.json\'s history), or use a new '
        '--model_dir.')
  old_rate = saved.optimizer.learning_rate_at(step)
  new_rate = config.optimizer.learning_rate_at(step)
  if new_rate > old_rate:
    logging.warning('The learning rate at step %d goes up from %.3g (the '
                    'saved schedule) to %.3g (the new settings).', step,
                    old_rate, new_rate)
  logging.warning('Resuming %s at step %d with changed settings: %s.',
                  config.run.model_dir, step, listing)
  config.run.history.append({
      'step': int(step),
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'changed': changed,
  })
  return config


# Fields that `--mode=eval` takes from the run's config.json unless they are
# given: what the run trained, on which data, at which resolution.
EVAL_FROM_SAVED = ('model.units', 'model.model_type', 'model.base_channels',
                   'model.num_classes', 'loss.tau', 'model.eps',
                   'model.halting_bias_init', 'loss.weight_decay',
                   'data.dataset', 'data.data_dir', 'data.preprocessing',
                   'data.image_size', 'data.eval_image_sizes')
# Fields a resumed training run keeps from its config.json unless given:
# derived learning-rate drops must not move when --train_steps grows.
RESUME_FROM_SAVED = ('optimizer.lr_boundaries',)


def resolve(config, saved, mode, given=()):
  """The config a command runs with: the settings given, completed from the
  run's saved config.

  Args:
    config: the config built from the command line (defaults included).
    saved: the run's saved config (`load(model_dir)`), or None.
    mode: 'eval' takes the fields of `EVAL_FROM_SAVED` from `saved`, so that
      `--mode=eval --model_dir=RUN` evaluates what RUN trained without its
      flags; 'train' / 'train_and_eval' take those of `RESUME_FROM_SAVED`
      (learning-rate drops past the new `optimizer.train_steps` are
      dropped).
    given: the fields (`section.field`) set explicitly (on the command
      line); they win.

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
  if saved.model.family != config.model.family:
    binary = 'imagenet' if saved.model.family == 'imagenet' else 'cifar10'
    raise ValueError(
        f'{config.run.model_dir} holds a model of family '
        f'{saved.model.family!r}, not {config.model.family!r}: use '
        f'experiments.{binary} for it.')
  keys = EVAL_FROM_SAVED if mode == 'eval' else RESUME_FROM_SAVED
  taken = {}
  for key in keys:
    if key in given:
      continue
    value = get(saved, key)
    if key == 'optimizer.lr_boundaries':
      value = [b for b in value if b < config.optimizer.train_steps]
    if value != get(config, key):
      taken[key] = value
  if not taken:
    return config
  if mode != 'eval':
    logging.info('Keeping %s of the run in %s (give the flags to change '
                 'them).', ', '.join(f'{k}={v}' for k, v in taken.items()),
                 config.run.model_dir)
  return replace(config, taken)
