import json
import os
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import cifar10
from experiments import common
from sact_tf import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--model=1', '--base_channels=2', '--batch_size=4',
        '--eval_batch_size=3', '--summary_every=1']


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  cifar10.FLAGS.unparse_flags()


@pytest.fixture(name='clutter_dir', scope='module')
def _clutter_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  data.prepare('clutter_digits', data_dir)
  return data_dir


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT,
              CUDA_VISIBLE_DEVICES='')


def test_recipe_defaults(tmp_path):
  cifar10.FLAGS(['cifar10', f'--model_dir={tmp_path}'])
  config = common.flags_to_config(cifar10.BINARY, cifar10.FLAGS)
  model, loss, optimizer, data_config = (
      config.model, config.loss, config.optimizer, config.data)
  assert model.units == [5, 5, 5] and model.family == 'cifar'
  assert model.model_type == 'sact' and loss.tau == 0.01
  assert data_config.batch_size == 128 and optimizer.train_steps == 100_000
  assert optimizer.learning_rate == 0.1
  assert optimizer.lr_boundaries == [60_000, 75_000, 90_000]
  assert optimizer.learning_rates() == pytest.approx([0.1, 0.01, 1e-3, 1e-4])
  assert loss.weight_decay == 1e-4 and loss.label_smoothing == 0.0
  assert data_config.preprocessing == 'cifar' and data_config.image_size == 32


def test_unknown_model_is_a_flag_error():
  with pytest.raises(flags.IllegalFlagValueError, match='Unknown CIFAR'):
    cifar10.FLAGS(['cifar10', '--model=5,5'])


def test_set_any_field_of_each_section(tmp_path):
  cifar10.FLAGS(['cifar10', f'--model_dir={tmp_path}',
                 '--set=model.eps=0.02', '--set=loss.label_smoothing=0.1',
                 '--set=optimizer.momentum=0.95',
                 '--set=optimizer.train_steps=1000',
                 '--set=data.download=false', '--set=run.seed=7'])
  config = common.flags_to_config(cifar10.BINARY, cifar10.FLAGS)
  assert config.model.eps == 0.02 and config.loss.label_smoothing == 0.1
  assert config.optimizer.momentum == 0.95
  assert config.data.download is False and config.run.seed == 7
  # A field set with --set is what its flag would give: the drops follow.
  assert config.optimizer.train_steps == 1000
  assert config.optimizer.lr_boundaries == [600, 750, 900]
  # The rest keeps the recipe.
  assert config.loss.tau == 0.01 and config.model.units == [5, 5, 5]
  assert 'momentum (float)' in cifar10.FLAGS['set'].help


def test_set_is_saved_in_config_json(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    cifar10.main(['cifar10', f'--model_dir={tmp_path}', '--train_steps=1',
                  '--mode=train', '--model_type=resnet', *TINY,
                  '--set=model.halting_bias_init=-2.0',
                  '--set=optimizer.lr_decay=0.5',
                  '--set=data.eval_image_sizes=32,40'])
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['halting_bias_init'] == -2.0
  assert saved['optimizer']['lr_decay'] == 0.5
  assert saved['data']['eval_image_sizes'] == [32, 40]
  assert saved['data']['batch_size'] == 4  # From --batch_size.


@pytest.mark.parametrize('entry, message', [
    ('model.epz=0.02', r'model.epz is not a key. The keys of section model: '
     r'family \(str\), units \(ints\)'),
    ('optimizer.momentum=fast', r"optimizer.momentum takes a number "
     r"\(float\), got 'fast'. The keys of section optimizer: .*momentum "
     r'\(float\)'),
])
def test_unknown_or_bad_setting_is_a_flag_error(tmp_path, entry, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    cifar10.main(['cifar10', f'--model_dir={tmp_path}', f'--set={entry}'])


def test_set_and_the_fields_own_flag_conflict(tmp_path):
  cifar10.FLAGS(['cifar10', f'--model_dir={tmp_path}', '--tau=0.1',
                 '--set=loss.tau=0.2'])
  with pytest.raises(ValueError, match=r'--set=loss.tau=0.2: loss.tau is '
                     'also set by --tau; give one of them'):
    common.flags_to_config(cifar10.BINARY, cifar10.FLAGS)
  cifar10.FLAGS.unparse_flags()
  with pytest.raises(app.UsageError, match='data.batch_size is also set by '
                     '--batch_size'):
    cifar10.main(['cifar10', f'--model_dir={tmp_path}', '--batch_size=8',
                  '--set=data.batch_size=4'])
  cifar10.FLAGS.unparse_flags()
  # A value of the right type that the config refuses names the field.
  cifar10.FLAGS(['cifar10', f'--model_dir={tmp_path}', '--set=model.eps=2'])
  with pytest.raises(ValueError, match='eps must be in the open interval'):
    common.flags_to_config(cifar10.BINARY, cifar10.FLAGS)


@pytest.mark.slow
def test_train_and_eval_on_mock_cifar(tmp_path, capsys):
  with tfds.testing.mock_data(num_examples=5):
    cifar10.main(['cifar10', f'--model_dir={tmp_path}', '--train_steps=2',
                  *TINY])
  summary = json.loads((tmp_path / 'eval_test_32px.json').read_text())
  assert summary['num_examples'] == 5
  assert summary['model']['family'] == 'cifar'
  assert 'ponder_cost_mean' in summary
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-2')
  assert 'ponder cost' in capsys.readouterr().out


def _command(model_dir, data_dir, *extra):
  return [sys.executable, '-m', 'experiments.cifar10',
          f'--model_dir={model_dir}', f'--data_dir={data_dir}',
          '--dataset=clutter_digits', '--image_size=32', '--mode=train',
          *TINY, *extra]


def _latest_step(model_dir):
  latest = tf.train.latest_checkpoint(str(model_dir))
  return int(latest.rsplit('-', 1)[1]) if latest else 0


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, clutter_dir):
  command = _command(tmp_path, clutter_dir, '--train_steps=400',
                     '--checkpoint_every=5', '--summary_every=50')
  process = subprocess.Popen(command, cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while _latest_step(tmp_path) < 10 and process.poll() is None:
      assert time.time() < deadline, 'no checkpoint within 120 s'
      time.sleep(0.2)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  killed_at = _latest_step(tmp_path)
  assert 10 <= killed_at < 400, 'the run ended before it could be killed'

  result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming from {tmp_path}/ckpt-{killed_at}' in result.stderr
  assert _latest_step(tmp_path) == 400
  assert f'from step {killed_at} to 400' in result.stderr


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_multi_worker_mirrored_workers(tmp_path, clutter_dir):
  workers = [f'127.0.0.1:{_free_port()}' for _ in range(2)]
  model_dir = tmp_path / 'run'
  processes = []
  logs = []
  try:
    for index in range(2):
      env = _env()
      env['TF_CONFIG'] = json.dumps({
          'cluster': {'worker': workers},
          'task': {'type': 'worker', 'index': index}})
      log = open(tmp_path / f'worker{index}.log', 'w+', encoding='utf-8')
      logs.append(log)
      processes.append(subprocess.Popen(
          _command(model_dir, clutter_dir, '--strategy=multi_worker',
                   '--train_steps=3', '--checkpoint_every=3'),
          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.time() + 240
    for process in processes:
      process.wait(timeout=max(1, deadline - time.time()))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert _latest_step(model_dir) == 3
  assert (model_dir / 'config.json').exists()
  # The non-chief worker's scratch checkpoints are gone.
  assert not list((model_dir / 'workers').glob('*/ckpt-*'))
  assert 'step 3/3' in outputs[0] and 'step 3/3' in outputs[1]
