"""Halting heads: map a unit's output state to halting scores in [0, 1].

Both heads subclass `sact_tf.layers.protocols.HaltingHead`, which states
what the blocks call. `head(x)` returns `[B]` (ACT) or `[B, H, W]` (SACT)
halting scores, and `head.flops(input_shape, active)` the FLOPs per image of
evaluating it under `active` (None: everywhere).

Under a mixed-precision policy the heads compute in float32 (their dtype
policy is float32 unless one is given): Keras casts the state they are
called on, and the scores, which the halting bookkeeping accumulates, keep
float32's precision, so halting decisions match those of a float32 model
(a head costs a small fraction of its unit).

A head whose `call` takes an `active` argument (`SACTHaltingHead`) is told by
the block where its scores are used: the positions its unit has just
evaluated. Elsewhere its scores may be anything in [0, 1].
`SACTHaltingHead.scores_from_rows` gives the scores from the rows of the
state that `sact_tf.layers.SACTBlock` keeps around the active positions.
"""

import keras
import tensorflow as tf

from sact_tf import architectures
from sact_tf import flops as flops_lib
from sact_tf import sparse as sparse_lib
from sact_tf.layers import common
from sact_tf.layers import protocols


def _pool_and_moments(x):
  """(per-image mean `[B, C]`, mean `[C]`, biased variance `[C]`) of
  `[B, P, C]`, the moments as `tf.nn.moments` computes them over B and P.

  The mean comes from the pooled means, so the state is read twice (the pool
  and the squared differences). Plain TF ops: XLA was slower for these
  reductions over the middle and outer axes (see docs/performance.md).
  """
  pooled = tf.reduce_mean(x, axis=1)
  mean = tf.reduce_mean(pooled, axis=0)
  return pooled, mean, tf.reduce_mean(tf.math.squared_difference(x, mean),
                                      axis=[0, 1])


@tf.function(jit_compile=True)
def _add_affine(product, x, scale, offset):
  """product + x * scale + offset in one pass (XLA)."""
  return product + x * scale + offset


def _taps_gradient(d_taps, d_pooled, mean, variance, x, kernel, gamma, beta,
                   epsilon):
  """The gradient of `_batch_normalised_taps`, written out.

  Returns the gradients with respect to x, kernel, gamma and beta, given
  those with respect to the taps and the pool (the moments are outputs for
  the moving statistics only; nothing differentiates them). With s = gamma
  / sqrt(var + eps) and o = beta - mean * s, the taps are (kernel * s) @
  rows^T + kernel @ o; the rows' gradient is dtaps^T @ (kernel * s) plus a
  per-channel affine function of the rows (through the moments) and, per
  image, the pool's gradient: one pass over the state, where automatic
  differentiation makes several.
  """
  batch, height, width, channels = tf.unstack(tf.shape(x))
  area = height * width
  rows = tf.reshape(x, [-1, channels])
  count = tf.cast(batch * area, x.dtype)
  inverse = tf.math.rsqrt(variance + epsilon)
  scale = gamma * inverse
  offset = beta - mean * scale
  folded = kernel * scale
  d_folded = tf.matmul(d_taps, rows)
  d_tap_sums = tf.reduce_sum(d_taps, axis=1)
  d_offset = tf.linalg.matvec(kernel, d_tap_sums, transpose_a=True)
  d_scale = tf.reduce_sum(d_folded * kernel, axis=0) - d_offset * mean
  d_variance = -0.5 * d_scale * gamma * inverse ** 3
  d_mean = -d_offset * scale
  # d var / d row = 2 (row - mean) / n, d mean / d row = 1 / n, and
  # d pooled[b] / d row = 1 / (H W) for the rows of image b.
  row_scale = 2.0 * d_variance / count
  row_offset = (d_mean / count - row_scale * mean
                + d_pooled / tf.cast(area, x.dtype))
  d_x = _add_affine(
      tf.reshape(tf.matmul(d_taps, folded, transpose_a=True),
                 [batch, area, channels]),
      tf.reshape(x, [batch, area, channels]), row_scale,
      row_offset[:, tf.newaxis])
  d_kernel = d_folded * scale + d_tap_sums[:, tf.newaxis] * offset
  return (tf.reshape(d_x, tf.shape(x)), d_kernel, d_scale * inverse,
          d_offset)


@tf.RegisterGradient('SactTrainingTaps')
def _batch_normalised_taps_gradient(op, d_taps, d_pooled, *unused_grads):
  """`_taps_gradient` for the IdentityN that ends `_batch_normalised_taps`
  inside control flow; its inputs are the function's outputs, then the
  tensors the gradient reads."""
  (_, _, mean, variance, x, kernel, gamma, beta, epsilon) = op.inputs
  return [None] * 4 + list(_taps_gradient(
      d_taps, d_pooled, mean, variance, x, kernel, gamma, beta,
      epsilon)) + [None]


def _taps_and_moments(x, kernel, gamma, beta, epsilon):
  """The forward pass of `_batch_normalised_taps`."""
  batch, height, width, channels = tf.unstack(tf.shape(x))
  pooled, mean, variance = _pool_and_moments(
      tf.reshape(x, [batch, height * width, channels]))
  scale = gamma * tf.math.rsqrt(variance + epsilon)
  offset = beta - mean * scale
  taps = (tf.matmul(kernel * scale, tf.reshape(x, [-1, channels]),
                    transpose_b=True)
          + tf.linalg.matvec(kernel, offset)[:, tf.newaxis])
  return [taps, pooled, mean, variance]


def _batch_normalised_taps(x, kernel, gamma, beta, epsilon):
  """The taps of `kernel` on the batch-normalised state, and its pool.

  Args:
    x: the state `[B, H, W, C]`; kernel: `[9, C]`; gamma, beta: `[C]`, the
      batch norm's; epsilon: float.

  Returns:
    (taps `[9, B * H * W]`, `kernel @ BN(x)^T` with batch norm in training
    mode over the rows of `x`; pooled `[B, C]`, the spatial mean of `x`;
    mean `[C]`, variance `[C]`, the batch's moments, for the moving
    statistics: their gradient is not propagated).

  The normalisation is folded into the kernel (no normalised copy of the
  state), and inside a `tf.function` the gradient is the written-out one of
  `_taps_gradient`. Inside control flow (the blocks' loops) it is attached
  as a registered gradient of an `IdentityN` that takes the tensors it
  reads as inputs: `tf.custom_gradient` cannot be used there, its gradient
  reads tensors of the forward function, which the gradient of a switch
  inside a while loop cannot reach. At the top level of a function,
  where the registered gradient would not be used (a `GradientTape` looks
  gradients up by op type), it is a `tf.custom_gradient`. Eagerly, the
  gradient is the automatic one of the same expression.
  """
  gamma = tf.convert_to_tensor(gamma)
  beta = tf.convert_to_tensor(beta)
  if tf.executing_eagerly():
    return _taps_and_moments(x, kernel, gamma, beta, epsilon)
  graph = tf.compat.v1.get_default_graph()
  if getattr(graph, 'is_control_flow_graph', False):
    outputs = _taps_and_moments(x, kernel, gamma, beta, epsilon)
    with graph.gradient_override_map({'IdentityN': 'SactTrainingTaps'}):
      return tf.identity_n(outputs + [x, kernel, gamma, beta,
                                      tf.constant(epsilon, x.dtype)])[:4]

  @tf.custom_gradient
  def taps_with_gradient(x, kernel, gamma, beta):
    taps, pooled, mean, variance = _taps_and_moments(x, kernel, gamma, beta,
                                                     epsilon)

    def gradient(d_taps, d_pooled, *unused_grads):
      return _taps_gradient(d_taps, d_pooled, mean, variance, x, kernel,
                            gamma, beta, epsilon)

    return (taps, pooled, mean, variance), gradient

  return list(taps_with_gradient(x, kernel, gamma, beta))


class _HaltingHead(protocols.HaltingHead):
  """Shared configuration of the halting heads."""

  # Depends on its config and variables only: a block may run one head's
  # graph with another's weights (see `sact_tf.layers.protocols`).
  config_and_weights_only = True

  def __init__(self, halting_bias_init=-3.0, bn_momentum=0.997,
               bn_epsilon=1e-5, leakiness=None, weight_decay=0.0, **kwargs):
    kwargs.setdefault('dtype', 'float32')
    super().__init__(**kwargs)
    self.halting_bias_init = architectures.finite_float(
        'halting_bias_init', halting_bias_init, ' (the initial halting logit)')
    self.bn_momentum, self.bn_epsilon = architectures.validate_batch_norm(
        bn_momentum, bn_epsilon)
    self.leakiness = architectures.validate_leakiness(leakiness,
                                                      allow_none=True)
    self.weight_decay = architectures.validate_weight_decay(weight_decay)

  def _activation(self, x):
    # The authors' CIFAR heads put a leaky ReLU after their batch norms.
    if self.leakiness is None:
      return x
    return common.leaky_relu(x, self.leakiness)

  def _global_logit(self, x, training, pooled=None):
    """`global_conv(a(BN(pool(x))))`, `[B]`; `pooled` `[B, C]`: pool(x) if
    known (then `x` is not read)."""
    if pooled is None:
      pooled = tf.reduce_mean(x, axis=[1, 2])
    features = self._activation(self.global_bn(
        pooled[:, tf.newaxis, tf.newaxis], training=training))
    # The 1x1 conv as a matmul: a conv layer call on a [B, 1, 1, C] input
    # costs about a millisecond here, a matmul microseconds.
    conv = self.global_conv
    logit = tf.matmul(features[:, 0, 0],
                      tf.reshape(conv.kernel, [self.channels, 1]))[:, 0]
    if conv.use_bias:
      logit += conv.bias[0]
    return logit

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
                                       self.bn_epsilon, self.dtype_policy)
    self.global_conv = common.conv(
        1, 1, 'global_conv', weight_decay=self.weight_decay,
        bias_initializer=keras.initializers.Constant(self.halting_bias_init),
        dtype=self.dtype_policy)

  def build(self, input_shape):
    self.channels = int(input_shape[-1])
    pooled = (input_shape[0], 1, 1, self.channels)
    self.global_bn.build(pooled)
    self.global_conv.build(pooled)

  def call(self, x, training=None):
    return tf.sigmoid(self._global_logit(x, training))

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

  Called as `head(x, active)` with batch norm in inference mode and the
  execution setting `sparse=True` (`sact_tf.sparse.current_execution()`,
  which the blocks and models set), the local term is computed at the `active` positions only
  and the other scores are zero, unless at least `dense_fraction` of the
  batch's positions are active. The 3x3 conv to one channel runs as a matmul
  to its 9 taps, summed over each position's neighbours; it equals the
  `local_conv` layer (whose variables it uses) up to float rounding.

  Args: as `ACTHaltingHead`.
  """

  def __init__(self, **kwargs):
    sparse_lib.refuse_layer_settings(type(self).__name__, kwargs)
    super().__init__(**kwargs)
    policy = self.dtype_policy
    self.local_bn = common.batch_norm('local_bn', self.bn_momentum,
                                      self.bn_epsilon, policy)
    self.local_conv = common.conv(
        1, 3, 'local_conv', weight_decay=self.weight_decay,
        bias_initializer=keras.initializers.Constant(self.halting_bias_init),
        dtype=policy)
    self.global_bn = common.batch_norm('global_bn', self.bn_momentum,
                                       self.bn_epsilon, policy)
    self.global_conv = common.conv(1, 1, 'global_conv', use_bias=False,
                                   weight_decay=self.weight_decay,
                                   dtype=policy)

  def build(self, input_shape):
    self.channels = int(input_shape[-1])
    pooled = (input_shape[0], 1, 1, self.channels)
    self.local_bn.build(input_shape)
    self.local_conv.build(input_shape)
    self.global_bn.build(pooled)
    self.global_conv.build(pooled)

  def call(self, x, active=None, training=None):
    if training and self.leakiness is None and self.local_bn.trainable:
      return self._training_scores(x)
    global_logit = self._global_logit(x, training)
    dense = lambda: self._dense(x, global_logit, training)
    settings = sparse_lib.current_execution()
    if active is None or training or not settings.sparse:
      return dense()
    return tf.switch_case(
        sparse_lib.choose_path(active, settings.dense_fraction), {
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
    if self.leakiness is not None or training:
      normalised = self.local_bn(rows[tf.newaxis, tf.newaxis],
                                 training=training)[0, 0]
      return tf.matmul(kernel, self._activation(normalised), transpose_b=True)
    # Inference batch norm is affine: folded into the kernel, it costs no
    # pass over the state.
    scale, offset = sparse_lib.batch_norm_affine(self.local_bn)
    return (tf.matmul(kernel * scale, rows, transpose_b=True)
            + tf.linalg.matvec(kernel, offset)[:, tf.newaxis])

  def _training_scores(self, x):
    """`call` in training, without an activation after the batch norms.

    The local batch norm is then affine with the batch's moments, and is
    folded into the 3x3 kernel with the pooling of the global term and a
    written-out gradient (`_batch_normalised_taps`): several passes over the
    state fewer than the layers' own ops, forward and backward. The moving
    statistics are updated as a Keras batch norm updates them.
    """
    bn = self.local_bn
    taps, pooled, mean, variance = _batch_normalised_taps(
        x, tf.reshape(self.local_conv.kernel, [9, self.channels]), bn.gamma,
        bn.beta, bn.epsilon)
    bn.moving_mean.assign(bn.moving_mean * bn.momentum
                          + mean * (1.0 - bn.momentum))
    bn.moving_variance.assign(bn.moving_variance * bn.momentum
                              + variance * (1.0 - bn.momentum))
    global_logit = self._global_logit(x, True, pooled)
    return self._scores_from_taps(taps, tf.shape(x), global_logit)

  def _dense(self, x, global_logit, training):
    return self._scores_from_taps(
        self._taps(tf.reshape(x, [-1, self.channels]), training), tf.shape(x),
        global_logit)

  def _scores_from_taps(self, taps, shape, global_logit):
    """Scores `[B, H, W]` from `_taps` at every position of a state of
    `shape`."""
    taps = tf.reshape(taps, tf.concat([[9], shape[:3]], 0))
    # One tap map each before slicing: a slice of the stacked maps would
    # have a gradient the size of all nine.
    taps = tf.unstack(tf.pad(taps, [[0, 0], [0, 0], [1, 1], [1, 1]]), 9)
    local = tf.add_n([taps[3 * i + j][:, i:i + shape[1], j:j + shape[2]]
                      for i in range(3) for j in range(3)])
    return tf.sigmoid(local + self.local_conv.bias[0]
                      + global_logit[:, tf.newaxis, tf.newaxis])

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
    dtype = self.compute_dtype
    table = [tf.cast(rows, dtype) for rows in sparse_lib.row_blocks(table)]
    global_logit = self._global_logit(None, False, tf.cast(pooled, dtype))
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
            + tf.gather(global_logit, centres[:, 0]))

  def flops(self, input_shape, active=None):
    global_flops = flops_lib.conv_flops(1, 1, self.channels, 1)
    if active is None:
      area = tf.cast(input_shape[1] * input_shape[2], tf.int64)
      return flops_lib.conv_flops(area, 3, self.channels, 1) + global_flops
    num_active, _ = flops_lib.position_counts(active, input_shape[1],
                                              input_shape[2])
    return (flops_lib.conv_flops(num_active, 3, self.channels, 1)
            + flops_lib.any_active(active) * global_flops)
