"""What the binaries say when the user can fix the problem: one line with the
remedy, no traceback; bugs keep their traceback."""

import errno
import logging
import os
import subprocess
import sys

from absl import app
from absl import flags
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import cifar10
from experiments import common
from sact_tf.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--model=1', '--base_channels=2', '--batch_size=4',
        '--eval_batch_size=3', '--summary_every=1', '--mode=train',
        '--model_type=resnet']


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  cifar10.FLAGS.unparse_flags()


def _exit_message(error):
  """The message `report_errors` exits with for `error`."""

  def main(argv):
    del argv
    raise error

  with pytest.raises(SystemExit) as exit_info:
    common.report_errors(main)(['binary'])
  return str(exit_info.value.code)


def test_usage_errors_are_one_line():
  message = _exit_message(app.UsageError('--model_dir is required.'))
  assert message == ('Error: --model_dir is required. (--helpshort lists the '
                     'flags)')


@pytest.mark.parametrize('error', [
    OSError(errno.ENOSPC, 'No space left on device', '/run/ckpt-3.index'),
    tf.errors.ResourceExhaustedError(
        None, None, '/run/ckpt-3_temp/part-00000; No space left on device'),
    tf.errors.UnknownError(None, None, 'write failed: No space left on device'),
])
def test_a_full_disk_is_one_line_with_the_remedy(error):
  message = _exit_message(error)
  assert message.startswith('Error: No space left on the device')
  assert 'Free some space' in message and '\n' not in message


def test_bugs_keep_their_traceback():
  with pytest.raises(RuntimeError, match='a bug'):
    common.report_errors(lambda argv: (_ for _ in ()).throw(
        RuntimeError('a bug')))(['binary'])


def test_an_output_path_under_a_file(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  with tfds.testing.mock_data(num_examples=5):
    message = _exit_message_of_main(
        cifar10.main, ['cifar10', f'--model_dir={tmp_path}/a_file/run',
                       '--train_steps=1', *TINY])
  assert message.startswith('Error: ')
  assert 'a_file' in message and 'Choose another path' in message


def _exit_message_of_main(main, argv):
  with pytest.raises(SystemExit) as exit_info:
    common.report_errors(main)(argv)
  return str(exit_info.value.code)


@pytest.mark.slow
def test_restart_with_other_flags_via_the_binary(tmp_path):
  run = ['cifar10', f'--model_dir={tmp_path}', *TINY]
  with tfds.testing.mock_data(num_examples=5):
    cifar10.main(run + ['--train_steps=2', '--checkpoint_every=1'])
    cifar10.FLAGS.unparse_flags()
    saved = config_lib.load(str(tmp_path))
    message = _exit_message_of_main(
        cifar10.main, run + ['--train_steps=3', '--checkpoint_every=1',
                             '--tau=0.9'])
    assert 'tau: 0.01 -> 0.9' in message
    assert 'train_steps: 2 -> 3' in message
    assert '--allow_changed_flags' in message
    assert config_lib.load(str(tmp_path)) == saved
    # More steps alone need no flag: the change is recorded, and the
    # learning-rate drops stay where the saved run has them (its default
    # for 2 steps), they are not recomputed for 30.
    cifar10.FLAGS.unparse_flags()
    cifar10.main(run + ['--train_steps=30', '--checkpoint_every=10'])
  resumed = config_lib.load(str(tmp_path))
  assert resumed.optimizer.lr_boundaries == saved.optimizer.lr_boundaries
  assert resumed.optimizer.train_steps == 30
  assert resumed.run.history[0]['changed'] == {
      'optimizer.train_steps': [2, 30]}
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-30')
  assert resumed.optimizer.learning_rate == saved.optimizer.learning_rate

  # A truncated newest checkpoint: evaluation names it and the intact one
  # to pass as --checkpoint, which then works.
  data = tmp_path / 'ckpt-30.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:100])
  evaluate = ['cifar10', f'--model_dir={tmp_path}', '--mode=eval',
              '--eval_batch_size=5']
  with tfds.testing.mock_data(num_examples=5):
    cifar10.FLAGS.unparse_flags()
    message = _exit_message_of_main(cifar10.main, evaluate)
    assert f'{tmp_path}/ckpt-30 cannot be read' in message
    assert f'--checkpoint={tmp_path}/ckpt-20' in message
    cifar10.FLAGS.unparse_flags()
    [summary] = cifar10.main(evaluate + [f'--checkpoint={tmp_path}/ckpt-20'])
  assert summary['step'] == 20


@pytest.mark.slow
def test_a_missing_flag_is_one_short_message():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.cifar10', '--tau=0.1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), check=False)
  assert result.returncode == 1
  assert 'Error: --model_dir is required' in result.stderr
  assert 'Traceback' not in result.stderr
  # Not the 90 lines of absl's usage text. (TensorFlow's C++ start-up
  # messages, which the project does not print, are not counted.)
  ours = [line for line in result.stderr.strip().splitlines()
          if not line.startswith(('I0000', 'W0000', 'E0000',
                                  'WARNING: All log messages'))]
  assert len(ours) <= 2, result.stderr


def test_verbosity_shows_the_traceback(caplog):
  # Parsing the global flags sets absl's log level: put it back after.
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  flags.FLAGS(['binary', '--verbosity=1'])
  try:
    _exit_message(ValueError('bad value'))
  finally:
    flags.FLAGS.unparse_flags()
    absl_logger.setLevel(level)
  assert 'The error in full' in caplog.text
