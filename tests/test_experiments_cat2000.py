import json
import math
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
import pytest

from experiments import cat2000
from sact_tf import data
from sact_tf import saliency
from sact_tf.data import clutter_digits
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import ExperimentConfig
from tests import test_data_cat2000

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ('center_baseline', 'ponder', 'ponder_center')


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  cat2000.FLAGS.unparse_flags()


def _make_run(model_dir, model_type):
  """A tiny untrained ImageNet-family run: config.json + checkpoint."""
  config = ExperimentConfig(
      model=dict(family='imagenet', units=[1, 1, 1, 1], base_channels=4,
                 num_classes=10, model_type=model_type),
      data=dict(preprocessing='inception', image_size=48,
                eval_image_sizes=[48]),
      run=dict(model_dir=str(model_dir)))
  model = config.build_model(image_size=32)
  checkpointing.write_model_checkpoint(model, str(model_dir))
  config_lib.save(config)
  return str(model_dir)


@pytest.fixture(name='sact_run', scope='module')
def _sact_run(tmp_path_factory):
  return _make_run(tmp_path_factory.mktemp('sact_run'), 'sact')


@pytest.fixture(name='clutter_dir', scope='module')
def _clutter_dir(tmp_path_factory):
  # The folder the other modules prepare the dataset in (once a session).
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  data.prepare('clutter_digits', data_dir)
  return data_dir


def _check_results(path, categories):
  summary = json.loads(open(path, encoding='utf-8').read())
  assert set(summary['results']) == set(ROWS)
  for row in ROWS:
    result = summary['results'][row]
    assert 0.0 <= result['auc'] <= 1.0 and math.isfinite(result['auc'])
    assert sorted(result['per_category']) == sorted(categories)
    assert all(0.0 <= v <= 1.0 for v in result['per_category'].values())
  assert set(summary['results']['ponder_center']['params']) == {
      'blur', 'center_weight', 'center_sigma'}
  return summary


def _check_table(out):
  for label in ('Centre baseline', 'SACT ponder map',
                'SACT + centre baseline', 'AUC-Judd per category'):
    assert label in out


def test_parse_image_size():
  assert saliency.parse_image_size('320x180') == (320, 180)
  assert saliency.parse_image_size('640X360') == (640, 360)
  assert saliency.parse_image_size('64') == (64, 64)
  for bad in ('320by180', '0x180', '320x', '-3x4', ''):
    with pytest.raises(ValueError, match='WIDTHxHEIGHT'):
      saliency.parse_image_size(bad)


def test_bad_image_size_is_a_flag_error(sact_run):
  with pytest.raises(flags.IllegalFlagValueError, match='WIDTHxHEIGHT'):
    cat2000.main(['cat2000', f'--model_dir={sact_run}',
                  '--image_size=320by180'])


def test_sparse_fixations_round_trip():
  dense = np.random.default_rng(0).uniform(size=(9, 16, 1)) > 0.8
  sparse = saliency.SparseFixations(dense * 255)
  assert sparse.shape == (9, 16) and sparse.num_fixations == dense.sum()
  np.testing.assert_array_equal(np.asarray(sparse, np.float64),
                                dense[..., 0].astype(np.float64))


def test_digit_fixations_are_the_digit_strokes():
  rng = np.random.default_rng(0)
  digit = np.zeros((24, 24), np.float32)
  digit[6:18, 8:16] = 1.0
  image, bbox = clutter_digits.render(
      digit, np.ones((3, 24, 24), np.float32), rng)
  fixations = saliency.digit_fixations(image, bbox)
  assert fixations.sum() == 12 * 8
  ymin, xmin, ymax, xmax = (bbox * 64).round().astype(int)
  assert fixations[ymin:ymax, xmin:xmax].all()


def test_cat2000_end_to_end(tmp_path, sact_run, capsys):
  manual = str(tmp_path / 'manual')
  test_data_cat2000.write_fake_train_set(manual)
  output = str(tmp_path / 'out' / 'saliency.json')
  summary = cat2000.main(['cat2000', f'--model_dir={sact_run}',
                          f'--data_dir={tmp_path / "tfds"}',
                          f'--manual_dir={manual}', '--image_size=64x36',
                          f'--output={output}', '--map_resolution=16',
                          '--tune_resolution=24'])
  out = capsys.readouterr().out
  _check_table(out)
  assert 'longer side 16' in out and 'longer side 24' in out
  saved = _check_results(output, test_data_cat2000.CATEGORIES)
  assert saved == json.loads(json.dumps(summary))
  assert saved['image_size'] == [64, 36]
  assert (saved['map_resolution'], saved['tune_resolution']) == (16, 24)
  assert saved['num_tune'] == saved['num_test'] == 4


def test_clutter_digits_end_to_end(sact_run, clutter_dir, capsys):
  cat2000.main(['cat2000', f'--model_dir={sact_run}',
                '--dataset=clutter_digits', f'--data_dir={clutter_dir}',
                '--max_images_per_category=2'])
  _check_table(capsys.readouterr().out)
  summary = _check_results(
      os.path.join(sact_run, 'saliency_clutter_digits.json'),
      [str(d) for d in range(10)])
  assert summary['num_tune'] == summary['num_test'] == 20
  # Default size: the run's training size, square.
  assert summary['image_size'] == [48, 48]
  assert summary['map_resolution'] == saliency.MAP_RESOLUTION
  assert summary['tune_resolution'] == saliency.TUNE_RESOLUTION


def test_plain_resnet_run_is_refused(tmp_path):
  run = _make_run(tmp_path, 'resnet')
  with pytest.raises(app.UsageError, match='plain ResNet'):
    cat2000.main(['cat2000', f'--model_dir={run}'])


def test_evaluate_run_refuses_runs_without_ponder_maps(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    saliency.evaluate_run(str(tmp_path / 'empty'))
  run = _make_run(tmp_path / 'resnet', 'resnet')
  with pytest.raises(saliency.UnusableRunError, match='plain ResNet'):
    saliency.evaluate_run(run, 'clutter_digits')


def test_missing_cat2000_says_what_to_do(tmp_path, sact_run):
  manual = tmp_path / 'manual'
  manual.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.cat2000', f'--model_dir={sact_run}',
       f'--data_dir={tmp_path / "tfds"}', f'--manual_dir={manual}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT,
               CUDA_VISIBLE_DEVICES=''))
  assert result.returncode != 0
  assert 'Error: ' in result.stderr and 'trainSet.zip' in result.stderr
  assert str(manual) in result.stderr
  assert 'Traceback' not in result.stderr
