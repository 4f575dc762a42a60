"""Run directories and outputs on remote filesystems (`tf.io.gfile` URLs).

TensorFlow's in-memory `ram://` filesystem stands in for a bucket
(`gs://...`): every file of a run must go there, nothing to local disk.
"""

import json
import logging
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from experiments import cifar10
from experiments import export as export_binary
from experiments import export_ponder
from experiments import ponder_map
from sact_tf import data
from sact_tf import fileio
from sact_tf import viz
from sact_tf.train import config as config_lib
from sact_tf.train import export_maps
from sact_tf.train import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--model=1', '--base_channels=2', '--batch_size=4',
        '--eval_batch_size=3', '--summary_every=1']


def _found(pattern, depth=1):
  """The remote paths matching `pattern`, `pattern/*`, ... down `depth`
  levels (ram:// lists no folder that was only created implicitly, by a
  file written inside it, so globs find files where listings do not)."""
  return [p for level in range(depth)
          for p in tf.io.gfile.glob(pattern + '/*' * level)]


@pytest.fixture(name='base')
def _remote_base():
  """A fresh ram:// folder, removed afterwards."""
  base = f'ram://sact_test_{uuid.uuid4().hex}'
  yield base
  if tf.io.gfile.exists(base):
    tf.io.gfile.rmtree(base)


# ------------------------------------------------------------ sact_tf.fileio


def test_paths_keep_urls():
  assert fileio.is_remote('ram://a/b') and fileio.is_remote('gs://bucket/x')
  assert not fileio.is_remote('/tmp/x') and not fileio.is_remote('ram:/x')
  assert fileio.absolute('ram://a/b') == 'ram://a/b'
  assert fileio.absolute('gs://bucket/run') == 'gs://bucket/run'
  assert fileio.real('gs://bucket/run') == 'gs://bucket/run'
  assert fileio.absolute('x') == os.path.abspath('x')
  assert fileio.expanduser('gs://b/~x') == 'gs://b/~x'
  assert fileio.dirname('ram://a') == 'ram://'
  assert fileio.dirname('gs://bucket/run/config.json') == 'gs://bucket/run'
  assert fileio.dirname('/tmp/a/b') == '/tmp/a'


def test_write_read_and_replace(base):
  path = f'{base}/a/b/file.json'
  assert not fileio.exists(path)
  assert fileio.write_bytes(path, b'old') == path
  assert fileio.read_bytes(path) == b'old' and fileio.exists(path)
  fileio.write_text(path, 'new é')
  assert fileio.read_text(path) == 'new é'
  # The temporary object was renamed away: only the file is left.
  assert fileio.listdir(f'{base}/a/b') == ['file.json']
  assert fileio.isdir(f'{base}/a') and fileio.listdir(f'{base}/a') == ['b']
  fileio.makedirs(f'{base}/c/d')
  fileio.makedirs(f'{base}/c/d')
  assert fileio.isdir(f'{base}/c/d')
  fileio.rename(path, f'{base}/c/d/moved.json')
  assert not fileio.exists(path)
  assert fileio.read_text(f'{base}/c/d/moved.json') == 'new é'
  fileio.remove(f'{base}/c/d/moved.json')
  with pytest.raises(FileNotFoundError, match='moved.json'):
    fileio.read_bytes(f'{base}/c/d/moved.json')
  with pytest.raises(FileNotFoundError, match='moved.json'):
    fileio.remove(f'{base}/c/d/moved.json')
  fileio.rmtree(f'{base}/c')
  assert not fileio.exists(f'{base}/c/d')


def test_an_interrupted_write_keeps_the_old_file(base):
  path = f'{base}/keep.bin'
  fileio.write_bytes(path, b'old')
  with pytest.raises(RuntimeError, match='interrupted'):
    with fileio.writer(path) as f:
      f.write(b'half')
      raise RuntimeError('interrupted')
  assert fileio.read_bytes(path) == b'old'
  assert fileio.listdir(base) == ['keep.bin']
  with fileio.writer(path) as f:
    f.write(b'new')
  assert fileio.read_bytes(path) == b'new'
  assert fileio.listdir(base) == ['keep.bin']


def test_create_new_refuses_an_existing_file(base):
  fileio.create_new(f'{base}/lock', b'1')
  with pytest.raises(FileExistsError):
    fileio.create_new(f'{base}/lock', b'2')
  assert fileio.read_bytes(f'{base}/lock') == b'1'


def test_without_rename_files_are_written_in_place(base, monkeypatch,
                                                   caplog):
  rename = tf.io.gfile.rename

  def no_rename(source, target, overwrite=False):
    if str(source).startswith('ram://'):
      raise tf.errors.UnimplementedError(None, None, 'no rename here')
    return rename(source, target, overwrite)

  monkeypatch.setattr(tf.io.gfile, 'rename', no_rename)
  monkeypatch.setattr(fileio, '_rename_unsupported', set())
  with caplog.at_level(logging.WARNING, logger='absl'):
    fileio.write_bytes(f'{base}/one.json', b'1')
    fileio.write_bytes(f'{base}/one.json', b'11')
    with fileio.writer(f'{base}/two.bin') as f:
      f.write(b'2')
    config_lib.write_json(f'{base}/three.json', {'a': 3})
  assert fileio.read_bytes(f'{base}/one.json') == b'11'
  assert fileio.read_bytes(f'{base}/two.bin') == b'2'
  assert config_lib.read_json(f'{base}/three.json') == {'a': 3}
  assert sorted(fileio.listdir(base)) == ['one.json', 'three.json',
                                          'two.bin']
  warnings = [r for r in caplog.records if 'cannot rename' in r.getMessage()]
  assert len(warnings) == 1 and 'ram://' in warnings[0].getMessage()


def test_a_rename_failure_on_first_write_falls_back_too(base, monkeypatch,
                                                        caplog):
  def no_rename(source, target, overwrite=False):
    raise tf.errors.UnimplementedError(None, None, 'no rename here')

  monkeypatch.setattr(tf.io.gfile, 'rename', no_rename)
  monkeypatch.setattr(fileio, '_rename_unsupported', set())
  with caplog.at_level(logging.WARNING, logger='absl'):
    with fileio.writer(f'{base}/streamed.bin') as f:
      f.write(b'streamed')
  assert fileio.read_bytes(f'{base}/streamed.bin') == b'streamed'
  assert fileio.listdir(base) == ['streamed.bin']
  assert 'cannot rename' in caplog.text


def test_config_lock_npz_and_png_on_ram(base):
  config_lib.write_json(f'{base}/x.json', {'a': [1, 2]})
  assert config_lib.read_json(f'{base}/x.json') == {'a': [1, 2]}
  with pytest.raises(FileNotFoundError, match='nothing.json'):
    config_lib.read_json(f'{base}/nothing.json')
  assert config_lib.load(f'{base}/no_run') is None

  lock = rundir.RunLock(f'{base}/run').acquire()
  assert rundir.RunLock(f'{base}/run').holder()['pid'] == os.getpid()
  with pytest.raises(rundir.RunDirectoryLockedError, match='train.lock'):
    rundir.RunLock(f'{base}/run').acquire()
  lock.heartbeat()
  lock.release()
  assert not fileio.exists(f'{base}/run/train.lock')

  with export_maps.NpzStream(f'{base}/maps/m.npz') as stream:
    for start in (0, 3):
      stream.append({'x': np.arange(start, start + 3, dtype=np.int64)})
    path = stream.close({'metadata': np.array(json.dumps({'n': 6}))})
  assert path == f'{base}/maps/m.npz'
  arrays, metadata = export_maps.load(path)
  np.testing.assert_array_equal(arrays['x'], np.arange(6))
  assert metadata == {'n': 6} and fileio.listdir(f'{base}/maps') == ['m.npz']

  viz.write_png(f'{base}/png/a.png', np.zeros([4, 5, 3], np.float32))
  image = tf.io.decode_png(fileio.read_bytes(f'{base}/png/a.png'))
  assert image.shape == (4, 5, 3)


# ----------------------------------------------------------- end to end


@pytest.fixture(name='clutter_dir', scope='module')
def _clutter_dir(tmp_path_factory):
  # TFDS (etils.epath) does not know ram://, so the data stay local; a
  # gs:// data_dir works through TFDS itself.
  # The folder the other modules prepare the dataset in (once a session).
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  data.prepare('clutter_digits', data_dir)
  return data_dir


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  for binary in (cifar10, ponder_map, export_ponder, export_binary):
    binary.FLAGS.unparse_flags()


def _local_traces(*folders):
  """What a remote path mangled into a local one (`ram:/...`) left in
  `folders` (and their subfolders) or at the top of the repository."""
  found = [n for n in os.listdir(ROOT) if n.startswith('ram:')]
  for folder in folders:
    for root, dirs, files in os.walk(folder):
      found += [os.path.join(root, n) for n in dirs + files
                if n.startswith('ram:')]
  return found


def test_a_run_in_a_bucket_writes_nothing_locally(base, clutter_dir, tmp_path,
                                                  monkeypatch):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  run = f'{base}/run'
  common = [f'--model_dir={run}', f'--data_dir={clutter_dir}',
            '--dataset=clutter_digits', '--image_size=32', *TINY]
  cifar10.main(['cifar10', *common, '--mode=train', '--train_steps=2',
                '--checkpoint_every=2'])
  cifar10.FLAGS.unparse_flags()
  cifar10.main(['cifar10', *common, '--mode=eval', '--eval_examples=6'])
  files = set(fileio.listdir(run))
  assert {'config.json', 'checkpoint', 'ckpt-2.index'} <= files
  assert config_lib.load(run).run.model_dir == run
  assert any(n.startswith('ckpt-2.data-') for n in files)
  assert files & {'eval_test_32px_first6.json'}, sorted(files)
  record = config_lib.read_json(f'{run}/eval_test_32px_first6.json')
  assert record['num_examples'] == 6 and record['checkpoint'] == (
      f'{run}/ckpt-2')
  for events in ('train', 'hparams', 'eval_test_32px_first6'):
    assert _found(f'{run}/{events}/events.out.tfevents.*'), events
  assert 'train.lock' not in files

  # Tools on the run: ponder maps of an image, the bulk NPZ export.
  viz.write_png(f'{base}/images/digit.png',
                np.random.default_rng(0).random([32, 32, 3]))
  results = ponder_map.main(['ponder_map', f'--model_dir={run}',
                             f'--images={base}/images/*.png',
                             f'--output_dir={base}/ponder'])
  assert list(results) == [f'{base}/images/digit.png']
  assert sorted(fileio.listdir(f'{base}/ponder')) == [
      'digit_colorbar.png', 'digit_overlay.png', 'digit_ponder.png']
  result = export_ponder.main(['export_ponder', f'--model_dir={run}',
                               f'--output={base}/maps/maps.npz',
                               '--max_examples=4', '--batch_size=2'])
  assert result['output'] == f'{base}/maps/maps.npz'
  arrays, metadata = export_maps.load(f'{base}/maps/maps.npz')
  assert metadata['num_examples'] == 4 and metadata['model_dir'] == run
  assert metadata['checkpoint'] == f'{run}/ckpt-2'
  assert arrays['labels'].shape == (4,)
  assert fileio.listdir(f'{base}/maps') == ['maps.npz']

  assert not list(cwd.iterdir())
  assert not _local_traces(tmp_path)

  # The SavedModel export (`sact_tf.export`; writes BASE/<version>/).
  export_binary.main(['export', f'--model_dir={run}',
                      f'--export_dir={base}/serving'])
  assert _found(f'{base}/serving/*', depth=3), 'nothing was exported'
  assert not list(cwd.iterdir())
  assert not _local_traces(tmp_path)
