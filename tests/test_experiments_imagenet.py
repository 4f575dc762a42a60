import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import imagenet
from sact_tf import data
from sact_tf import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--base_channels=1', '--batch_size=4',
        '--image_size=32', '--summary_every=1', '--checkpoint_every=2',
        '--eval_batch_size=3']


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  imagenet.FLAGS.unparse_flags()


def _run(*args):
  imagenet.main(['imagenet', *args])


@pytest.mark.parametrize('args, message', [
    (['--tau=-0.5'], 'tau must be >= 0'),
    (['--model=77'], 'Unknown ImageNet model'),
    (['--model=3,4,6'], 'four comma-separated'),
    (['--batch_size=0'], 'batch_size must be a positive'),
    (['--train_steps=5', '--train_epochs=1'], 'not both'),
    (['--eval_image_size=224,x'], 'comma-separated ints'),
])
def test_bad_flags_fail_validation(args, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    imagenet.FLAGS(['imagenet', *args])


def test_batch_must_divide_among_replicas(monkeypatch):
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['127.0.0.1:1', '127.0.0.1:2']},
      'task': {'type': 'worker', 'index': 0}}))
  with pytest.raises(flags.IllegalFlagValueError, match='multiple of 2'):
    imagenet.FLAGS(['imagenet', '--strategy=multi_worker', '--batch_size=5'])


def test_missing_dataset_fails_before_any_model(tmp_path, monkeypatch):
  def no_model(*args, **kwargs):
    raise AssertionError('a model was built')
  monkeypatch.setattr(train.ExperimentConfig, 'build_model', no_model)
  with pytest.raises(data.DatasetNotReadyError, match='ILSVRC2012_img_val'):
    _run(f'--model_dir={tmp_path / "run"}', f'--data_dir={tmp_path}',
         '--model=1,1,1,1', *TINY)


def test_model_dir_is_required():
  with pytest.raises(app.UsageError, match='--model_dir is required'):
    _run('--tau=0.01')


def test_config_follows_the_recipe(tmp_path):
  from experiments import common  # pylint: disable=import-outside-toplevel
  imagenet.FLAGS(['imagenet', f'--model_dir={tmp_path}', '--batch_size=64'])
  config = common.flags_to_config(imagenet.BINARY, imagenet.FLAGS)
  assert config.model.units == [3, 4, 23, 3]
  assert config.model.model_type == 'sact' and config.loss.tau == 0.005
  assert config.optimizer.learning_rate == pytest.approx(0.1)
  steps_per_epoch = 1_281_167 / 64
  assert config.optimizer.train_steps == pytest.approx(90 * steps_per_epoch,
                                                       abs=1)
  assert config.optimizer.lr_boundaries == [round(30 * steps_per_epoch),
                                            round(60 * steps_per_epoch)]
  assert (config.loss.label_smoothing == 0.1
          and config.loss.weight_decay == 5e-5)
  assert config.model.num_classes == 1001 and config.data.image_size == 224


@pytest.mark.slow
def test_train_and_eval_on_mock_imagenet(tmp_path, capsys):
  model_dir = tmp_path / 'run'
  with tfds.testing.mock_data(num_examples=6):
    _run(f'--model_dir={model_dir}', '--train_steps=3', '--model_type=act',
         '--model=1,1,1,1', '--eval_image_size=32,40', *TINY)
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-3')
  saved = json.loads((model_dir / 'config.json').read_text())
  assert (saved['model']['units'] == [1, 1, 1, 1]
          and saved['model']['model_type'] == 'act')
  for size in (32, 40):
    summary = json.loads((model_dir / f'eval_validation_{size}px.json')
                         .read_text())
    assert summary['num_examples'] == 6
    assert summary['image_size'] == size
    assert len(summary['blocks']) == 4
  assert (model_dir / 'eval_validation_40px').is_dir()
  assert 'top-1 accuracy' in capsys.readouterr().out


@pytest.mark.slow
def test_clutter_digits_sact_and_its_baseline(tmp_path, tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  model_dir = tmp_path / 'sact'
  common = [f'--data_dir={data_dir}', '--dataset=clutter_digits',
            '--eval_examples=20', *TINY]
  _run(f'--model_dir={model_dir}', '--train_steps=2', '--model=1,2,1,1',
       *common)
  # 20 of the split's examples: a partial record, under its own name.
  partial = model_dir / 'eval_test_32px_first20.json'
  summary = json.loads(partial.read_text())
  assert summary['num_examples'] == 20 and summary['partial']
  assert summary['ponder_on_object_mean'] is not None
  assert summary['model']['units'] == [1, 2, 1, 1]
  assert not (model_dir / 'eval_test_32px.json').exists()
  imagenet.FLAGS.unparse_flags()
  with pytest.raises(app.UsageError, match='partial evaluation'):
    _run(f'--model_dir={tmp_path / "y"}', f'--baseline_from={partial}',
         '--train_steps=1', '--mode=train', *common)

  # The baseline comes from the full evaluation.
  imagenet.FLAGS.unparse_flags()
  _run(f'--model_dir={model_dir}', '--mode=eval', f'--data_dir={data_dir}',
       '--eval_batch_size=250')
  result = model_dir / 'eval_test_32px.json'
  summary = json.loads(result.read_text())
  assert summary['num_examples'] == 1077 and not summary['partial']
  imagenet.FLAGS.unparse_flags()
  baseline_dir = tmp_path / 'baseline'
  _run(f'--model_dir={baseline_dir}', f'--baseline_from={result}',
       '--train_steps=1', '--mode=train', *common)
  baseline = json.loads((baseline_dir / 'config.json').read_text())
  assert baseline['model']['model_type'] == 'resnet'
  assert baseline['run']['init_mode'] == 'baseline'
  assert baseline['model']['units'] == [
      max(1, int(b['units_mean'] + 0.5)) for b in summary['blocks']]

  imagenet.FLAGS.unparse_flags()
  with pytest.raises(app.UsageError, match='--baseline_from'):
    _run(f'--model_dir={tmp_path / "x"}', f'--baseline_from={result}',
         '--model=50', *common)


@pytest.mark.slow
def test_command_line_reports_bad_flags():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.imagenet', '--tau=-1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), check=False)
  assert result.returncode != 0
  assert 'tau must be >= 0' in result.stderr
