import numpy as np
import pytest
import tensorflow as tf

from sact_tf.data import preprocessing


def _png(image):
  return tf.io.encode_png(tf.constant(image, tf.uint8))


def _ramp(height=8, width=8):
  """Distinct pixel values, so that crops can be recognised."""
  values = np.arange(height * width * 3).reshape(height, width, 3) % 251
  return values.astype(np.uint8)


def test_central_crop_keeps_the_centre_and_maps_the_box():
  image = _ramp()
  out, bbox = preprocessing.central_crop_eval(
      _png(image), 4, 'png', crop_fraction=0.5,
      bbox=tf.constant([0.25, 0.25, 0.75, 0.625]))
  # A 4x4 crop resized to 4x4 is the crop itself, scaled to [-1, 1].
  np.testing.assert_allclose(out.numpy(), image[2:6, 2:6] / 127.5 - 1.0,
                             atol=1e-5)
  np.testing.assert_allclose(bbox.numpy(), [0.0, 0.0, 1.0, 0.75], atol=1e-6)


def test_central_crop_clips_boxes_outside_the_crop():
  _, bbox = preprocessing.central_crop_eval(
      _png(_ramp()), 4, 'png', crop_fraction=0.5,
      bbox=tf.constant([0.0, 0.5, 0.5, 1.0]))
  np.testing.assert_allclose(bbox.numpy(), [0.0, 0.5, 0.5, 1.0], atol=1e-6)


def test_jpeg_and_png_decode_the_same_crop():
  image = np.full((16, 12, 3), 100, np.uint8)
  image[4:12, 3:9] = 200
  jpeg = tf.io.encode_jpeg(tf.constant(image), quality=100)
  from_jpeg, _ = preprocessing.central_crop_eval(jpeg, 8, 'jpeg', 0.875)
  from_png, _ = preprocessing.central_crop_eval(_png(image), 8, 'png', 0.875)
  assert from_jpeg.shape == (8, 8, 3)
  np.testing.assert_allclose(from_jpeg.numpy(), from_png.numpy(), atol=0.05)


def test_inception_train_is_seeded_and_in_range():
  image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)
  encoded = _png(image)
  args = dict(image_size=16, image_format='png')
  a = preprocessing.inception_train(encoded, tf.constant([1, 2]), **args)
  b = preprocessing.inception_train(encoded, tf.constant([1, 2]), **args)
  c = preprocessing.inception_train(encoded, tf.constant([1, 3]), **args)
  assert a.shape == (16, 16, 3)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.allclose(a.numpy(), c.numpy())
  assert a.numpy().min() >= -1.0 and a.numpy().max() <= 1.0


def test_inception_crop_keeps_a_fully_covered_box():
  # A white object on black: a crop covering all of it keeps every white
  # pixel, so the output's white area is at least the object's share.
  image = np.zeros((64, 64, 3), np.uint8)
  image[20:36, 30:46] = 255
  box = tf.constant([20 / 64, 30 / 64, 36 / 64, 46 / 64])
  for seed in range(8):
    out = preprocessing.inception_train(
        _png(image), tf.constant([seed, 0]), 64, 'png', bbox=box,
        area_range=(0.1, 1.0), min_object_covered=1.0, flip=False,
        color_distortion=False).numpy()
    white_share = (out[..., 0] > 0.5).mean()
    assert white_share >= (16 * 16) / (64 * 64) * 0.9


def test_cifar_train_without_randomness_is_standardisation():
  image = _ramp(32, 32)
  out = preprocessing.cifar_train(_png(image), tf.constant([0, 0]), 32,
                                  pad=0, flip=False)
  expected = tf.image.per_image_standardization(tf.constant(image)).numpy()
  np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
  padded = preprocessing.cifar_train(_png(image), tf.constant([4, 2]), 32)
  assert padded.shape == (32, 32, 3)
  assert abs(float(tf.reduce_mean(padded))) < 1e-4


def test_cifar_eval_resizes_when_asked():
  image = _ramp(32, 32)
  same = preprocessing.cifar_eval(_png(image), 32)
  np.testing.assert_allclose(
      same.numpy(),
      tf.image.per_image_standardization(tf.constant(image)).numpy(),
      atol=1e-5)
  assert preprocessing.cifar_eval(_png(image), 40).shape == (40, 40, 3)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='image_format'):
    preprocessing.cifar_eval(_png(_ramp()), 8, 'gif')
  with pytest.raises(ValueError, match='crop_fraction'):
    preprocessing.central_crop_eval(_png(_ramp()), 8, 'png', 1.5)
