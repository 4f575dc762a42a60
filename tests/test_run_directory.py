"""Run directories under careless use: broken checkpoints, two trainers,
restarts with other settings. Nothing a user made may be lost."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf import train
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import rundir
from tests import helpers


def _config(model_dir, **sections):
  values = dict(model=dict(units=[1, 1, 1], model_type='resnet'),
                optimizer=dict(train_steps=3, lr_boundaries=[2]),
                run=dict(checkpoint_every=1, summary_every=1,
                         keep_checkpoints=5))
  for section, fields in sections.items():
    values[section] = dict(values.get(section, {}), **fields)
  return helpers.tiny_config(model_dir, **values)


@pytest.fixture(autouse=True, name='mock_data')
def _mock_data():
  with tfds.testing.mock_data(num_examples=7):
    yield


@pytest.fixture(scope='module', name='trained')
def _trained(tmp_path_factory):
  """A run directory with checkpoints 1, 2 and 3 (a pristine copy to
  duplicate per test)."""
  model_dir = tmp_path_factory.mktemp('trained')
  with tfds.testing.mock_data(num_examples=7):
    train.train(_config(model_dir))
  return model_dir


@pytest.fixture(name='run')
def _run(trained, tmp_path):
  """A fresh copy of the trained run directory."""
  copy = tmp_path / 'run'
  subprocess.run(['cp', '-r', str(trained), str(copy)], check=True)
  return copy


def _files(model_dir):
  return sorted(p.name for p in model_dir.iterdir())


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 3])


def test_missing_index_resumes_from_the_newest_intact_checkpoint(run, caplog):
  (run / 'ckpt-3.index').unlink()
  with caplog.at_level(logging.INFO, logger='absl'):
    result = train.train(_config(run))
  # Resumed at step 2 (not 0): the older checkpoints are all still there.
  assert result.step == 3
  assert 'Skipped checkpoint' in caplog.text and 'ckpt-3.index is missing' in (
      caplog.text)
  assert f'Resuming from {run}/ckpt-2 (step 2)' in caplog.text
  for step in (1, 2, 3):
    assert (run / f'ckpt-{step}.index').exists()
  # The broken checkpoint's data is kept aside, not overwritten.
  assert (run / 'broken' / 'ckpt-3.data-00000-of-00001').exists()
  assert tf.train.latest_checkpoint(str(run)).endswith('ckpt-3')
  rundir.check_intact(str(run / 'ckpt-3'))


def test_garbage_state_file_is_ignored(run, caplog):
  (run / 'checkpoint').write_text('this is not a checkpoint state\n')
  assert checkpointing.resolve(str(run)) == str(run / 'ckpt-3')
  with caplog.at_level(logging.INFO, logger='absl'):
    result = train.train(_config(run))
  # Found ckpt-3 by its files: nothing left to train, nothing deleted.
  assert result.step == 3 and 'Already trained' in caplog.text
  for step in (1, 2, 3):
    assert (run / f'ckpt-{step}.index').exists()
  # The state file lists the intact checkpoints again.
  assert tf.train.latest_checkpoint(str(run)).endswith('ckpt-3')


def test_truncated_data_names_the_file_and_the_intact_checkpoint(run):
  _truncate(run / 'ckpt-3.data-00000-of-00001')
  with pytest.raises(rundir.CorruptCheckpointError) as error:
    checkpointing.resolve(str(run))
  message = str(error.value)
  assert f'{run}/ckpt-3 cannot be read' in message
  assert f'--checkpoint={run}/ckpt-2' in message
  # The explicit prefix of a broken checkpoint is refused the same way.
  with pytest.raises(ValueError, match='ckpt-3 cannot be read'):
    checkpointing.resolve(str(run / 'ckpt-3'))
  # Evaluation says the same instead of "no checkpoint".
  with pytest.raises(ValueError, match='newest intact one is'):
    train.evaluate(_config(run), write=False)
  # Training resumes from ckpt-2 and keeps the truncated file aside.
  assert train.train(_config(run)).step == 3
  assert (run / 'broken' / 'ckpt-3.data-00000-of-00001').exists()


def test_no_intact_checkpoint_is_refused_until_told_to_restart(run):
  for step in (1, 2, 3):
    (run / f'ckpt-{step}.index').unlink()
  with pytest.raises(ValueError, match='No intact checkpoint') as error:
    train.train(_config(run))
  assert '--restart_from_scratch' in str(error.value)
  # Nothing was deleted: the data files were moved aside.
  assert len(list((run / 'broken').iterdir())) == 3
  result = train.train(_config(run), restart_from_scratch=True)
  assert result.step == 3


def test_restart_from_scratch_moves_the_old_run_aside(run):
  before = (run / 'ckpt-3.data-00000-of-00001').read_bytes()
  new = _config(run, optimizer=dict(learning_rate=0.01, lr_boundaries=[]))
  train.train(new, restart_from_scratch=True)
  replaced = [p for p in run.iterdir() if p.name.startswith('replaced-')]
  assert len(replaced) == 1
  assert (replaced[0] / 'ckpt-3.data-00000-of-00001').read_bytes() == before
  assert (replaced[0] / 'config.json').exists()
  assert config_lib.load(str(run)).optimizer.learning_rate == 0.01


def test_interrupted_saves_leave_no_temp_folders(run):
  (run / 'ckpt-4_temp').mkdir()
  (run / 'ckpt-4_temp' / 'part-00000-of-00001.index').write_bytes(b'x')
  train.train(_config(run))
  assert not (run / 'ckpt-4_temp').exists()


def test_changed_settings_are_refused_or_recorded(run):
  before = (run / 'config.json').read_text()
  changed = _config(run, loss=dict(tau=0.5), data=dict(batch_size=2),
                    optimizer=dict(learning_rate=0.1, train_steps=4))
  with pytest.raises(ValueError) as error:
    train.train(changed)
  message = str(error.value)
  for text in ('learning_rate: 0.05 -> 0.1', 'tau: 0.01 -> 0.5',
               'batch_size: 4 -> 2', '--allow_changed_flags'):
    assert text in message
  assert (run / 'config.json').read_text() == before
  train.train(changed, allow_changed=True)
  saved = config_lib.load(str(run))
  assert saved.loss.tau == 0.5
  [entry] = saved.run.history
  assert entry['step'] == 3
  assert entry['changed']['loss.tau'] == [0.01, 0.5]
  assert entry['changed']['optimizer.train_steps'] == [3, 4]
  # More steps need no flag; they are recorded.
  train.train(_config(run, loss=dict(tau=0.5), data=dict(batch_size=2),
                      optimizer=dict(learning_rate=0.1, train_steps=5)))
  assert config_lib.load(str(run)).run.history[1]['changed'] == {
      'optimizer.train_steps': [4, 5]}
  # Settings that do not change the training may change freely.
  train.train(_config(run, loss=dict(tau=0.5),
                      data=dict(batch_size=2, eval_batch_size=7),
                      optimizer=dict(learning_rate=0.1, train_steps=5),
                      run=dict(summary_every=3)))
  assert len(config_lib.load(str(run)).run.history) == 2


def test_a_rising_learning_rate_is_logged(caplog):
  saved = _config('/x', optimizer=dict(train_steps=10, lr_boundaries=[5]))
  longer = _config('/x', optimizer=dict(train_steps=20, lr_boundaries=[15]))
  with caplog.at_level(logging.WARNING, logger='absl'):
    config_lib.resume_config(longer, saved, step=10, allow_changed=True)
  assert 'learning rate at step 10 goes up from 0.005' in caplog.text


def test_a_second_trainer_is_refused_while_the_first_holds_the_lock(run):
  with rundir.RunLock(str(run)):
    with pytest.raises(rundir.RunDirectoryLockedError) as error:
      train.train(_config(run, run=dict(seed=1)))
  message = str(error.value)
  assert f'process {os.getpid()} on host {socket.gethostname()}' in message
  assert 'train.lock' in message
  # The lock is gone when its holder is done; training works again.
  assert not (run / 'train.lock').exists()
  assert train.train(_config(run)).step == 3


def test_stale_locks_are_taken_over(tmp_path, caplog):
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()
  lock_path = tmp_path / 'train.lock'
  lock_path.write_text(json.dumps(dict(
      host=socket.gethostname(), pid=gone.pid, started='earlier',
      heartbeat_unix=time.time())))
  with caplog.at_level(logging.WARNING, logger='absl'):
    with rundir.RunLock(str(tmp_path)):
      held = json.loads(lock_path.read_text())
  assert held['pid'] == os.getpid()
  assert f'process {gone.pid}' in caplog.text
  # Another host's lock: taken over only when its heartbeat is old.
  lock_path.write_text(json.dumps(dict(
      host='elsewhere', pid=1, heartbeat_unix=time.time())))
  with pytest.raises(rundir.RunDirectoryLockedError, match='elsewhere'):
    rundir.RunLock(str(tmp_path)).acquire()
  lock_path.write_text(json.dumps(dict(
      host='elsewhere', pid=1, heartbeat_unix=time.time() - 7200)))
  with rundir.RunLock(str(tmp_path)):
    pass
  assert not lock_path.exists()


def test_lock_heartbeat_updates_the_record(tmp_path):
  lock = rundir.RunLock(str(tmp_path)).acquire()
  first = json.loads((tmp_path / 'train.lock').read_text())['heartbeat_unix']
  time.sleep(0.01)
  lock.heartbeat()
  second = json.loads((tmp_path / 'train.lock').read_text())
  assert second['heartbeat_unix'] > first and second['pid'] == os.getpid()
  lock.release()


def test_resolve_completes_the_given_settings_from_the_saved_run(tmp_path):
  saved = _config(tmp_path, model=dict(units=[1, 2, 1], eps=0.05),
                  loss=dict(tau=0.5),
                  optimizer=dict(lr_boundaries=[60, 90], train_steps=100))
  given = _config(tmp_path, model=dict(units=[2, 2, 2]), loss=dict(tau=0.1),
                  optimizer=dict(train_steps=80, lr_boundaries=[10]))
  # --mode=eval: the saved model, unless given (here --tau).
  evaluated = config_lib.resolve(given, saved, 'eval', given={'loss.tau'})
  assert evaluated.model.units == [1, 2, 1] and evaluated.model.eps == 0.05
  assert evaluated.loss.tau == 0.1
  # A new config; the given one unchanged.
  assert given.model.units == [2, 2, 2]
  # Training: the saved drops (those before the end), unless given.
  resumed = config_lib.resolve(given, saved, 'train')
  assert resumed.optimizer.lr_boundaries == [60]
  assert resumed.model.units == [2, 2, 2]
  assert config_lib.resolve(
      given, saved, 'train',
      given={'optimizer.lr_boundaries'}).optimizer.lr_boundaries == [10]
  assert config_lib.resolve(given, None, 'eval') is given
  other = helpers.tiny_config(
      tmp_path, model=dict(family='imagenet', units=[1, 1, 1, 1]),
      data=dict(dataset='imagenet2012', preprocessing='inception'))
  with pytest.raises(ValueError, match="family 'imagenet', not 'cifar'"):
    config_lib.resolve(given, other, 'eval')
  with pytest.raises(ValueError, match='mode must be'):
    config_lib.resolve(given, saved, 'predict')
