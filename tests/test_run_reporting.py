"""What a training run leaves for TensorBoard besides its summaries: the
HParams table's hyperparameters and final metrics, profiles of chosen
steps, and its progress lines."""

import dataclasses
import glob
import logging
import os
from typing import List, Optional

from absl import flags
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments import cifar10
from experiments import coco
from sact_tf import progress
from sact_tf import train
from sact_tf.detection import config as detection_config
from sact_tf.train import hparams
from sact_tf.train import profiling
from tests import helpers


@dataclasses.dataclass
class _Flat:
  tau: float = 0.01
  units: List[int] = dataclasses.field(default_factory=lambda: [1, 2])
  data_dir: Optional[str] = None
  model_dir: str = '/runs/a'
  sparse: bool = True


@dataclasses.dataclass
class _Nested:
  loss: _Flat = dataclasses.field(default_factory=_Flat)
  seed: int = 3


def test_flatten_handles_flat_and_nested_configs():
  assert hparams.flatten(_Flat()) == {'tau': 0.01, 'units': '1,2',
                                      'sparse': True}
  assert hparams.flatten(_Nested()) == {
      'loss.tau': 0.01, 'loss.units': '1,2', 'loss.sparse': True, 'seed': 3}
  values = hparams.flatten(helpers.tiny_config('/runs/b'))
  assert values['loss.tau'] == 0.01 and values['model.units'] == '1,2,1'
  assert not any(k.endswith(('model_dir', 'history')) for k in values)
  detection = hparams.flatten(detection_config.DetectionConfig())
  assert 'loss.tau' in detection and 'model.units' in detection
  assert all(isinstance(v, (bool, int, float, str))
             for v in detection.values())


def _events(log_dir):
  for path in sorted(glob.glob(os.path.join(log_dir, 'events.out.*'))):
    yield from tf.compat.v1.train.summary_iterator(path)


def _hparams_and_scalars(log_dir):
  """(the last session's hyperparameters, {tag: last scalar value})."""
  session, scalars = None, {}
  for event in _events(log_dir):
    for value in event.summary.value:
      if value.tag == hparams_metadata.SESSION_START_INFO_TAG:
        data = plugin_data_pb2.HParamsPluginData.FromString(
            value.metadata.plugin_data.content)
        session = {k: getattr(v, v.WhichOneof('kind'))
                   for k, v in data.session_start_info.hparams.items()}
      elif value.metadata.plugin_data.plugin_name == 'scalars':
        scalars[value.tag] = float(tf.make_ndarray(value.tensor))
  return session, scalars


@pytest.fixture(name='absl_lines')
def _absl_lines(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  return lambda: [r.getMessage() for r in caplog.records if r.name == 'absl']


@pytest.mark.slow
def test_a_run_reports_hparams_metrics_profile_and_progress(tmp_path,
                                                            absl_lines):
  config = helpers.tiny_config(
      tmp_path, model=dict(model_type='resnet'),
      optimizer=dict(train_steps=3, lr_boundaries=[]))
  before = progress.settings()
  progress.configure(mode='log', log_every=0)
  try:
    with tfds.testing.mock_data(num_examples=7):
      result = train.train(config, profile_steps='2,3')
      summary = train.evaluate(config)
  finally:
    progress.configure(**before)
  session, scalars = _hparams_and_scalars(hparams.run_dir(str(tmp_path)))
  assert session['loss.tau'] == pytest.approx(0.01)
  assert session['model.units'] == '1,2,1'
  assert session['model.model_type'] == 'resnet'
  assert session['optimizer.train_steps'] == 3
  assert scalars['train/loss'] == pytest.approx(result.metrics['loss'])
  assert scalars['eval_test_32px/top1'] == pytest.approx(summary['top1'])
  assert scalars['eval_test_32px/flops_mean'] == pytest.approx(
      summary['flops_mean'])
  # Only final metrics: the HParams table's columns.
  assert all(tag.startswith(('train/', 'eval_')) for tag in scalars)
  profiles = glob.glob(str(tmp_path / 'train' / 'plugins' / 'profile' / '*'
                           / '*.xplane.pb'))
  assert len(profiles) == 1
  lines = absl_lines()
  assert any(l.startswith('Training: 1/3 steps (33.3 %)') for l in lines)
  assert any(l.startswith('Training: 2/3 steps (66.7 %)') and 'ETA' in l
             for l in lines)
  assert any(l.startswith('Evaluation (test, 32px): 3/7 examples') and 'ETA'
             in l for l in lines), lines


@pytest.mark.parametrize('value', ['0,2', '3,2', '1', '1,2,3', 'a,b',
                                   '1.5,2'])
def test_bad_profile_steps_are_refused(value):
  with pytest.raises(ValueError, match='--profile_steps must be two'):
    profiling.parse_steps(value)


def test_profile_steps_are_checked_when_flags_are_parsed():
  assert profiling.parse_steps(' 10, 15 ') == (10, 15)
  assert profiling.parse_steps(None) is None
  for flag_values, program in ((cifar10.FLAGS, 'cifar10'),
                               (coco.FLAGS, 'coco')):
    try:
      with pytest.raises(flags.IllegalFlagValueError,
                         match='FIRST,LAST with 1 <= FIRST <= LAST'):
        flag_values([program, '--profile_steps=5,2'])
      flag_values([program, '--profile_steps=2,5'])
      assert flag_values.profile_steps == '2,5'
    finally:
      flag_values.unparse_flags()


def test_profiling_steps_that_do_not_run_warns(absl_lines):
  profiler = profiling.StepProfiler((1, 2), '/unused', start=5, end=10)
  assert profiler.steps is None
  assert any('nothing is profiled' in line for line in absl_lines())
