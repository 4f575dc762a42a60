"""What exports may replace, and the serving checks of encoded bytes.

The folder rules are checked with a stand-in archive (no model to trace);
`tests/test_experiments_serving.py` runs them through `experiments.export`.
"""

import io
import os

import numpy as np
from PIL import features
from PIL import Image
import pytest
import tensorflow as tf

from sact_tf import export
from sact_tf import fileio
from sact_tf.detection import config as config_lib
from sact_tf.detection import export as detection_export
from sact_tf.detection import training


class FakeArchive:
  """Writes what an `ExportArchive` would, with `content` as the model."""

  def __init__(self, content=b'model', fail=False):
    self.content = content
    self.fail = fail

  def write_out(self, path, verbose=False):
    del verbose
    os.makedirs(os.path.join(path, 'variables'))
    with open(os.path.join(path, 'saved_model.pb'), 'wb') as f:
      f.write(self.content)
    if self.fail:
      raise RuntimeError('interrupted while writing')


def _snapshot(folder):
  """Every file under `folder`: relative path -> bytes."""
  files = {}
  for path, _, names in os.walk(folder):
    for name in names:
      full = os.path.join(path, name)
      with open(full, 'rb') as f:
        files[os.path.relpath(full, folder)] = f.read()
  return files


def _write(path, content=b'x'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(content)


def _model(export_dir):
  with open(os.path.join(export_dir, 'saved_model.pb'), 'rb') as f:
    return f.read()


def _leftovers(folder):
  return [n for n in os.listdir(folder) if n.startswith('.export-')]


@pytest.fixture(name='run')
def _run(tmp_path):
  """A run directory as training leaves it."""
  run = tmp_path / 'run'
  for name in ('config.json', 'checkpoint', 'ckpt-1.index',
               'ckpt-1.data-00000-of-00001', 'eval_validation_32px.json',
               'train/events.out.tfevents.1.host'):
    _write(str(run / name))
  return str(run)


@pytest.mark.parametrize('overwrite', [False, True])
def test_the_run_directory_is_never_replaced(run, tmp_path, overwrite):
  before = _snapshot(tmp_path)
  for target, message in [(run, 'is the run directory'),
                          (str(tmp_path), 'contains the run directory'),
                          (run + '/', 'is the run directory')]:
    with pytest.raises(ValueError, match=message + '.*even with --overwrite'):
      export.write_archive(FakeArchive(), target, overwrite=overwrite,
                           run_dir=run)
  # Without its name, the run is still recognised by its files.
  with pytest.raises(ValueError, match='looks like a run directory'):
    export.write_archive(FakeArchive(), run, overwrite=overwrite)
  assert _snapshot(tmp_path) == before
  assert not _leftovers(tmp_path)


@pytest.mark.parametrize('name', [
    'config.json', 'checkpoint', 'ckpt-3.index', 'model.ckpt-1234.index',
    'deep/down/events.out.tfevents.1.host'])
def test_what_looks_like_a_run_is_never_replaced(run, tmp_path, name):
  other = str(tmp_path / 'other')
  _write(os.path.join(other, name))
  with pytest.raises(ValueError, match=r'--export_dir=.*other looks like a '
                                       r'run directory.*even with'):
    export.write_archive(FakeArchive(), other, overwrite=True, run_dir=run)
  assert os.path.exists(os.path.join(other, name))


def test_the_current_directory_and_its_parents_are_never_replaced(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs('here')
  monkeypatch.chdir('here')
  for target in ('.', str(tmp_path)):
    with pytest.raises(ValueError, match='the current directory'):
      export.write_archive(FakeArchive(), target, overwrite=True)


def test_a_folder_with_an_unrelated_file_needs_overwrite(run, tmp_path):
  folder = str(tmp_path / 'photos')
  _write(os.path.join(folder, 'holiday.jpg'), b'mine')
  with pytest.raises(FileExistsError,
                     match=r'--export_dir=.*photos is not empty and is not '
                           r'an export of this run: choose a new folder or '
                           r'pass --overwrite'):
    export.write_archive(FakeArchive(), folder, run_dir=run)
  assert _snapshot(folder) == {'holiday.jpg': b'mine'}
  assert export.check_export_dir(folder, run, overwrite=True) == 'overwrite'
  export.write_archive(FakeArchive(b'new'), folder, overwrite=True,
                       run_dir=run)
  assert sorted(os.listdir(folder)) == [export.MARKER_FILENAME,
                                        'saved_model.pb', 'variables']
  assert _model(folder) == b'new'
  assert not _leftovers(tmp_path)


def test_new_and_empty_folders_are_used_and_files_refused(run, tmp_path):
  new = str(tmp_path / 'a' / 'b')
  assert export.check_export_dir(new, run) == 'new'
  export.write_archive(FakeArchive(), new, run_dir=run)
  assert _model(new) == b'model'
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert export.check_export_dir(str(empty), run) == 'empty'
  export.write_archive(FakeArchive(), str(empty), run_dir=run)
  assert _model(str(empty)) == b'model'
  _write(str(tmp_path / 'file'), b'mine')
  with pytest.raises(FileExistsError, match='is a file, not a folder'):
    export.write_archive(FakeArchive(), str(tmp_path / 'file'),
                         overwrite=True, run_dir=run)
  assert (tmp_path / 'file').read_bytes() == b'mine'


def test_an_export_of_the_same_run_is_replaced_another_needs_overwrite(
    run, tmp_path):
  target = str(tmp_path / 'serving')
  export.write_archive(FakeArchive(b'first'), target, run_dir=run,
                       checkpoint=run + '/ckpt-1', description='tiny sact',
                       details={'max_image_size': 64})
  marker = export.read_marker(target)
  assert marker['run_dir'] == os.path.realpath(run)
  assert marker['checkpoint'] == os.path.abspath(run + '/ckpt-1')
  assert marker['model'] == 'tiny sact'
  assert marker['max_image_size'] == 64
  # The same run, named another way: replaced without a flag.
  assert export.check_export_dir(target, run + '/') == 'same_run'
  export.write_archive(FakeArchive(b'second'), target, run_dir=run + '/')
  assert _model(target) == b'second'

  other = str(tmp_path / 'other_run')
  with pytest.raises(FileExistsError, match=r'holds an export of another '
                                            r'run \(.*run\).*--overwrite'):
    export.write_archive(FakeArchive(b'other'), target, run_dir=other)
  with pytest.raises(FileExistsError, match='names no run'):
    export.write_archive(FakeArchive(b'other'), target)
  assert _model(target) == b'second'
  export.write_archive(FakeArchive(b'other'), target, run_dir=other,
                       overwrite=True)
  assert _model(target) == b'other'
  assert export.read_marker(target)['run_dir'] == os.path.realpath(other)

  # A file of the user's inside an export is not the export's to delete.
  _write(os.path.join(target, 'notes.txt'), b'mine')
  with pytest.raises(FileExistsError, match=r'holds files an export does '
                                            r'not write \(notes.txt\)'):
    export.write_archive(FakeArchive(), target, run_dir=other)
  assert _model(target) == b'other'
  # So is a SavedModel written by something else.
  foreign = str(tmp_path / 'foreign')
  _write(os.path.join(foreign, 'saved_model.pb'), b'theirs')
  with pytest.raises(FileExistsError, match='without sact_export.json'):
    export.write_archive(FakeArchive(), foreign, run_dir=run)
  assert not _leftovers(tmp_path)


def test_an_interrupted_export_keeps_the_old_one(run, tmp_path, monkeypatch):
  target = str(tmp_path / 'serving')
  export.write_archive(FakeArchive(b'old'), target, run_dir=run)
  before = _snapshot(target)
  with pytest.raises(RuntimeError, match='interrupted'):
    export.write_archive(FakeArchive(b'new', fail=True), target, run_dir=run)
  assert _snapshot(target) == before
  assert not _leftovers(tmp_path)

  # The swap fails after the old export was moved aside: it comes back.
  publish = fileio.publish

  def fail_to_publish(temp, path, directory=False):
    if directory:
      assert not os.path.exists(target)
      raise OSError('disk went away')
    return publish(temp, path, directory)
  monkeypatch.setattr(fileio, 'publish', fail_to_publish)
  with pytest.raises(OSError, match='disk went away'):
    export.write_archive(FakeArchive(b'new'), target, run_dir=run)
  assert _snapshot(target) == before
  assert not _leftovers(tmp_path)


def _encoded(fmt, height=30, width=50, mode='RGB', **kwargs):
  image = np.random.default_rng(0).integers(0, 256, (height, width, 3),
                                            dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).convert(mode).save(buffer, fmt, **kwargs)
  return buffer.getvalue()


_WEBP = pytest.mark.skipif(not features.check('webp'),
                           reason='Pillow was built without WebP')
FORMATS = [
    pytest.param('JPEG', {}, 'JPEG', id='jpeg'),
    pytest.param('PNG', {}, 'PNG', id='png'),
    pytest.param('GIF', {}, 'GIF', id='gif'),
    pytest.param('BMP', {}, 'BMP', id='bmp'),
    pytest.param('WEBP', {'quality': 80}, 'WebP', id='webp-lossy',
                 marks=_WEBP),
    pytest.param('WEBP', {'lossless': True}, 'WebP', id='webp-lossless',
                 marks=_WEBP),
    pytest.param('WEBP', {'lossless': True, 'mode': 'RGBA',
                          'exif': b'Exif\0\0'}, 'WebP', id='webp-extended',
                 marks=_WEBP),
]


@pytest.fixture(name='check', scope='module')
def _check():
  return tf.function(export.check_encoded)


@pytest.mark.parametrize('fmt, kwargs, name', FORMATS)
def test_check_encoded_reads_sizes_and_names_truncated_items(
    check, fmt, kwargs, name):
  data = _encoded(fmt, **kwargs)
  good = _encoded('PNG', 10, 10)
  assert tf.io.decode_image(data, channels=3,
                            expand_animations=False).shape == (30, 50, 3)
  batch = tf.constant([good, data])
  np.testing.assert_array_equal(check(batch, 50).numpy(), batch.numpy())
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=rf'encoded\[1\]: the {name} header gives 30x50 '
                           r'pixels.*more than this export serves \(49 '
                           r'pixels.*--max_encoded_size'):
    check(batch, 49)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=rf'encoded\[1\] is a {name} .*truncated'):
    check(tf.constant([good, data[:len(data) // 2]]), 50)


def test_check_encoded_names_empty_and_unknown_items(check):
  good = _encoded('PNG', 10, 10)
  for batch, message in [
      ([good, good, b''], r'encoded\[2\] is empty'),
      ([b'\xff\xd8', good], r'encoded\[0\]: Unknown image format'),
      ([good, b'iVBORw0KGgo='], r'encoded\[1\]: Unknown image format.*'
                                r'base64'),
      ([good, good[:20] + b'\0' * 4 + good[24:]],
       r'encoded\[1\]: the PNG header gives 0x10 pixels.*corrupt'),
  ]:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      check(tf.constant(batch), 100)
  assert check(tf.zeros([0], tf.string), 100).shape == (0,)


@pytest.mark.slow
def test_detection_export_checks_its_requests_and_folder(run, tmp_path):
  model = training.build_model(config_lib.ModelConfig(
      units=[1, 2, 2, 1], model_type='sact', num_classes=3, base_channels=4,
      rpn_depth=8, anchor_base_size=32, anchor_scales=(1.0,),
      anchor_aspect_ratios=(0.5, 1.0), num_proposals=16, max_detections=10,
      max_detections_per_class=5))
  with pytest.raises(ValueError, match='is the run directory'):
    detection_export.export_saved_model(model, run, overwrite=True,
                                        run_dir=run)
  with pytest.raises(ValueError, match='looks like a run directory'):
    detection_export.export_saved_model(model, run, overwrite=True)
  target = str(tmp_path / 'detector')
  detection_export.export_saved_model(model, target, min_size=48,
                                      max_size=80, max_image_size=100,
                                      run_dir=run)
  marker = export.read_marker(target)
  assert marker['max_image_size'] == 100
  assert marker['signatures'] == ['serving_default', 'serve_float']
  assert marker['run_dir'] == os.path.realpath(run)
  loaded = tf.saved_model.load(target)
  images = np.random.default_rng(0).integers(0, 256, (1, 30, 60, 3),
                                             dtype=np.uint8)
  expected = loaded.signatures['serving_default'](images=images)
  out = loaded.signatures['serve_float'](
      images=tf.constant(images / 255.0, tf.float32))
  for key in ('detection_boxes', 'detection_scores', 'num_detections',
              'flops', 'ponder_map'):
    np.testing.assert_allclose(out[key].numpy(), expected[key].numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=key)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'images\[0\] has no pixel above 1.*serve_float'):
    loaded.signatures['serving_default'](images=images / 255.0)
  for name, large in [('serving_default', np.ones([1, 30, 101, 3], np.uint8)),
                      ('serve_float', np.ones([1, 101, 30, 3], np.float32))]:
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'images are \d+x\d+ pixels.*max_image_size'):
      loaded.signatures[name](images=large)
