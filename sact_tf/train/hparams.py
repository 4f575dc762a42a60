"""A run's hyperparameters and final metrics for TensorBoard's HParams table.

Everything goes to one TensorBoard run, `<model_dir>/hparams`:

* `write_hparams(config)` records the config's fields (`flatten`: nested
  dataclasses as `section.field`) as the run's hyperparameters; training
  calls it when it starts, so that a run still training (or one that
  stopped) is in the table too. A resumed run records them again, and
  TensorBoard shows the newest.
* `write_metrics(model_dir, group, values, step)` adds final metrics as
  scalars `<group>/<name>`: training writes its last summary window's
  (`train/loss`, `train/accuracy`, ...), evaluation its record's
  (`eval_test_32px/top1`, `eval_test/AP`, ...).

The HParams dashboard takes a session's metrics from the scalars of its
own run, so only these few scalars become its columns (not every training
summary). Compare a sweep with `tensorboard --logdir <folder of the runs>`.
"""

import dataclasses
import math
import numbers
import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

RUN_NAME = 'hparams'
# Config fields that are no hyperparameters: where the run is, and the
# record of its resumes.
SKIPPED_FIELDS = ('model_dir', 'history')
# The training metrics written at the end of training (those present).
TRAIN_METRICS = ('loss', 'cross_entropy', 'accuracy', 'ponder_cost', 'flops')
# The evaluation metrics written after an evaluation (those present).
EVAL_METRICS = ('top1', 'top5', 'loss', 'cross_entropy', 'flops_mean',
                'flops_ratio', 'ponder_cost_mean', 'AP', 'AP50', 'AP75',
                'flops_ratio_mean', 'flops_resnet101_ratio_mean')


def _value(value):
  """A value HParams accepts (bool, int, float, str), or None to skip."""
  if value is None:
    return None
  if isinstance(value, (bool, str)):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (list, tuple)):
    return ','.join(str(v) for v in value)
  return str(value)


def flatten(config):
  """{name: value} of a dataclass config's fields, for HParams.

  Nested dataclasses (and dict fields) give dotted names
  (`model.tau`); lists become comma-separated strings (`units` '3,4,6,3');
  None values and `SKIPPED_FIELDS` are left out.
  """
  values = {}

  def visit(prefix, fields):
    for key, value in fields.items():
      if key in SKIPPED_FIELDS:
        continue
      if isinstance(value, dict):
        visit(f'{prefix}{key}.', value)
        continue
      value = _value(value)
      if value is not None:
        values[f'{prefix}{key}'] = value

  visit('', dataclasses.asdict(config))
  return values


def run_dir(model_dir):
  """The TensorBoard run of a model directory's hyperparameters."""
  return os.path.join(model_dir, RUN_NAME)


def write_hparams(config, model_dir=None):
  """Writes `flatten(config)` as the hyperparameters of the run in
  `model_dir` (default: `config.model_dir`). Returns them."""
  values = flatten(config)
  model_dir = model_dir or _model_dir(config)
  writer = tf.summary.create_file_writer(run_dir(model_dir))
  with writer.as_default():
    hp.hparams(values)
  writer.flush()
  writer.close()
  return values


def write_metrics(model_dir, group, values, step, names=None):
  """Writes the finite numbers of `values` named in `names` (default:
  `TRAIN_METRICS` + `EVAL_METRICS`) as scalars `<group>/<name>` of the
  hyperparameters' run at `step`. Returns {tag: value} written."""
  names = names or TRAIN_METRICS + EVAL_METRICS
  scalars = {}
  for name in names:
    value = values.get(name)
    if (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value)):
      scalars[f'{group}/{name}'] = float(value)
  if not scalars:
    return scalars
  writer = tf.summary.create_file_writer(run_dir(model_dir))
  with writer.as_default(step=int(step)):
    for tag, value in scalars.items():
      tf.summary.scalar(tag, value)
  writer.flush()
  writer.close()
  return scalars


def _model_dir(config):
  """`model_dir` of a flat config or of a nested one (any section)."""
  if getattr(config, 'model_dir', None):
    return config.model_dir
  for field in dataclasses.fields(config):
    section = getattr(config, field.name)
    if dataclasses.is_dataclass(section) and getattr(section, 'model_dir',
                                                     None):
      return section.model_dir
  raise ValueError('The config has no model_dir.')
