"""Halting heads: map a unit's output state to halting scores in [0, 1].

`head(x)` returns `[B]` (ACT) or `[B, H, W]` (SACT) halting scores, and
`head.flops(input_shape, active)` the FLOPs per image of evaluating it under
`active` (None: everywhere).
"""

import keras
import tensorflow as tf

from sact_tf import flops as flops_lib
from sact_tf.layers import common


class _HaltingHead(keras.layers.Layer):
  """Shared configuration of the halting heads."""

  def __init__(self, halting_bias_init=-3.0, bn_momentum=0.997,
               bn_epsilon=1e-5, leakiness=None, weight_decay=0.0, **kwargs):
    super().__init__(**kwargs)
    self.halting_bias_init = float(halting_bias_init)
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.leakiness = leakiness
    self.weight_decay = weight_decay

  def _activation(self, x):
    # The authors' CIFAR heads put a leaky ReLU after their batch norms.
    if self.leakiness is None:
      return x
    return common.leaky_relu(x, self.leakiness)

  def _global_features(self, x, training):
    pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    return self._activation(self.global_bn(pooled, training=training))

  def get_config(self):
    config = super().get_config()
    config.update(halting_bias_init=self.halting_bias_init,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  leakiness=self.leakiness, weight_decay=self.weight_decay)
    return config


@keras.saving.register_keras_serializable('sact_tf')
class ACTHaltingHead(_HaltingHead):
  """ACT halting score, paper eq. (6): sigmoid(W BN(pool(x)) + b), `[B]`.

  Args:
    halting_bias_init: initial bias b (-3: sigmoid(-3) ~ 0.047, so at first
      almost every unit runs).
    bn_momentum, bn_epsilon: batch norm settings.
    leakiness: slope of a leaky ReLU after the batch norm (CIFAR: 0.1), or
      None for no activation (ImageNet).
    weight_decay: Keras L2 factor on the kernel.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.global_bn = common.batch_norm('global_bn', self.bn_momentum,
                                       self.bn_epsilon)
    self.global_conv = common.conv(
        1, 1, 'global_conv', weight_decay=self.weight_decay,
        bias_initializer=keras.initializers.Constant(self.halting_bias_init))

  def build(self, input_shape):
    self.channels = int(input_shape[-1])
    pooled = (input_shape[0], 1, 1, self.channels)
    self.global_bn.build(pooled)
    self.global_conv.build(pooled)

  def call(self, x, training=None):
    logit = self.global_conv(self._global_features(x, training))
    return tf.sigmoid(logit[:, 0, 0, 0])

  def flops(self, input_shape, active=None):
    per_image = flops_lib.conv_flops(1, 1, self.channels, 1)
    if active is None:
      return tf.constant(per_image, tf.int64)
    return flops_lib.any_active(active) * per_image


@keras.saving.register_keras_serializable('sact_tf')
class SACTHaltingHead(_HaltingHead):
  """SACT halting scores, paper eq. (14), `[B, H, W]`.

  sigmoid(conv3x3(BN(x)) + W BN(pool(x)) + b): a local 3x3 conv to one
  channel (its bias is the halting bias) plus a global linear term without
  bias. With the 3x3 weights at zero every position gets the same score and
  the head equals `ACTHaltingHead`.

  Args: as `ACTHaltingHead`.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.local_bn = common.batch_norm('local_bn', self.bn_momentum,
                                      self.bn_epsilon)
    self.local_conv = common.conv(
        1, 3, 'local_conv', weight_decay=self.weight_decay,
        bias_initializer=keras.initializers.Constant(self.halting_bias_init))
    self.global_bn = common.batch_norm('global_bn', self.bn_momentum,
                                       self.bn_epsilon)
    self.global_conv = common.conv(1, 1, 'global_conv', use_bias=False,
                                   weight_decay=self.weight_decay)

  def build(self, input_shape):
    self.channels = int(input_shape[-1])
    pooled = (input_shape[0], 1, 1, self.channels)
    self.local_bn.build(input_shape)
    self.local_conv.build(input_shape)
    self.global_bn.build(pooled)
    self.global_conv.build(pooled)

  def call(self, x, training=None):
    local = self.local_conv(
        self._activation(self.local_bn(x, training=training)))
    logit = local + self.global_conv(self._global_features(x, training))
    return tf.sigmoid(logit[..., 0])

  def flops(self, input_shape, active=None):
    global_flops = flops_lib.conv_flops(1, 1, self.channels, 1)
    if active is None:
      area = tf.cast(input_shape[1] * input_shape[2], tf.int64)
      return flops_lib.conv_flops(area, 3, self.channels, 1) + global_flops
    num_active, _ = flops_lib.position_counts(active, input_shape[1],
                                              input_shape[2])
    return (flops_lib.conv_flops(num_active, 3, self.channels, 1)
            + flops_lib.any_active(active) * global_flops)
