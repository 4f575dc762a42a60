"""Pre-activation residual units following the `unit(x, active)` protocol.

Both units subclass `sact_tf.layers.protocols.ResidualUnit`, which states
what the blocks call. A unit is called as `unit(x, active)` and returns the
new state:

* `active is None`: the unit is evaluated everywhere (the first unit of a
  block, which may change stride and channels, and every unit of a plain
  ResNet).
* `active` is a bool mask, `[B]` (ACT: whole images) or `[B, H, W]` (SACT:
  positions): the unit leaves the state unchanged where it is False. Stride
  and channels must not change then.

`unit.flops(input_shape, active)` gives the FLOPs per image (int64, a scalar
when `active is None`, else `[B]`) of evaluating the unit under `active`, by
the paper's convention: the first 1x1 conv over the active set dilated by a
3x3 window, the other convs over the active set.

Sparse evaluation (the execution setting `sparse=True` of
`sact_tf.sparse.current_execution()`, which the blocks and models set; the
default): under a mask, a unit with
nothing active returns `x`, and one with everything active computes densely
without masking. Otherwise, with batch norm in inference mode (`training`
falsy) and a `[B, H, W]` mask, it computes its residual only where it is
needed (`sact_tf.sparse`): its first conv on the active positions' 3x3
neighbourhoods, the rest at the active positions, added into the state in
place; unless at least `dense_fraction` of the batch's positions are active,
when dense evaluation and masking is faster. The outputs equal those of dense
evaluation up to float rounding. Training-mode calls and `[B]` masks (ACT)
compute densely and mask: batch statistics over gathered positions would
differ from those of the dense computation, and `sact_tf.layers.ACTBlock`
compacts its batch itself. `sparse=False` always computes densely and masks.
A unit holds no execution settings of its own.

For the blocks' inference loops the units also give their residual
branch alone (new state = x + residual, for units under a mask):
`dense_residual(x, training)` everywhere, `gathered_residual(x, active)` at
the active positions, and (`BottleneckUnit`) `residual_from_rows(table,
neighbours)` from rows of the state that `sact_tf.layers.SACTBlock` keeps,
and `residual_after_preact(preact, training)` from a pre-activation the
block computes itself (`preact_affine()` gives its batch norm, and
`residual_bias()` the last convolution's bias).
"""

import keras
import tensorflow as tf

from sact_tf import architectures
from sact_tf import flops as flops_lib
from sact_tf import sparse as sparse_lib
from sact_tf.layers import common
from sact_tf.layers import protocols


def _check_masked(unit, active):
  if active is None:
    return
  if unit.stride != 1:
    raise ValueError(f'{unit.name}: a unit with stride {unit.stride} changes '
                     'the resolution and must be the first unit of its block '
                     '(called with active=None).')
  if unit.depth_in != unit.depth:
    raise ValueError(f'{unit.name}: a unit changing the depth ({unit.depth_in} '
                     f'-> {unit.depth}) must be the first unit of its block '
                     '(called with active=None).')


def _call(unit, x, active, training):
  """Evaluation under `active` (see the module doc)."""
  if active is None:
    return unit.dense(x, training)
  active = tf.convert_to_tensor(active)
  _check_masked(unit, active)
  masked = lambda: _masked(unit, x, active, training)
  settings = sparse_lib.current_execution()
  if not settings.sparse:
    return masked()
  gathers = active.shape.rank == 3 and not training
  return tf.switch_case(
      sparse_lib.choose_path(active, settings.dense_fraction), {
          sparse_lib.NOTHING_ACTIVE: lambda: x,
          sparse_lib.ALL_ACTIVE: lambda: unit.dense(x, training),
          sparse_lib.DENSE_MASKED: masked,
          sparse_lib.GATHERED:
              (lambda: unit.gathered(x, active)) if gathers else masked,
      })


def _masked(unit, x, active, training):
  """The unit's output where `active`, `x` elsewhere, computed densely.

  In training, where the unit's shortcut is `x` itself (`_dense_parts`),
  as `x + where(active, residual, 0)` (`common.add_where`: a cheaper
  backward pass, the same values).
  """
  if not training:
    return common.mask_state(unit.dense(x, training), x, active)
  # One call of the parts: a second would update the batch norms twice.
  parts = unit._dense_parts  # pylint: disable=protected-access
  shortcut, residual = parts(x, training)
  if shortcut is x:
    return common.add_where(x, residual, active)
  return common.mask_state(shortcut + residual, x, active)


@keras.saving.register_keras_serializable('sact_tf')
class BottleneckUnit(protocols.ResidualUnit):
  """ImageNet pre-activation bottleneck unit (ResNet v2).

  preact = ReLU(BN(x)); shortcut = x (subsampled) when the depth is unchanged,
  else a 1x1 conv of preact with the unit's stride; residual = 1x1 (BN, ReLU)
  -> 3x3 with stride (BN, ReLU) -> 1x1 with bias. Output = shortcut +
  residual. Stride-2 3x3 convs pad symmetrically.

  Args:
    depth: output channels.
    depth_bottleneck: channels of the 1x1 and 3x3 convs inside.
    stride: stride of the 3x3 conv and of the shortcut.
    bn_momentum, bn_epsilon: batch norm settings (0.997, 1e-5 for ImageNet).
    weight_decay: Keras L2 factor on conv kernels.
  """

  # Depends on its config and variables only: a block may run one unit's
  # graph with another's weights (see `sact_tf.layers.protocols`).
  config_and_weights_only = True

  def __init__(self, depth, depth_bottleneck, stride=1, bn_momentum=0.997,
               bn_epsilon=1e-5, weight_decay=0.0, **kwargs):
    sparse_lib.refuse_layer_settings(type(self).__name__, kwargs)
    super().__init__(**kwargs)
    self.depth = architectures.positive_int('depth', depth)
    self.depth_bottleneck = architectures.positive_int('depth_bottleneck',
                                                       depth_bottleneck)
    self.stride = architectures.validate_stride(stride)
    self.bn_momentum, self.bn_epsilon = architectures.validate_batch_norm(
        bn_momentum, bn_epsilon)
    self.weight_decay = architectures.validate_weight_decay(weight_decay)
    # The sub-layers take the unit's dtype policy.
    policy = self.dtype_policy
    bn = lambda name: common.batch_norm(name, self.bn_momentum,
                                        self.bn_epsilon, policy)
    self.preact = bn('preact')
    self.conv1 = common.conv(self.depth_bottleneck, 1, 'conv1',
                             use_bias=False, weight_decay=self.weight_decay,
                             dtype=policy)
    self.conv1_bn = bn('conv1_bn')
    self.conv2 = common.conv(self.depth_bottleneck, 3, 'conv2',
                             strides=self.stride, use_bias=False,
                             weight_decay=self.weight_decay,
                             padding='same' if self.stride == 1 else 'valid',
                             dtype=policy)
    self.conv2_bn = bn('conv2_bn')
    self.conv3 = common.conv(self.depth, 1, 'conv3',
                             weight_decay=self.weight_decay, dtype=policy)
    self.shortcut = None

  def build(self, input_shape):
    # Sub-layers are built without spatial sizes: the units are fully
    # convolutional, and a static size would make Keras validate VALID convs.
    self.depth_in = int(input_shape[-1])
    input_shape = (None, None, None, self.depth_in)
    if self.depth_in != self.depth:
      self.shortcut = common.conv(self.depth, 1, 'shortcut',
                                  strides=self.stride,
                                  weight_decay=self.weight_decay,
                                  dtype=self.dtype_policy)
      self.shortcut.build(input_shape)
    self.preact.build(input_shape)
    self.conv1.build(input_shape)
    inner = (None, None, None, self.depth_bottleneck)
    self.conv1_bn.build(inner)
    self.conv2.build(inner)
    self.conv2_bn.build(inner)
    self.conv3.build(inner)

  def call(self, x, active=None, training=None):
    return _call(self, x, active, training)

  def dense(self, x, training):
    """The unit's output at every position, `[B, H', W', depth]`."""
    shortcut, residual = self._dense_parts(x, training)
    return shortcut + residual

  def dense_residual(self, x, training):
    """`dense(x) - x` of a unit under a mask: its residual branch."""
    _check_masked(self, active=True)
    return self._dense_parts(x, training)[1]

  def preact_affine(self):
    """(scale, offset) `[depth_in]`: at inference the unit's pre-activation
    is `relu(x * scale + offset)` (see `residual_after_preact`)."""
    return sparse_lib.batch_norm_affine(self.preact)

  def residual_after_preact(self, preact, training, weight=None):
    """`dense_residual(x)` given the pre-activation `relu(BN(x))`.

    For a block that computes the pre-activation itself, fused with other
    work on `x` (`sact_tf.layers.SACTBlock`); `preact_affine` gives it.
    With `weight` (`[B, H, W]`), `weight * residual + (1 - weight) *
    residual_bias()` instead: the last convolution applied to its input
    scaled by `weight`, which costs a pass over the bottleneck's channels
    rather than one over the output's.
    """
    _check_masked(self, active=True)
    return self._residual(preact, training, weight)

  def residual_bias(self):
    """`[depth]`: the residual's bias, the last convolution's."""
    if self.conv3.use_bias:
      return tf.cast(self.conv3.bias, self.compute_dtype)
    return tf.zeros([self.depth], self.compute_dtype)

  def _dense_parts(self, x, training):
    """(shortcut, residual); the shortcut is `x` itself where the unit
    keeps stride and depth (no identity slice: its gradient would be a
    pass over the state)."""
    preact = tf.nn.relu(self.preact(x, training=training))
    if self.shortcut is None and self.stride == 1:
      shortcut = x
    elif self.shortcut is None:
      shortcut = x[:, ::self.stride, ::self.stride, :]
    else:
      shortcut = self.shortcut(preact)
    return shortcut, self._residual(preact, training)

  def _residual(self, preact, training, weight=None):
    residual = tf.nn.relu(self.conv1_bn(self.conv1(preact), training=training))
    if self.stride > 1:
      residual = common.fixed_padding(residual, 3)
    residual = tf.nn.relu(self.conv2_bn(self.conv2(residual),
                                        training=training))
    if weight is not None:
      residual = residual * tf.cast(weight, residual.dtype)[..., tf.newaxis]
    return self.conv3(residual)

  def gathered(self, x, active):
    """`x` with the unit applied at the `active` positions (inference)."""
    return sparse_lib.add_rows(x, *self.gathered_residual(x, active))

  def gathered_residual(self, x, active):
    """(positions of `active`, `[n, depth]` rows of `dense(x) - x` there).

    Inference only (batch norm with its moving statistics).
    """
    centres = sparse_lib.positions(active)
    table_mask = sparse_lib.dilate(active)
    return centres, self.residual_from_rows(
        tf.gather_nd(x, sparse_lib.positions(table_mask)),
        sparse_lib.neighbour_rows(centres, table_mask))

  def residual_from_rows(self, table, neighbours):
    """`dense(x) - x` at some centres, from the state's rows around them.

    Inference only (batch norm with its moving statistics).

    Args:
      table: `[m, depth]` rows of the state holding every in-image 3x3
        neighbour of the centres, or a list of row blocks that concatenated
        form them (the 1x1 conv runs on each: no copy of the state rows).
      neighbours: int32 `[n, 9]`, the centres' windows in `table` (see
        `sact_tf.sparse.neighbour_rows`).

    Returns:
      `[n, depth]`, the residual at the centres.
    """
    def conv1(rows):
      preact = sparse_lib.batch_norm_rows(self.preact, rows, relu=True)
      return tf.nn.relu(sparse_lib.conv_batch_norm_rows(
          self.conv1, self.conv1_bn, preact))

    residual = sparse_lib.im2col(
        [conv1(rows) for rows in sparse_lib.row_blocks(table)], neighbours)
    residual = tf.nn.relu(sparse_lib.conv_batch_norm_rows(
        self.conv2, self.conv2_bn, residual))
    return sparse_lib.conv_rows(self.conv3, residual)

  def compute_output_shape(self, input_shape):
    def out(size):
      return None if size is None else common.same_size(size, self.stride)
    return (input_shape[0], out(input_shape[1]), out(input_shape[2]),
            self.depth)

  def flops(self, input_shape, active=None):
    """FLOPs per image; `input_shape` is the (dynamic) shape of `x`."""
    _check_masked(self, active)
    height, width = input_shape[1], input_shape[2]
    conv = flops_lib.conv_flops
    if active is None:
      area_in = tf.cast(height * width, tf.int64)
      area = tf.cast(common.same_size(height, self.stride)
                     * common.same_size(width, self.stride), tf.int64)
      dilated = area
    else:
      area, dilated = flops_lib.position_counts(active, height, width)
      area_in = dilated
    total = (conv(area_in, 1, self.depth_in, self.depth_bottleneck)
             + conv(area, 3, self.depth_bottleneck, self.depth_bottleneck)
             + conv(area, 1, self.depth_bottleneck, self.depth))
    if self.shortcut is not None:
      total += conv(area, 1, self.depth_in, self.depth)
    return total

  def get_config(self):
    config = super().get_config()
    config.update(depth=self.depth, depth_bottleneck=self.depth_bottleneck,
                  stride=self.stride, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, weight_decay=self.weight_decay)
    return config


@keras.saving.register_keras_serializable('sact_tf')
class CifarUnit(protocols.ResidualUnit):
  """CIFAR pre-activation basic unit, as in the authors' CIFAR models.

  preact = leakyReLU(BN(x)); shortcut = preact if `activate_before_residual`
  else x; when the depth changes, the shortcut is average-pooled by the stride
  and zero-padded evenly on both sides of the channels. Residual: 3x3 conv with
  stride (BN, leaky ReLU) -> 3x3 conv with bias. Convs use TF 'same' padding.

  The authors' code applies the leaky ReLU after the first conv twice (its
  conv and its batch norm both carry the activation), so the effective
  negative slope there is alpha**2 = 0.01. Their published CIFAR numbers and
  released checkpoint come from that model; `double_activation=True` (the
  default) reproduces it.

  Args:
    depth: output channels.
    stride: stride of the first conv and of the shortcut pooling.
    activate_before_residual: take the shortcut after the pre-activation.
    leakiness: negative slope of the leaky ReLU (0.1).
    double_activation: apply the leaky ReLU twice after the first conv.
    bn_momentum, bn_epsilon: batch norm settings (0.9, 1e-3 for CIFAR).
    weight_decay: Keras L2 factor on conv kernels.
  """

  # Depends on its config and variables only: a block may run one unit's
  # graph with another's weights (see `sact_tf.layers.protocols`).
  config_and_weights_only = True

  def __init__(self, depth, stride=1, activate_before_residual=False,
               leakiness=0.1, double_activation=True, bn_momentum=0.9,
               bn_epsilon=1e-3, weight_decay=0.0, **kwargs):
    sparse_lib.refuse_layer_settings(type(self).__name__, kwargs)
    super().__init__(**kwargs)
    self.depth = architectures.positive_int('depth', depth)
    self.stride = architectures.validate_stride(stride)
    self.activate_before_residual = architectures.validate_bool(
        'activate_before_residual', activate_before_residual)
    self.leakiness = architectures.validate_leakiness(leakiness)
    self.double_activation = architectures.validate_bool(
        'double_activation', double_activation)
    self.bn_momentum, self.bn_epsilon = architectures.validate_batch_norm(
        bn_momentum, bn_epsilon)
    self.weight_decay = architectures.validate_weight_decay(weight_decay)
    # The sub-layers take the unit's dtype policy.
    policy = self.dtype_policy
    self.preact = common.batch_norm('preact', self.bn_momentum,
                                    self.bn_epsilon, policy)
    self.conv1 = common.conv(self.depth, 3, 'conv1', strides=self.stride,
                             use_bias=False, weight_decay=self.weight_decay,
                             dtype=policy)
    self.conv1_bn = common.batch_norm('conv1_bn', self.bn_momentum,
                                      self.bn_epsilon, policy)
    self.conv2 = common.conv(self.depth, 3, 'conv2',
                             weight_decay=self.weight_decay, dtype=policy)

  def build(self, input_shape):
    self.depth_in = int(input_shape[-1])
    if self.depth_in > self.depth or (self.depth - self.depth_in) % 2:
      raise ValueError(f'{self.name}: the zero-padded shortcut needs an even '
                       f'channel increase, got {self.depth_in} -> '
                       f'{self.depth}.')
    input_shape = (None, None, None, self.depth_in)
    self.preact.build(input_shape)
    self.conv1.build(input_shape)
    inner = (None, None, None, self.depth)
    self.conv1_bn.build(inner)
    self.conv2.build(inner)

  def call(self, x, active=None, training=None):
    return _call(self, x, active, training)

  def _activation(self, x):
    return common.leaky_relu(x, self.leakiness)

  def _conv1_activation(self, x):
    x = self._activation(x)
    return self._activation(x) if self.double_activation else x

  def dense_residual(self, x, training):
    """`dense(x) - x` of a unit under a mask."""
    _check_masked(self, active=True)
    return self.dense(x, training) - x

  def dense(self, x, training):
    """The unit's output at every position, `[B, H', W', depth]`."""
    shortcut, residual = self._dense_parts(x, training)
    return shortcut + residual

  def _dense_parts(self, x, training):
    """(shortcut, residual) of `dense`; the shortcut is `x` itself unless
    it is activated, pooled or padded."""
    preact = self._activation(self.preact(x, training=training))
    shortcut = preact if self.activate_before_residual else x
    residual = self._conv1_activation(
        self.conv1_bn(self.conv1(preact), training=training))
    residual = self.conv2(residual)
    if self.depth_in != self.depth:
      shortcut = tf.nn.avg_pool2d(shortcut, self.stride, self.stride, 'SAME')
      pad = (self.depth - self.depth_in) // 2
      shortcut = tf.pad(shortcut, [[0, 0], [0, 0], [0, 0], [pad, pad]])
    return shortcut, residual

  def gathered(self, x, active):
    """`x` with the unit applied at the `active` positions (inference)."""
    return sparse_lib.add_rows(x, *self.gathered_residual(x, active))

  def gathered_residual(self, x, active):
    """(positions of `active`, `[n, depth]` rows of `dense(x) - x` there).

    Inference only (batch norm with its moving statistics).
    """
    centres = sparse_lib.positions(active)
    # conv2 at the active positions reads conv1 on their 3x3 neighbourhoods
    # (`middle`), which reads the pre-activation one step further (`outer`).
    middle = sparse_lib.dilate(active)
    outer = sparse_lib.dilate(middle)
    preact_rows = lambda positions: self._activation(
        sparse_lib.batch_norm_rows(self.preact, tf.gather_nd(x, positions)))
    residual = sparse_lib.im2col(
        preact_rows(sparse_lib.positions(outer)),
        sparse_lib.neighbour_rows(sparse_lib.positions(middle), outer))
    residual = self._conv1_activation(sparse_lib.conv_batch_norm_rows(
        self.conv1, self.conv1_bn, residual))
    residual = sparse_lib.conv_rows(self.conv2, sparse_lib.im2col(
        residual, sparse_lib.neighbour_rows(centres, middle)))
    if self.activate_before_residual:
      residual += preact_rows(centres) - tf.gather_nd(x, centres)
    return centres, residual

  def compute_output_shape(self, input_shape):
    def out(size):
      return None if size is None else common.same_size(size, self.stride)
    return (input_shape[0], out(input_shape[1]), out(input_shape[2]),
            self.depth)

  def flops(self, input_shape, active=None):
    """FLOPs per image; `input_shape` is the (dynamic) shape of `x`."""
    _check_masked(self, active)
    height, width = input_shape[1], input_shape[2]
    if active is None:
      area = tf.cast(common.same_size(height, self.stride)
                     * common.same_size(width, self.stride), tf.int64)
      dilated = area
    else:
      area, dilated = flops_lib.position_counts(active, height, width)
    return (flops_lib.conv_flops(dilated, 3, self.depth_in, self.depth)
            + flops_lib.conv_flops(area, 3, self.depth, self.depth))

  def get_config(self):
    config = super().get_config()
    config.update(depth=self.depth, stride=self.stride,
                  activate_before_residual=self.activate_before_residual,
                  leakiness=self.leakiness,
                  double_activation=self.double_activation,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  weight_decay=self.weight_decay)
    return config
