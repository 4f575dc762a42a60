"""What exports may replace, and the serving checks of encoded bytes.

The folder rules, versions included (`BASE/<version>/`), are checked with a
stand-in archive (no model to trace), on local folders and TensorFlow's
in-memory `ram://`; `tests/test_experiments_serving.py` and
`tests/test_export_versions.py` run them through `experiments.export`.
"""

import io
import logging
import os
import uuid

import numpy as np
from PIL import features
from PIL import Image
import pytest
import tensorflow as tf

from sact_tf import export
from sact_tf.detection import config as config_lib
from sact_tf.detection import export as detection_export
from sact_tf.detection import training


class FakeArchive:
  """Writes what an `ExportArchive` would, with `content` as the model
  (through tf.io.gfile, so `ram://` works too)."""

  def __init__(self, content=b'model', fail=False):
    self.content = content
    self.fail = fail

  def write_out(self, path, verbose=False):
    del verbose
    tf.io.gfile.makedirs(os.path.join(path, 'variables'))
    with tf.io.gfile.GFile(os.path.join(path, 'saved_model.pb'), 'wb') as f:
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
  with tf.io.gfile.GFile(os.path.join(export_dir, 'saved_model.pb'),
                         'rb') as f:
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
  rename = tf.io.gfile.rename

  def fail_to_move_in(source, destination, overwrite=False):
    if (destination == os.path.realpath(target)
        and not os.path.basename(source).startswith('.export-old-')):
      assert not os.path.exists(target)
      raise OSError('disk went away')
    return rename(source, destination, overwrite)
  monkeypatch.setattr(tf.io.gfile, 'rename', fail_to_move_in)
  with pytest.raises(OSError, match='disk went away'):
    export.write_archive(FakeArchive(b'new'), target, run_dir=run)
  assert _snapshot(target) == before
  assert not _leftovers(tmp_path)


# Versions: BASE/<version>/, TF Serving's layout.


def test_versions_sit_side_by_side_with_the_rules_per_version(run, tmp_path):
  base = str(tmp_path / 'serving')
  seven, action = export.check_version_dir(base, 7, run)
  assert (seven, action) == (os.path.join(base, '7'), 'new')
  export.write_archive(FakeArchive(b'seven'), seven, run_dir=run)
  eight, _ = export.check_version_dir(base, 8, run)
  export.write_archive(FakeArchive(b'eight'), eight, run_dir=run)
  # BASE may hold other things: TF Serving only reads numbered folders.
  _write(os.path.join(base, 'notes.txt'), b'mine')
  assert sorted(os.listdir(base)) == ['7', '8', 'notes.txt']
  kept = _snapshot(eight)

  # The same run's version is replaced, named any way.
  assert export.check_version_dir(base, 7, run + '/') == (seven, 'same_run')
  export.write_archive(FakeArchive(b'seven again'), seven, run_dir=run)
  assert _model(seven) == b'seven again'
  # Another run's needs --overwrite.
  other = str(tmp_path / 'other_run')
  with pytest.raises(FileExistsError,
                     match=r'Version 7 of --export_dir=.*serving \(.*'
                           r'serving/7\) holds an export of another run '
                           r'\(.*run\): choose another version '
                           r'\(--version=N\) or pass --overwrite'):
    export.check_version_dir(base, 7, other)
  assert export.check_version_dir(base, 7, other, overwrite=True) == (
      seven, 'overwrite')
  export.write_archive(FakeArchive(b'other'), seven, overwrite=True,
                       run_dir=other)
  assert export.read_marker(seven)['run_dir'] == os.path.realpath(other)
  # So does a version folder holding anything else; a file never is one.
  _write(os.path.join(base, '9', 'holiday.jpg'), b'mine')
  with pytest.raises(FileExistsError, match=r'serving/9\) is not empty and '
                                            r'is not an export of this run'):
    export.check_version_dir(base, 9, run)
  _write(os.path.join(base, '10'), b'mine')
  with pytest.raises(FileExistsError, match=r'serving/10\) is a file, not a '
                                            r'folder'):
    export.check_version_dir(base, 10, run, overwrite=True)
  assert _snapshot(eight) == kept
  assert (tmp_path / 'serving' / 'notes.txt').read_bytes() == b'mine'
  assert not _leftovers(base)


@pytest.mark.parametrize('overwrite', [False, True])
def test_a_base_is_never_a_run_nor_holds_one(run, tmp_path, overwrite):
  holder = tmp_path / 'holder'
  _write(str(holder / 'old_run' / 'ckpt-3.index'))
  _write(str(tmp_path / 'file'), b'mine')
  _write(str(tmp_path / 'old_layout' / 'saved_model.pb'), b'theirs')
  before = _snapshot(tmp_path)
  for base, message in [
      (run, 'is the run directory.*even with --overwrite'),
      (str(tmp_path), 'contains the run directory.*even with --overwrite'),
      (str(holder), 'looks like a run directory.*even with'),
      (str(tmp_path / 'file'), r'is a file, not a folder'),
      (str(tmp_path / 'old_layout'), r'holds a SavedModel itself.*Move that '
                                     r'model into a version folder \(e\.g\. '
                                     r'.*old_layout/1\)')]:
    with pytest.raises(ValueError, match=f'--export_dir={base} {message}'):
      export.check_version_dir(base, 1, run, overwrite=overwrite)
    with pytest.raises(ValueError, match=message):
      export.check_export_base(base, run)
  # Without its name, the run is still recognised by its files.
  with pytest.raises(ValueError, match='looks like a run directory'):
    export.check_version_dir(run, 1, overwrite=overwrite)
  assert _snapshot(tmp_path) == before


def test_versions_are_integers_and_default_to_the_checkpoint_step(tmp_path):
  assert export.version_dir('gs://bucket/models/', 3) == 'gs://bucket/models/3'
  assert export.version_dir(str(tmp_path), np.int64(0)) == str(tmp_path / '0')
  for bad in (-1, 1.5, '2', True, None):
    with pytest.raises(ValueError, match='non-negative integer'):
      export.version_dir(str(tmp_path), bad)
  weights = tf.Variable(1.0)
  # The step variable (training's checkpoints) wins over the name.
  prefix = tf.train.Checkpoint(weights=weights, step=tf.Variable(
      1234, dtype=tf.int64)).write(str(tmp_path / 'a' / 'ckpt-99'))
  assert export.checkpoint_step(prefix) == 1234
  prefix = tf.train.Checkpoint(weights=weights).write(
      str(tmp_path / 'b' / 'model.ckpt-55'))
  assert export.checkpoint_step(prefix) == 55
  prefix = tf.train.Checkpoint(weights=weights).write(
      str(tmp_path / 'c' / 'weights'))
  with pytest.raises(ValueError, match='global step.*--version=N'):
    export.checkpoint_step(prefix)


def _ram_base(name):
  return f'ram://{name}_{uuid.uuid4().hex[:8]}'


def test_ram_exports_go_through_gfile_and_nothing_local(run, tmp_path,
                                                       monkeypatch, caplog):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  base = _ram_base('serving')
  # TensorFlow's ram:// renames a folder's entry, not its files.
  assert export.renames_folders(str(tmp_path))
  assert not export.renames_folders(base)
  three, action = export.check_version_dir(base, 3, run)
  assert (three, action) == (base + '/3', 'new')
  caplog.set_level(logging.WARNING)
  export.write_archive(FakeArchive(b'first'), three, run_dir=run)
  assert 'cannot rename folders: writing the export in place' in caplog.text
  export.write_archive(FakeArchive(b'four'), base + '/4', run_dir=run)
  assert export.read_marker(three)['run_dir'] == os.path.realpath(run)
  assert export.check_version_dir(base, 3, run) == (three, 'same_run')
  export.write_archive(FakeArchive(b'second'), three, run_dir=run)
  assert _model(three) == b'second'
  assert sorted(tf.io.gfile.listdir(three)) == [
      export.MARKER_FILENAME, 'saved_model.pb', 'variables']
  with pytest.raises(FileExistsError, match='holds an export of another run'):
    export.check_version_dir(base, 3, str(tmp_path / 'other'))
  # No probe or temporary folder is left, and nothing was written locally.
  assert sorted(tf.io.gfile.listdir(base)) == ['3', '4']
  assert _model(base + '/4') == b'four'
  assert os.listdir(cwd) == []
  assert sorted(os.listdir(tmp_path)) == ['cwd', 'run']
  tf.io.gfile.rmtree(base)


def test_without_folder_renames_the_export_is_written_in_place(
    run, monkeypatch, caplog):
  base = _ram_base('unimplemented')
  export.write_archive(FakeArchive(b'old'), base + '/1', run_dir=run)

  def unimplemented(source, destination, overwrite=False):
    raise tf.errors.UnimplementedError(None, None, 'no folder renames here')
  monkeypatch.setattr(tf.io.gfile, 'rename', unimplemented)
  assert not export.renames_folders(base)
  caplog.set_level(logging.WARNING)
  export.write_archive(FakeArchive(b'new'), base + '/1', run_dir=run)
  assert 'cannot rename folders' in caplog.text
  assert _model(base + '/1') == b'new'
  assert tf.io.gfile.listdir(base) == ['1']
  # In place, an interrupted export loses the old one and leaves a folder
  # without the marker, which only --overwrite replaces.
  with pytest.raises(RuntimeError, match='interrupted'):
    export.write_archive(FakeArchive(b'newer', fail=True), base + '/1',
                         run_dir=run)
  with pytest.raises(FileExistsError, match='without sact_export.json'):
    export.check_version_dir(base, 1, run)
  export.write_archive(FakeArchive(b'newest'), base + '/1', run_dir=run,
                       overwrite=True)
  assert _model(base + '/1') == b'newest'
  tf.io.gfile.rmtree(base)


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
  with pytest.raises(ValueError, match='is the run directory'):
    detection_export.export_versioned(model, run, 1, run_dir=run)
  base = str(tmp_path / 'detector')
  target = detection_export.export_versioned(
      model, base, 5, min_size=48, max_size=80, max_image_size=100,
      run_dir=run)
  assert target == os.path.join(base, '5')
  assert os.listdir(base) == ['5']
  marker = export.read_marker(target)
  assert marker['max_image_size'] == 100
  assert marker['signatures'] == ['serving_default', 'serve_float']
  assert marker['run_dir'] == os.path.realpath(run)
  assert marker['precision'] == 'float32'
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
