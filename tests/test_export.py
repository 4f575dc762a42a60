import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sact_tf import export, models, viz

MAX_IMAGE_SIZE = 100
MAX_ENCODED_SIZE = 120


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  model = models.imagenet_resnet(units=[1, 2, 1, 2], base_channels=2,
                                 model_type='sact', num_classes=7)
  model(tf.zeros([1, 32, 32, 3]))
  export_dir = os.path.join(tmp_path_factory.mktemp('export'), 'model')
  export.export_saved_model(model, export_dir, image_size=64,
                            max_image_size=MAX_IMAGE_SIZE,
                            max_encoded_size=MAX_ENCODED_SIZE)
  return model, export_dir


@pytest.fixture(name='loaded', scope='module')
def _loaded(exported):
  return tf.saved_model.load(exported[1])


def reference(model, images):
  out = model(tf.cast(images, tf.float32) / 127.5 - 1.0, training=False)
  return out, tf.nn.softmax(out['logits']).numpy()


def test_reloaded_image_signature_gives_the_keras_numbers(exported, loaded):
  model, _ = exported
  images = np.random.default_rng(0).integers(0, 255, (2, 50, 70, 3),
                                             dtype=np.uint8)
  out = loaded.signatures['serving_default'](images=tf.constant(images))
  ref, probabilities = reference(model, images)
  np.testing.assert_allclose(out['probabilities'].numpy(), probabilities,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(out['flops'].numpy(), ref['flops'].numpy())
  np.testing.assert_allclose(out['ponder_cost'].numpy(),
                             ref['ponder_cost'].numpy(), rtol=1e-6)
  np.testing.assert_array_equal(out['top_classes'].numpy()[:, 0],
                                probabilities.argmax(-1))
  assert out['ponder_map'].shape == (2, 13, 18)
  assert out['ponder_map_resized'].shape == (2, 50, 70)
  expected_map = viz.total_ponder_map(ref, (13, 18)).numpy()
  np.testing.assert_allclose(out['ponder_map'].numpy(), expected_map,
                             rtol=1e-6)


def test_encoded_signature_applies_eval_preprocessing(exported, loaded):
  model, _ = exported
  image = np.random.default_rng(1).integers(0, 255, (80, 60, 3),
                                            dtype=np.uint8)
  png = tf.io.encode_png(image).numpy()
  out = loaded.signatures['serve_encoded'](encoded=tf.constant([png, png]))
  expected = model(export.central_crop_and_resize(image, 64)[tf.newaxis],
                   training=False)
  np.testing.assert_allclose(out['probabilities'].numpy()[0],
                             tf.nn.softmax(expected['logits'])[0].numpy(),
                             rtol=1e-5, atol=1e-7)
  assert out['ponder_map_resized'].shape == (2, 64, 64)


def test_bad_requests_fail_clearly_and_serving_goes_on(loaded):
  serve = loaded.signatures['serving_default']
  with pytest.raises(tf.errors.InvalidArgumentError, match='Unknown image'):
    loaded.signatures['serve_encoded'](encoded=tf.constant([b'not an image']))
  with pytest.raises(tf.errors.InvalidArgumentError, match='Empty batch'):
    serve(images=tf.zeros([0, 32, 32, 3], tf.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='must be RGB'):
    serve(images=tf.zeros([1, 32, 32, 4], tf.uint8))
  out = serve(images=tf.fill([1, 40, 40, 3], tf.constant(128, tf.uint8)))
  assert out['probabilities'].shape == (1, 7)


def test_saved_model_cli_runs_the_signature(exported, tmp_path):
  model, export_dir = exported
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  inputs = os.path.join(tmp_path, 'images.npy')
  images = np.random.default_rng(2).integers(0, 255, (1, 40, 48, 3),
                                             dtype=np.uint8)
  np.save(inputs, images)
  out_dir = os.path.join(tmp_path, 'out')
  result = subprocess.run(
      [cli, 'run', '--dir', export_dir, '--tag_set', 'serve',
       '--signature_def', 'serving_default', '--inputs', f'images={inputs}',
       '--outdir', out_dir], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  _, probabilities = reference(model, images)
  np.testing.assert_allclose(
      np.load(os.path.join(out_dir, 'probabilities.npy')), probabilities,
      rtol=1e-5, atol=1e-7)


@pytest.fixture(name='plain', scope='module')
def _plain(tmp_path_factory):
  """A plain ResNet of the SACT model's layout, exported and reloaded."""
  model = models.imagenet_resnet(units=[1, 2, 1, 2], base_channels=2,
                                 model_type='resnet', num_classes=7)
  model(tf.zeros([1, 32, 32, 3]))
  export_dir = os.path.join(tmp_path_factory.mktemp('export'), 'plain')
  export.export_saved_model(model, export_dir, image_size=64)
  return model, tf.saved_model.load(export_dir)


def test_a_plain_resnet_serves_the_same_outputs_as_sact(exported, loaded,
                                                        plain):
  model, plain_loaded = plain
  images = np.random.default_rng(7).integers(0, 255, (2, 50, 70, 3),
                                             dtype=np.uint8)
  for name in ('serving_default', 'serve_float', 'serve_encoded'):
    signature = plain_loaded.signatures[name]
    sact = loaded.signatures[name]
    assert signature.structured_input_signature == (
        sact.structured_input_signature)
    assert {k: (v.dtype, v.shape.rank)
            for k, v in signature.structured_outputs.items()} == {
                k: (v.dtype, v.shape.rank)
                for k, v in sact.structured_outputs.items()}
  out = plain_loaded.signatures['serving_default'](images=tf.constant(images))
  ref, probabilities = reference(model, images)
  np.testing.assert_allclose(out['probabilities'].numpy(), probabilities,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(out['flops'].numpy(), ref['flops'].numpy())
  # An ACT model that never halts early: L + 1 per block, everywhere.
  total = (1 + 1) + (2 + 1) + (1 + 1) + (2 + 1)
  np.testing.assert_array_equal(out['ponder_cost'].numpy(), [total, total])
  # At the first block's resolution, as the SACT model's map.
  sact_out = loaded.signatures['serving_default'](images=tf.constant(images))
  assert out['ponder_map'].shape == sact_out['ponder_map'].shape == (2, 13,
                                                                      18)
  np.testing.assert_array_equal(out['ponder_map'].numpy(), total)
  assert out['ponder_map_resized'].shape == (2, 50, 70)
  np.testing.assert_array_equal(out['ponder_map_resized'].numpy(), total)
  assert np.all(sact_out['ponder_cost'].numpy() <= total)
  assert export.read_marker(exported[1])['precision'] == 'float32'


@pytest.mark.parametrize('family, sizes', [
    ('imagenet', [(1, 1), (7, 9), (50, 70), (33, 64)]),
    ('cifar', [(1, 2), (31, 17)])])
def test_first_block_size_is_the_ponder_map_size(family, sizes):
  make = models.imagenet_resnet if family == 'imagenet' else (
      lambda **kw: models.cifar_resnet(units=[1, 1, 1], **kw))
  kwargs = dict(model_type='act', base_channels=4)
  if family == 'imagenet':
    kwargs['units'] = [1, 1, 1, 1]
  model = make(**kwargs)
  for height, width in sizes:
    out = model(tf.zeros([1, height, width, 3]), training=False)
    first = viz.block_ponder_maps(out)[0]
    assert tuple(int(d) for d in export.first_block_size(
        model, height, width)) == tuple(first.shape[1:3])


def _uint8_images(shape, seed=4):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_float_images_in_0_1_are_refused_by_the_uint8_signature(loaded):
  # Python casts a float NumPy array to the signature's uint8 on the way in:
  # [0, 1] pixels arrive as a black image.
  floats = np.random.default_rng(5).random((2, 40, 40, 3))
  for serve in (loaded.signatures['serving_default'],
                lambda images: loaded.serving_default(images)):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'images\[0\] has no pixel above 1.*serve_float'):
      serve(images=floats)
  # The offending item is named.
  mixed = np.stack([_uint8_images((40, 40, 3)),
                    (floats[1] * 255 > 254).astype(np.uint8)])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'images\[1\] '):
    loaded.signatures['serving_default'](images=mixed)


def test_serve_float_is_serving_default_on_pixels_over_255(loaded):
  images = _uint8_images((2, 36, 44, 3))
  expected = loaded.signatures['serving_default'](images=tf.constant(images))
  out = loaded.signatures['serve_float'](
      images=tf.constant(images / 255.0, tf.float32))
  for key in ('probabilities', 'ponder_cost', 'ponder_map_resized'):
    np.testing.assert_allclose(out[key].numpy(), expected[key].numpy(),
                               rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_array_equal(out['flops'].numpy(),
                                expected['flops'].numpy())
  # A truly black image is served there; [0, 255] pixels are refused.
  black = loaded.signatures['serve_float'](images=tf.zeros([1, 32, 32, 3]))
  assert black['probabilities'].shape == (1, 7)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'images\[1\] has values outside \[0, 1\] '
                           r'\(from 0 to 255\).*serving_default'):
    loaded.signatures['serve_float'](
        images=tf.constant(images.astype(np.float32)) * [[[[0.0]]], [[[1]]]])


def test_images_above_the_size_limit_are_refused_in_every_signature(
    exported, loaded):
  assert export.read_marker(exported[1])['max_image_size'] == MAX_IMAGE_SIZE
  assert (export.read_marker(exported[1])['max_encoded_size']
          == MAX_ENCODED_SIZE)
  large = _uint8_images((1, 30, MAX_IMAGE_SIZE + 1, 3))
  message = (rf'images are 30x{MAX_IMAGE_SIZE + 1} pixels.*at most '
             rf'{MAX_IMAGE_SIZE} pixels.*--max_image_size')
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    loaded.signatures['serving_default'](images=large)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    loaded.signatures['serve_float'](images=large / 255.0)
  fits = _uint8_images((MAX_ENCODED_SIZE, 20, 3))
  too_large = _uint8_images((MAX_ENCODED_SIZE + 1, 20, 3))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=rf'encoded\[1\]: the PNG header gives '
                           rf'{MAX_ENCODED_SIZE + 1}x20 pixels.*'
                           r'--max_encoded_size'):
    loaded.signatures['serve_encoded'](encoded=tf.constant(
        [tf.io.encode_png(fits).numpy(), tf.io.encode_png(too_large).numpy()]))
  out = loaded.signatures['serving_default'](
      images=_uint8_images((1, MAX_IMAGE_SIZE, 30, 3)))
  assert out['ponder_map_resized'].shape == (1, MAX_IMAGE_SIZE, 30)


def test_a_corrupt_item_of_an_encoded_batch_is_named(loaded):
  image = _uint8_images((40, 30, 3))
  png = tf.io.encode_png(image).numpy()
  jpeg = tf.io.encode_jpeg(image).numpy()
  serve = loaded.signatures['serve_encoded']
  for batch, message in [
      ([png, jpeg[:-100], png], r'encoded\[1\] is a JPEG that does not end '
                                r'with the end-of-image marker FF D9'),
      ([jpeg, png, png[:-12]], r'encoded\[2\] is a PNG that does not end '
                               r'with its IEND chunk'),
      ([png, b''], r'encoded\[1\] is empty'),
      ([png, b'/photos/cat.jpg'], r'encoded\[1\]: Unknown image format'),
  ]:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      serve(encoded=tf.constant(batch))
  out = serve(encoded=tf.constant([png, jpeg]))
  assert out['probabilities'].shape == (2, 7)


def test_saved_model_cli_refuses_a_float_npy(exported, tmp_path):
  _, export_dir = exported
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  inputs = os.path.join(tmp_path, 'images.npy')
  np.save(inputs, np.random.default_rng(6).random((1, 40, 48, 3)))
  result = subprocess.run(
      [cli, 'run', '--dir', export_dir, '--tag_set', 'serve',
       '--signature_def', 'serving_default', '--inputs', f'images={inputs}',
       '--outdir', os.path.join(tmp_path, 'out')],
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'images[0] has no pixel above 1' in result.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'out'))
