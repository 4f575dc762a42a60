"""Halting heads: map a unit's output state to halting scores in [0, 1].

`head(x)` returns `[B]` (ACT) or `[B, H, W]` (SACT) halting scores, and
`head.flops(input_shape, active)` the FLOPs per image of evaluating it under
`active` (None: everywhere).

A head whose `call` takes an `active` argument (`SACTHaltingHead`) is told by
the block where its scores are used: the positions its unit has just
evaluated. Elsewhere its scores may be anything in [0, 1].
`SACTHaltingHead.scores_from_rows` gives the scores from the rows of the
state that `sact_tf.layers.SACTBlock` keeps around the active positions.
"""

import keras
import tensorflow as tf

from sact_tf import flops as flops_lib
from sact_tf import sparse as sparse_lib
from sact_tf.layers import common


class _HaltingHead(keras.layers.Layer):
  """Shared configuration of the halting heads."""

  # Depends on its config and variables only: a block may run one head's
  # graph with another's weights (see `sact_tf.layers.blocks`).
  config_and_weights_only = True

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

  Called as `head(x, active)` with batch norm in inference mode and
  `sparse=True`, the local term is computed at the `active` positions only
  and the other scores are zero, unless at least `dense_fraction` of the
  batch's positions are active. The 3x3 conv to one channel runs as a matmul
  to its 9 taps, summed over each position's neighbours; it equals the
  `local_conv` layer (whose variables it uses) up to float rounding.

  Args: as `ACTHaltingHead`, and `sparse`, `dense_fraction` as for
  `sact_tf.layers.BottleneckUnit`.
  """

  def __init__(self, sparse=True,
               dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION, **kwargs):
    super().__init__(**kwargs)
    self.sparse = sparse_lib.validate_sparse(sparse)
    self.dense_fraction = sparse_lib.validate_dense_fraction(dense_fraction)
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

  def call(self, x, active=None, training=None):
    global_logit = self.global_conv(self._global_features(x, training))
    dense = lambda: self._dense(x, global_logit, training)
    if active is None or training or not self.sparse:
      return dense()
    return tf.switch_case(
        sparse_lib.choose_path(active, self.dense_fraction), {
            sparse_lib.NOTHING_ACTIVE: lambda: tf.zeros_like(x[..., 0]),
            sparse_lib.ALL_ACTIVE: dense,
            sparse_lib.DENSE_MASKED: dense,
            sparse_lib.GATHERED:
                lambda: self._gathered(x, active, global_logit),
        })

  def _taps(self, rows, training):
    """Each of the 9 taps of the local 3x3 conv at rows `[n, C]` of the state.

    Returns `[9, n]`. A conv layer with one output channel (and im2col) is
    slow; one matmul gives every kernel tap at every row, and a position's
    logit sums the taps that its neighbours contribute to it.
    """
    kernel = tf.reshape(self.local_conv.kernel, [9, self.channels])
    if self.leakiness is None and not training:
      # Inference batch norm is affine: folded into the kernel, it costs
      # no pass over the state.
      bn = self.local_bn
      scale = bn.gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)
      offset = bn.beta - bn.moving_mean * scale
      return (tf.matmul(kernel * scale, rows, transpose_b=True)
              + tf.linalg.matvec(kernel, offset)[:, tf.newaxis])
    normalised = self.local_bn(rows[tf.newaxis, tf.newaxis],
                               training=training)[0, 0]
    return tf.matmul(kernel, self._activation(normalised), transpose_b=True)

  def _dense(self, x, global_logit, training):
    shape = tf.shape(x)
    taps = tf.reshape(self._taps(tf.reshape(x, [-1, self.channels]),
                                 training), tf.concat([[9], shape[:3]], 0))
    taps = tf.pad(taps, [[0, 0], [0, 0], [1, 1], [1, 1]])
    local = tf.add_n([taps[3 * i + j, :, i:i + shape[1], j:j + shape[2]]
                      for i in range(3) for j in range(3)])
    return tf.sigmoid(local + self.local_conv.bias[0]
                      + global_logit[:, :, :, 0])

  def _gathered(self, x, active, global_logit):
    centres = sparse_lib.positions(active)
    table_mask = sparse_lib.dilate(active)
    logit = self._logits_from_rows(
        tf.gather_nd(x, sparse_lib.positions(table_mask)),
        sparse_lib.neighbour_rows(centres, table_mask), centres,
        global_logit)
    return tf.scatter_nd(centres, tf.sigmoid(logit),
                         tf.shape(x, out_type=tf.int64)[:3])

  def scores_from_rows(self, table, neighbours, centres, pooled):
    """Halting scores at some positions from the state's rows (inference).

    Args:
      table: `[m, C]` rows of the state holding every in-image 3x3
        neighbour of the centres, or a list of row blocks that concatenated
        form them.
      neighbours: int32 `[n, 9]`, the centres' windows in `table` (see
        `sact_tf.sparse.neighbour_rows`).
      centres: int64 `[n, 3]` positions of the centres.
      pooled: `[B, C]`, the spatial mean of the state of each image.

    Returns:
      `[n]`, the scores at the centres.
    """
    global_logit = self.global_conv(self._global_features(
        pooled[:, tf.newaxis, tf.newaxis], False))
    return tf.sigmoid(self._logits_from_rows(table, neighbours, centres,
                                             global_logit))

  def _logits_from_rows(self, table, neighbours, centres, global_logit):
    taps = tf.concat([self._taps(rows, False)
                      for rows in sparse_lib.row_blocks(table)], axis=1)
    # Column 0 is the zero padding that neighbour_rows points to.
    taps = tf.pad(taps, [[0, 0], [1, 0]])
    local = tf.reduce_sum(tf.gather(
        tf.reshape(taps, [-1]),
        neighbours + tf.range(9) * tf.shape(taps)[1]), axis=1)
    return (local + self.local_conv.bias[0]
            + tf.gather(global_logit[:, 0, 0, 0], centres[:, 0]))

  def flops(self, input_shape, active=None):
    global_flops = flops_lib.conv_flops(1, 1, self.channels, 1)
    if active is None:
      area = tf.cast(input_shape[1] * input_shape[2], tf.int64)
      return flops_lib.conv_flops(area, 3, self.channels, 1) + global_flops
    num_active, _ = flops_lib.position_counts(active, input_shape[1],
                                              input_shape[2])
    return (flops_lib.conv_flops(num_active, 3, self.channels, 1)
            + flops_lib.any_active(active) * global_flops)

  def get_config(self):
    config = super().get_config()
    config.update(sparse=self.sparse, dense_fraction=self.dense_fraction)
    return config
