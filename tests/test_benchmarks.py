"""The benchmarks' own arithmetic (their timings are not tested)."""

import keras
import tensorflow as tf

from benchmarks import plain_speed
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
