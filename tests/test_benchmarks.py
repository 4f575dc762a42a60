"""The benchmarks' own arithmetic (their timings are not tested)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import plain_speed
from benchmarks import serving_speed
from sact_tf import models


def test_conv_macs_counts_every_convolution_once():
  model = keras.Sequential([
      keras.Input((None, None, 3)),
      keras.layers.Conv2D(4, 3, strides=2, padding='same'),
      keras.layers.Conv2D(8, 1),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(5)])
  # 8x8 -> 4x4: 16 * 3*3*3*4 + 16 * 4*8 + 8*5.
  assert plain_speed.conv_macs(model, 8) == 16 * 108 + 16 * 32 + 40


def test_conv_macs_agree_with_the_package_flops():
  # The package counts 2 FLOPs per multiply-accumulate of every convolution
  # (the classifier is a 1x1 one); shortcut convolutions are made at build.
  model = models.imagenet_resnet(units=[1, 2, 1, 1], base_channels=4,
                                 num_classes=3, model_type='resnet')
  macs = plain_speed.conv_macs(model, 64)
  flops = model(tf.zeros([1, 64, 64, 3]), training=False)['flops']
  assert 2 * macs == int(flops[0])


def test_serving_scenes_are_deterministic_uint8_images():
  first = serving_speed.scenes(2, 24, 32, seed=3)
  assert first.shape == (2, 24, 32, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, serving_speed.scenes(2, 24, 32, seed=3))
  # Shapes on a gradient: more than a handful of distinct colours.
  assert len(np.unique(first[0].reshape(-1, 3), axis=0)) > 100


def test_bisect_finds_the_offset_of_a_decreasing_ratio():
  offset, ratio = serving_speed.bisect(lambda o: 1 / (1 + np.exp(o)), 0.3)
  assert abs(ratio - 0.3) < 2e-3
  assert abs(offset - np.log(0.7 / 0.3)) < 1e-2
  # Out of reach: the closest end.
  offset, ratio = serving_speed.bisect(lambda o: 0.9, 0.5, steps=5)
  assert ratio == 0.9


def test_halting_scales_kernels_and_offsets_biases():
  model = models.imagenet_resnet(units=[1, 2, 1, 1], base_channels=4,
                                 num_classes=3, model_type='sact')
  model(tf.zeros([1, 32, 32, 3]), training=False)
  (((local, global_), bias),) = serving_speed.halting_heads(model)
  assert local.shape[:2] == (3, 3) and global_.shape[:2] == (1, 1)
  before = [local.numpy(), global_.numpy()]
  halting = serving_speed.Halting(model, spread=4.0, global_factor=0.5)
  halting.set_offset(2.5)
  np.testing.assert_allclose(local.numpy(), 4 * before[0])
  np.testing.assert_allclose(global_.numpy(), 0.5 * before[1])
  np.testing.assert_allclose(bias.numpy(), [-0.5])
  halting.set_offset(-1.0)
  np.testing.assert_allclose(bias.numpy(), [-4.0])
  plain = models.imagenet_resnet(units=[1, 2, 1, 1], base_channels=4,
                                 num_classes=3, model_type='resnet')
  plain(tf.zeros([1, 32, 32, 3]), training=False)
  with pytest.raises(ValueError, match="model_type='sact'"):
    serving_speed.halting_heads(plain)
