"""experiments.import_checkpoint, ponder_map and export, end to end.

The README's path from the authors' download to a ponder map of your own
photo, with the authors' tiny oracle checkpoint standing in for a download.
"""

import glob
import json
import os

from absl import app
import numpy as np
import pytest
import sklearn
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import cifar10
from experiments import export as export_binary
from experiments import imagenet
from experiments import import_checkpoint
from experiments import ponder_map
from sact_tf import checkpoints, inference, models, viz
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib

ORACLE = os.path.join(os.path.dirname(__file__), 'data', 'oracle',
                      'imagenet_sact_tiny')
PHOTOS = os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'images')
ORACLE_FLAGS = ['--dataset=imagenet', '--model=2,3,4,2', '--base_channels=8',
                '--num_classes=7']


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  for binary in (import_checkpoint, ponder_map, export_binary, imagenet,
                 cifar10):
    binary.FLAGS.unparse_flags()


def _import(*args):
  import_checkpoint.FLAGS.unparse_flags()
  return import_checkpoint.main(['import_checkpoint', *args])


def _decode_png(path):
  with open(path, 'rb') as f:
    return tf.io.decode_png(f.read()).numpy()


@pytest.fixture(name='oracle_run', scope='module')
def _oracle_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('imported') / 'oracle')
  _import(f'--checkpoint={ORACLE}.ckpt', f'--model_dir={model_dir}',
          *ORACLE_FLAGS)
  import_checkpoint.FLAGS.unparse_flags()
  return model_dir


def test_imported_oracle_reproduces_the_authors_outputs(oracle_run):
  config, model, _ = checkpointing.load_run(oracle_run)
  assert config.model_fields() == dict(
      family='imagenet', units=[2, 3, 4, 2], model_type='sact',
      num_classes=7, base_channels=8)
  assert config.data.preprocessing == 'inception'
  oracle = np.load(ORACLE + '.npz')
  out = model(tf.constant(oracle['images']), training=False)
  error = np.abs(out['logits'].numpy() - oracle['logits']).max()
  assert error <= 1e-4 * np.abs(oracle['logits']).max()
  for block in model.block_names:
    np.testing.assert_array_equal(out[f'{block}/num_units'].numpy(),
                                  oracle[f'{block}/num_units'])
  np.testing.assert_array_equal(out['flops'].numpy(), oracle['flops'][:, 0])


def test_ponder_maps_of_photos_from_the_imported_model(oracle_run, tmp_path,
                                                        capsys):
  output_dir = tmp_path / 'maps'
  results = ponder_map.main([
      'ponder_map', f'--model_dir={oracle_run}',
      f'--images={PHOTOS}/*.jpg', f'--output_dir={output_dir}',
      '--image_size=160'])
  printed = capsys.readouterr().out
  assert sorted(os.listdir(output_dir)) == sorted(
      f'{name}_{kind}.png' for name in ('china', 'flower')
      for kind in ('ponder', 'overlay', 'colorbar'))
  _, model, _ = checkpointing.load_run(oracle_run)
  for name in ('china', 'flower'):
    path = os.path.join(PHOTOS, name + '.jpg')
    image = inference.resize_longer_side(inference.read_image(path), 160)
    assert image.shape[:2] == (107, 160)
    for kind in ('ponder', 'overlay'):
      assert _decode_png(output_dir / f'{name}_{kind}.png').shape == (
          107, 160, 3)
    assert _decode_png(output_dir / f'{name}_colorbar.png').shape[-1] == 3
    # The map is the model's own summed ponder cost on the [-1, 1] image.
    out = model(tf.constant(image[None], tf.float32) / 127.5 - 1.0,
                training=False)
    expected = viz.total_ponder_map(out, (107, 160))[0].numpy()
    np.testing.assert_allclose(results[path].ponder_map, expected, rtol=1e-5)
    line = next(l for l in printed.splitlines() if l.startswith(name))
    low, mean, high = (float(v) for v in line.split()[2:5])
    assert (low, mean, high) == pytest.approx(
        (expected.min(), expected.mean(), expected.max()), abs=0.006)
    # Per-image scale: the map's minimum is the first colour, its maximum
    # the last.
    heat = _decode_png(output_dir / f'{name}_ponder.png')
    table = np.round(viz.colormap_table() * 255)
    at_min = np.unravel_index(expected.argmin(), expected.shape)
    at_max = np.unravel_index(expected.argmax(), expected.shape)
    np.testing.assert_allclose(heat[at_min], table[0], atol=1)
    np.testing.assert_allclose(heat[at_max], table[-1], atol=1)


def test_export_of_the_imported_model_serves_its_numbers(oracle_run,
                                                         tmp_path):
  export_dir = str(tmp_path / 'serving')
  version_dir = export_binary.main(['export', f'--model_dir={oracle_run}',
                                    f'--export_dir={export_dir}'])
  _, model, prefix = checkpointing.load_run(oracle_run)
  # TF Serving's layout: <export_dir>/<the checkpoint's step>/.
  step = prefix.rsplit('-', 1)[1]
  assert version_dir == os.path.join(export_dir, step)
  assert os.listdir(export_dir) == [step]
  images = np.random.default_rng(0).integers(0, 255, (2, 48, 40, 3),
                                             dtype=np.uint8)
  served = tf.saved_model.load(version_dir).signatures['serving_default'](
      images=tf.constant(images))
  out = model(tf.constant(images, tf.float32) / 127.5 - 1.0, training=False)
  np.testing.assert_allclose(served['probabilities'].numpy(),
                             tf.nn.softmax(out['logits']).numpy(),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(served['flops'].numpy(), out['flops'].numpy())
  assert served['ponder_map_resized'].shape == (2, 48, 40)


@pytest.mark.slow
def test_finetune_from_the_imported_model(oracle_run, tmp_path,
                                          tmp_path_factory):
  """Two-stage training from an import, onto a dataset with 10 classes."""
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  model_dir = tmp_path / 'act'
  imagenet.main([
      'imagenet', f'--model_dir={model_dir}', f'--finetune_from={oracle_run}',
      '--model_type=act', '--model=2,3,4,2', '--base_channels=8',
      '--dataset=clutter_digits', f'--data_dir={data_dir}',
      '--mode=train', '--train_steps=1', '--batch_size=2',
      '--image_size=32', '--learning_rate=1e-9'])
  saved = config_lib.load(str(model_dir))
  assert saved.run.init_mode == 'finetune'
  assert saved.run.init_model['num_classes'] == 7
  _, tuned, _ = checkpointing.load_run(str(model_dir))
  _, source, _ = checkpointing.load_run(oracle_run)
  weights = {v.path: v.numpy() for v in source.variables}
  kernel = 'resnet_v2/block2/unit_1/conv2/kernel'
  np.testing.assert_allclose(
      [v for v in tuned.variables if v.path == kernel][0].numpy(),
      weights[kernel], atol=1e-6)
  assert tuned.num_classes == 10


def _authors_checkpoint(tmp_path, make, name):
  """A random model written in the authors' naming: (model, prefix)."""
  model = make()
  model(tf.zeros([1, 32, 32, 3]))
  folder = tmp_path / name
  folder.mkdir()
  return model, checkpoints.save_authors_checkpoint(
      model, str(folder / 'model.ckpt'), global_step=1234)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['imagenet', 'cifar10'])
def test_imported_checkpoint_evaluates_with_mode_eval(family, tmp_path):
  if family == 'imagenet':
    make = lambda: models.imagenet_resnet(units=[1, 2, 1, 1],
                                          base_channels=4, model_type='sact')
    flags = ['--dataset=imagenet', '--model=1,2,1,1', '--base_channels=4']
    binary, split = imagenet, 'validation'
  else:
    make = lambda: models.cifar_resnet([1, 2, 1], model_type='act')
    flags = ['--dataset=cifar10', '--model_type=act', '--model=1,2,1']
    binary, split = cifar10, 'test'
  model, prefix = _authors_checkpoint(tmp_path, make, 'authors')
  model_dir = tmp_path / 'imported'
  _import(f'--checkpoint={prefix}', f'--model_dir={model_dir}', *flags)
  _, imported, _ = checkpointing.load_run(str(model_dir))
  x = tf.random.stateless_normal([2, 32, 32, 3], [1, 2])
  np.testing.assert_array_equal(imported(x)['logits'].numpy(),
                                model(x)['logits'].numpy())
  # --mode=eval takes the model from the run's config.json.
  with tfds.testing.mock_data(num_examples=4):
    binary.main([family, f'--model_dir={model_dir}', '--mode=eval',
                 '--image_size=32', '--eval_batch_size=2'])
  summary = json.loads((model_dir / f'eval_{split}_32px.json').read_text())
  assert summary['num_examples'] == 4
  assert summary['step'] == 1234
  assert summary['model'] == config_lib.load(str(model_dir)).model_fields()


@pytest.mark.parametrize('args, message', [
    (['--model_type=act'], 'does not match the model'),
    (['--model=2,3,5,2'], 'does not match the model'),
    (['--num_classes=1001'], 'with a different shape'),
])
def test_import_refuses_a_model_that_does_not_fit(args, message, tmp_path):
  flags = [f for f in ORACLE_FLAGS
           if f.split('=')[0] not in [a.split('=')[0] for a in args]]
  with pytest.raises(app.UsageError, match=message):
    _import(f'--checkpoint={ORACLE}.ckpt', f'--model_dir={tmp_path / "x"}',
            *flags, *args)
  assert not (tmp_path / 'x').exists()


def test_import_refuses_truncated_checkpoints_and_used_dirs(tmp_path,
                                                            oracle_run):
  truncated = tmp_path / 'truncated.ckpt'
  for suffix in ('.index', '.data-00000-of-00001'):
    with open(ORACLE + '.ckpt' + suffix, 'rb') as f:
      content = f.read()
    with open(str(truncated) + suffix, 'wb') as f:
      f.write(content[:len(content) // 2] if suffix != '.index' else content)
  with pytest.raises(app.UsageError, match='truncated or corrupt'):
    _import(f'--checkpoint={truncated}', f'--model_dir={tmp_path / "y"}',
            *ORACLE_FLAGS)
  with pytest.raises(app.UsageError, match='already holds a run'):
    _import(f'--checkpoint={ORACLE}.ckpt', f'--model_dir={oracle_run}',
            *ORACLE_FLAGS)
  with pytest.raises(app.UsageError, match='Cannot read checkpoint'):
    _import(f'--checkpoint={tmp_path / "nothing"}',
            f'--model_dir={tmp_path / "z"}', *ORACLE_FLAGS)


def test_tools_explain_what_is_missing(tmp_path):
  with pytest.raises(app.UsageError, match='--images is required'):
    ponder_map.main(['ponder_map', f'--model_dir={tmp_path}',
                     f'--output_dir={tmp_path}'])
  with pytest.raises(FileNotFoundError, match='No config.json'):
    export_binary.main(['export', f'--model_dir={tmp_path}',
                        f'--export_dir={tmp_path / "e"}'])
  with pytest.raises(app.UsageError, match='No image files match'):
    ponder_map.main(['ponder_map', f'--model_dir={tmp_path}',
                     f'--images={tmp_path}/*.jpg',
                     f'--output_dir={tmp_path}'])


def _tiny_run(model_dir, family='cifar', model_type='sact'):
  config = config_lib.ExperimentConfig(
      model=dict(family=family,
                 units=[1, 1, 1] if family == 'cifar' else [1, 1, 1, 1],
                 model_type=model_type, num_classes=10, base_channels=4),
      data=dict(dataset='cifar10' if family == 'cifar' else 'imagenet2012',
                preprocessing='cifar' if family == 'cifar' else 'inception',
                image_size=32, eval_image_sizes=[32]),
      run=dict(model_dir=str(model_dir)))
  model = config.build_model(image_size=32)
  checkpointing.write_model_checkpoint(model, str(model_dir))
  config_lib.save(config)
  return model


def test_ponder_map_of_a_plain_resnet_is_refused(tmp_path):
  _tiny_run(tmp_path, model_type='resnet')
  with pytest.raises(app.UsageError, match='no ponder maps'):
    ponder_map.main(['ponder_map', f'--model_dir={tmp_path}',
                     f'--images={PHOTOS}/china.jpg',
                     f'--output_dir={tmp_path / "maps"}'])


def test_cifar_export_standardises_like_training(tmp_path):
  model = _tiny_run(tmp_path / 'run')
  export_dir = export_binary.main(['export', f'--model_dir={tmp_path / "run"}',
                                   f'--export_dir={tmp_path / "serving"}'])
  # The version is the checkpoint's step (0 here).
  assert export_dir == str(tmp_path / 'serving' / '0')
  assert oct(os.stat(export_dir).st_mode & 0o777) != '0o700'
  image = np.random.default_rng(3).integers(0, 255, (1, 32, 32, 3),
                                            dtype=np.uint8)
  served = tf.saved_model.load(export_dir).signatures['serving_default'](
      images=tf.constant(image))
  out = model(tf.image.per_image_standardization(
      tf.constant(image, tf.float32)), training=False)
  np.testing.assert_allclose(served['probabilities'].numpy(),
                             tf.nn.softmax(out['logits']).numpy(),
                             rtol=1e-5, atol=1e-7)


def test_output_names_are_distinct():
  assert ponder_map.output_names(['a/x.jpg', 'b/x.png', 'c/x_2.jpg']) == [
      'x', 'x_2', 'x_2_2']


def test_read_image_errors(tmp_path):
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image')
  with pytest.raises(ValueError, match='bad.jpg is not a JPEG'):
    inference.read_image(str(bad))
  with pytest.raises(FileNotFoundError):
    inference.read_image(str(tmp_path / 'none.jpg'))
  assert glob.glob(str(tmp_path / '*')) == [str(bad)]


def _listing(folder):
  """Every file under `folder`, relative, with its size."""
  return sorted((os.path.relpath(os.path.join(path, name), folder),
                 os.path.getsize(os.path.join(path, name)))
                for path, _, names in os.walk(folder) for name in names)


def test_export_never_writes_over_a_run_directory(tmp_path):
  run = tmp_path / 'run'
  _tiny_run(run)
  (run / 'train').mkdir()
  (run / 'train' / 'events.out.tfevents.1.host').write_bytes(b'logs')
  (run / 'eval_test_32px.json').write_text('{}')
  other = tmp_path / 'other'
  _tiny_run(other)
  before = _listing(tmp_path)
  for export_dir, message in [(run, 'is the run directory'),
                              (tmp_path, 'contains the run directory'),
                              (other, 'looks like a run directory')]:
    for overwrite in ([], ['--overwrite']):
      with pytest.raises(app.UsageError,
                         match=message + '.*even with --overwrite'):
        export_binary.main(['export', f'--model_dir={run}',
                            f'--export_dir={export_dir}', *overwrite])
      export_binary.FLAGS.unparse_flags()
  assert _listing(tmp_path) == before


def test_export_replaces_its_own_run_or_with_overwrite(tmp_path, capsys):
  run = tmp_path / 'run'
  model = _tiny_run(run)
  # The rules apply to the version folder: <base>/<step>, step 0 here.
  base = tmp_path / 'serving'
  export_dir = base / '0'
  export_dir.mkdir(parents=True)
  (export_dir / 'notes.txt').write_text('mine')
  (base / 'README').write_text('not a version: left alone')

  def export(*args, model_dir=run):
    export_binary.FLAGS.unparse_flags()
    export_binary.main(['export', f'--model_dir={model_dir}',
                        f'--export_dir={base}', *args])
    return capsys.readouterr().out

  with pytest.raises(app.UsageError,
                     match=r'serving/0\) is not empty and is not an export '
                           r'of this run: choose another version '
                           r'\(--version=N\) or pass --overwrite to replace '
                           r'it'):
    export()
  assert os.listdir(export_dir) == ['notes.txt']
  assert 'replacing its contents, --overwrite' in export('--overwrite')
  assert not (export_dir / 'notes.txt').exists()
  assert sorted(os.listdir(base)) == ['0', 'README']
  marker = json.loads((export_dir / 'sact_export.json').read_text())
  assert marker['run_dir'] == os.path.realpath(run)
  assert marker['checkpoint'].startswith(os.path.realpath(run))
  assert marker['model'] == 'sact cifar ResNet (units [1, 1, 1], 10 classes)'
  assert marker['max_image_size'] == 2048

  # The same run again: replaced without --overwrite, with the new limit.
  printed = export('--max_image_size=40')
  assert 'replacing the earlier export of this run' in printed
  assert json.loads((export_dir / 'sact_export.json').read_text())[
      'max_image_size'] == 40
  serve = tf.saved_model.load(str(export_dir)).signatures['serving_default']
  image = np.random.default_rng(4).integers(0, 255, (1, 40, 32, 3),
                                            dtype=np.uint8)
  out = model(tf.image.per_image_standardization(
      tf.constant(image, tf.float32)), training=False)
  np.testing.assert_allclose(serve(images=image)['probabilities'].numpy(),
                             tf.nn.softmax(out['logits']).numpy(),
                             rtol=1e-5, atol=1e-7)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'images are 41x32 pixels.*--max_image_size'):
    serve(images=np.ones([1, 41, 32, 3], np.uint8))

  # Another run's export is not this run's to replace.
  other = tmp_path / 'other'
  _tiny_run(other, model_type='act')
  with pytest.raises(app.UsageError,
                     match=r'holds an export of another run .*--overwrite'):
    export(model_dir=other)
  assert json.loads((export_dir / 'sact_export.json').read_text())[
      'run_dir'] == os.path.realpath(run)
