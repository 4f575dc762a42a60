"""Sparse execution: gathered SACT units and heads, ACT batch compaction.

Everything is checked against dense evaluation followed by masking (the
`sparse=False` path): same outputs up to float rounding, same ponder maps,
numbers of units and FLOPs, same gradients.
"""

import keras
import numpy as np
from scipy import ndimage
import pytest
import tensorflow as tf

from benchmarks import sparse_speed
from sact_tf import flops as flops_lib
from sact_tf import models
from sact_tf import sparse
from sact_tf.layers import blocks
from sact_tf.layers import executors
from sact_tf.layers import heads
from sact_tf.layers import units


def relative_error(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12)


def randomise_batch_norms(layer, seed):
  """Non-trivial moving statistics, so that batch norm matters."""
  rng = np.random.default_rng(seed)
  for variable in layer.variables:
    name = variable.path.rsplit('/', 1)[-1]
    if name in ('moving_variance', 'gamma'):
      variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    elif name in ('moving_mean', 'beta'):
      variable.assign(rng.normal(0, 0.3, variable.shape))


def random_mask(shape, fraction, seed):
  return tf.constant(np.random.default_rng(seed).uniform(size=shape)
                     < fraction)


MASKS = {
    'random': lambda shape: random_mask(shape, 0.4, 1),
    'sparse': lambda shape: random_mask(shape, 0.1, 2),
    'corner': lambda shape: tf.constant(
        np.pad(np.ones((shape[0], 1, 1), bool),
               [(0, 0), (0, shape[1] - 1), (0, shape[2] - 1)])),
    'one_image': lambda shape: tf.constant(
        np.arange(shape[0])[:, None, None] == np.zeros(shape, int)),
    'empty': lambda shape: tf.zeros(shape, tf.bool),
    'full': lambda shape: tf.ones(shape, tf.bool),
}
SIZES = [(2, 7, 9), (1, 1, 1), (3, 5, 1), (1, 2, 13)]


# --- helpers ---------------------------------------------------------------

@pytest.mark.parametrize('size', SIZES)
def test_dilate_is_a_3x3_binary_dilation(size):
  mask = random_mask(size, 0.2, 3)
  expected = np.stack([ndimage.binary_dilation(m, np.ones((3, 3), bool))
                       for m in np.asarray(mask)])
  np.testing.assert_array_equal(sparse.dilate(mask).numpy(), expected)
  np.testing.assert_array_equal(flops_lib.dilate(mask).numpy(), expected)


def numpy_windows(x, centres):
  """`[n, 9 * C]`: the zero-padded 3x3 windows of `x` `[B, H, W, C]` around
  `centres` `[n, 3]`, row-major."""
  padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  return np.stack([padded[b, i:i + 3, j:j + 3].reshape(-1)
                   for b, i, j in centres]).reshape(len(centres), -1)


@pytest.mark.parametrize('size', SIZES)
def test_im2col_matches_a_numpy_window_gather(size):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(*size, 3)).astype(np.float32)
  active = random_mask(size, 0.3, 5) | MASKS['corner'](size)
  table = sparse.dilate(active)
  centres = sparse.positions(active)
  rows = tf.gather_nd(x, sparse.positions(table))
  columns = sparse.im2col(rows, sparse.neighbour_rows(centres, table))
  np.testing.assert_array_equal(columns.numpy(),
                                numpy_windows(x, centres.numpy()))


@pytest.mark.parametrize('size', SIZES)
def test_im2col_with_the_active_rows_first(size):
  # The SACT block's table: active rows, then the rest of the dilated set,
  # given as two row blocks.
  rng = np.random.default_rng(6)
  x = rng.normal(size=(*size, 3)).astype(np.float32)
  active = random_mask(size, 0.3, 7) | MASKS['corner'](size)
  dilated = sparse.dilate(active)
  centres = sparse.positions(active)
  border = tf.gather_nd(x, sparse.positions(dilated & ~active))
  columns = sparse.im2col(
      [tf.gather_nd(x, centres), border],
      sparse.neighbour_rows(centres, dilated, first=active))
  np.testing.assert_array_equal(columns.numpy(),
                                numpy_windows(x, centres.numpy()))


def test_choose_path():
  size = (2, 4, 5)
  cases = [(MASKS['empty'](size), 0.8, sparse.NOTHING_ACTIVE),
           (MASKS['full'](size), 0.8, sparse.ALL_ACTIVE),
           (MASKS['full'](size), 1.0, sparse.ALL_ACTIVE),
           (random_mask(size, 0.9, 0), 0.5, sparse.DENSE_MASKED),
           (random_mask(size, 0.3, 0), 0.5, sparse.GATHERED),
           (random_mask(size, 0.9, 0), 1.0, sparse.GATHERED)]
  for mask, fraction, expected in cases:
    assert int(sparse.choose_path(mask, fraction)) == expected


def test_add_rows_leaves_the_callers_tensor_alone():
  x = tf.zeros([1, 3, 3, 2])
  before = x.numpy().copy()
  y = sparse.add_rows(x, tf.constant([[0, 1, 2]], tf.int64),
                      tf.ones([1, 2]))
  np.testing.assert_array_equal(x.numpy(), before)
  assert float(tf.reduce_sum(y)) == 2.0


def random_batch_norm(center=True, scale=True, channels=4, seed=0):
  layer = keras.layers.BatchNormalization(center=center, scale=scale,
                                          epsilon=1e-3)
  layer.build([None, channels])
  rng = np.random.default_rng(seed)
  for variable, low in ((layer.moving_mean, -2.0),
                        (layer.moving_variance, 0.1),
                        (layer.gamma, 0.5), (layer.beta, -1.0)):
    if variable is not None:
      variable.assign(rng.uniform(low, low + 3.0, channels).astype(
          np.float32))
  return layer


# bfloat16 keeps 8 significant bits: results within a few roundings.
BFLOAT16_RTOL = 2e-2


@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('center, scale', [(True, True), (False, False)])
def test_batch_norm_rows_equals_the_layer(center, scale, dtype, relu):
  # bfloat16 rows take oneDNN's fused batch norm, float32 rows two
  # elementwise ops: both must be the layer at inference.
  layer = random_batch_norm(center, scale)
  rows = tf.constant(np.random.default_rng(1).normal(size=(5, 4)),
                     tf.float32)
  expected = layer(rows, training=False).numpy()
  if relu:
    expected = np.maximum(expected, 0.0)
  actual = sparse.batch_norm_rows(layer, tf.cast(rows, dtype), relu=relu)
  assert actual.dtype == dtype
  tolerance = 1e-5 if dtype == 'float32' else BFLOAT16_RTOL
  np.testing.assert_allclose(tf.cast(actual, tf.float32), expected,
                             rtol=tolerance,
                             atol=tolerance * np.abs(expected).max())


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('use_bias, kernel_size', [(False, 1), (True, 3)])
def test_conv_batch_norm_rows_equals_the_layers(use_bias, kernel_size,
                                                dtype):
  # In bfloat16 the batch norm is folded into the kernel and bias.
  conv = keras.layers.Conv2D(3, kernel_size, use_bias=use_bias)
  conv.build([None, None, None, 4])
  if use_bias:
    conv.bias.assign([-2.0, 1.0, 3.0])
  layer = random_batch_norm(channels=3, seed=2)
  rows = tf.constant(np.random.default_rng(3).normal(
      size=(6, kernel_size ** 2 * 4)), tf.float32)
  expected = layer(tf.reshape(conv(tf.reshape(
      rows, [6, kernel_size, kernel_size, 4]), training=False), [6, 3]),
                   training=False).numpy()
  actual = sparse.conv_batch_norm_rows(conv, layer, tf.cast(rows, dtype))
  assert actual.dtype == dtype
  tolerance = 1e-5 if dtype == 'float32' else BFLOAT16_RTOL
  np.testing.assert_allclose(tf.cast(actual, tf.float32), expected,
                             rtol=tolerance,
                             atol=tolerance * np.abs(expected).max())


@pytest.mark.parametrize('value', [0, -0.5, 1.5, 'a', None])
def test_dense_fraction_is_validated(value):
  with pytest.raises(ValueError, match='dense_fraction'):
    sparse.validate_dense_fraction(value)
  with pytest.raises(ValueError, match='dense_fraction'):
    units.BottleneckUnit(8, 2, dense_fraction=value)
  if value is not None:  # None: not set, the enclosing setting holds.
    with pytest.raises(ValueError, match='dense_fraction'):
      with sparse.execution(dense_fraction=value):
        pass
    with pytest.raises(ValueError, match='dense_fraction'):
      blocks.SACTBlock([units.BottleneckUnit(8, 2)], [],
                       dense_fraction=value)


def enter_execution(**settings):
  with sparse.execution(**settings):
    pass


@pytest.mark.parametrize('make', [
    lambda: enter_execution(sparse=1),
    lambda: blocks.ACTBlock([units.BottleneckUnit(8, 2)], [], sparse='yes'),
    lambda: blocks.SACTBlock([units.BottleneckUnit(8, 2)], [], sparse=0),
    lambda: models.cifar_resnet(1, sparse='no'),
])
def test_sparse_must_be_a_bool(make):
  with pytest.raises(ValueError, match='sparse must be True or False'):
    make()


@pytest.mark.parametrize('make', [
    lambda: units.BottleneckUnit(8, 2, sparse=False),
    lambda: units.CifarUnit(8, dense_fraction=0.5),
    lambda: heads.SACTHaltingHead(sparse=True, dense_fraction=0.5),
])
def test_units_and_heads_hold_no_execution_settings(make):
  with pytest.raises(ValueError, match='execution settings belong to the '
                     'block or model'):
    make()


def test_the_outermost_execution_setting_wins():
  block = blocks.SACTBlock([units.BottleneckUnit(8, 2)], [], sparse=False,
                           dense_fraction=0.3)
  assert sparse.current_execution() == sparse.DEFAULT_EXECUTION
  assert block.execution() == sparse.Execution(False, 0.3)
  with sparse.execution(dense_fraction=0.7):
    assert block.execution() == sparse.Execution(False, 0.7)
    with sparse.execution(sparse=True, dense_fraction=0.2):
      assert sparse.current_execution() == sparse.Execution(True, 0.7)
  assert blocks.ACTBlock([units.CifarUnit(8)], []).execution() == (
      sparse.DEFAULT_EXECUTION)


# --- units and heads ---------------------------------------------------------

def unit_cases():
  return {
      'bottleneck': lambda: units.BottleneckUnit(12, 3),
      'cifar': lambda: units.CifarUnit(6),
      'cifar_single_activation': lambda: units.CifarUnit(
          6, double_activation=False),
      'cifar_activate_before_residual': lambda: units.CifarUnit(
          6, activate_before_residual=True),
  }


@pytest.mark.parametrize('mask_name', sorted(MASKS))
@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('unit_name', sorted(unit_cases()))
def test_gathered_unit_equals_dense_and_masked(unit_name, size, mask_name):
  unit = unit_cases()[unit_name]()
  channels = unit.depth
  x = tf.constant(np.random.default_rng(6).normal(
      0, 1, (*size, channels)), tf.float32)
  unit(x)
  randomise_batch_norms(unit, 7)
  active = MASKS[mask_name](size)
  with sparse.execution(sparse=False):
    expected = unit(x, active).numpy()
  with sparse.execution(sparse=True, dense_fraction=1.0):
    actual = unit(x, active).numpy()
  assert relative_error(actual, expected) <= 1e-5
  # Halted positions keep their values bit for bit.
  inactive = ~active.numpy()
  np.testing.assert_array_equal(actual[inactive], x.numpy()[inactive])
  compiled = tf.function(lambda x, active: unit(x, active))
  with sparse.execution(dense_fraction=1.0):  # Read when traced.
    assert relative_error(compiled(x, active).numpy(), expected) <= 1e-5


@pytest.mark.parametrize('unit_name', ['bottleneck', 'cifar'])
def test_gathered_unit_equals_dense_in_bfloat16(unit_name):
  # The rows' bfloat16 forms (fused batch norm, folded kernels) against
  # the dense bfloat16 unit and the float32 one with the same weights.
  x = np.random.default_rng(6).normal(0, 1, (2, 7, 9, 12)).astype(np.float32)
  reference = unit_cases()[unit_name]()
  reference(tf.constant(x[..., :reference.depth]))
  randomise_batch_norms(reference, 7)
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    unit = unit_cases()[unit_name]()
  finally:
    keras.mixed_precision.set_global_policy('float32')
  low = tf.constant(x[..., :unit.depth], tf.bfloat16)
  unit(low)
  unit.set_weights(reference.get_weights())
  active = MASKS['random'](x.shape[:3])
  with sparse.execution(sparse=False):
    dense = tf.cast(unit(low, active), tf.float32).numpy()
    exact = reference(tf.constant(x[..., :unit.depth]), active).numpy()
  with sparse.execution(sparse=True, dense_fraction=1.0):
    gathered = unit(low, active)
  assert gathered.dtype == tf.bfloat16
  gathered = tf.cast(gathered, tf.float32).numpy()
  assert relative_error(gathered, dense) <= BFLOAT16_RTOL
  assert relative_error(gathered, exact) <= BFLOAT16_RTOL
  inactive = ~active.numpy()
  np.testing.assert_array_equal(gathered[inactive], dense[inactive])


def test_unit_paths_by_density():
  unit = units.BottleneckUnit(8, 2)
  x = tf.random.normal([2, 6, 6, 8])
  unit(x)
  randomise_batch_norms(unit, 8)
  with sparse.execution(dense_fraction=0.5):
    for fraction in (0.2, 0.8):
      active = random_mask([2, 6, 6], fraction, 9)
      dense = tf.where(active[..., None], unit.dense(x, False), x)
      assert relative_error(unit(x, active), dense) <= 1e-5
    np.testing.assert_array_equal(unit(x, MASKS['empty']([2, 6, 6])), x)


def test_residual_after_preact_is_the_dense_residual():
  # What SACTBlock's dense steps run: the pre-activation from
  # `preact_affine`, computed outside the unit.
  unit = units.BottleneckUnit(8, 2)
  x = tf.random.normal([2, 5, 6, 8], seed=11)
  unit(x)
  randomise_batch_norms(unit, 11)
  scale, offset = unit.preact_affine()
  preact = tf.nn.relu(x * scale + offset)
  expected = unit.dense(x, False) - x
  assert relative_error(unit.residual_after_preact(preact, False),
                        expected) <= 1e-5
  # With a weight map w: w * residual + (1 - w) * bias.
  unit.conv3.bias.assign(np.linspace(-1.0, 1.0, 8))
  expected = unit.dense(x, False) - x
  weight = tf.random.uniform([2, 5, 6], seed=12)
  assert relative_error(
      unit.residual_after_preact(preact, False, weight),
      weight[..., None] * expected
      + (1.0 - weight[..., None]) * unit.residual_bias()) <= 1e-5
  strided = units.BottleneckUnit(8, 2, stride=2)
  strided(x)
  with pytest.raises(ValueError, match='stride 2'):
    strided.residual_after_preact(preact, False)


@pytest.mark.parametrize('spatial', [True, False])
@pytest.mark.parametrize('unit_name', sorted(unit_cases()))
def test_training_mode_is_dense_and_masked(unit_name, spatial):
  # Batch statistics over gathered positions would differ: training calls
  # must give exactly what the dense path gives, and its gradients (the
  # masked residual's backward pass differs in form, not in value).
  unit = unit_cases()[unit_name]()
  x = tf.random.normal([3, 5, 6, unit.depth], seed=10)
  unit(x)
  randomise_batch_norms(unit, 10)
  active = (random_mask([3, 5, 6], 0.3, 10) if spatial
            else tf.constant([True, False, True]))
  mask = tf.reshape(active, active.shape + [1] * (4 - active.shape.rank))
  weights = tf.random.normal([3, 5, 6, unit.depth], seed=11)

  def loss_and_gradients(call):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = call()
      loss = tf.reduce_sum(out * weights)
    return out, tape.gradient(loss, [x] + unit.trainable_variables)

  expected, expected_grads = loss_and_gradients(
      lambda: tf.where(mask, unit.dense(x, True), x))
  for sparse_flag in (True, False):
    with sparse.execution(sparse=sparse_flag):
      actual, grads = loss_and_gradients(
          lambda: unit(x, active, training=True))
    np.testing.assert_array_equal(actual.numpy(), expected.numpy())
    for grad, expected_grad in zip(grads, expected_grads):
      np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(),
                                 rtol=1e-6, atol=1e-6)
  # One training call updates each batch norm's moving statistics once.
  before = [v.numpy() for v in unit.non_trainable_variables]
  unit.dense(x, True)
  once = [v.numpy() for v in unit.non_trainable_variables]
  for variable, value in zip(unit.non_trainable_variables, before):
    variable.assign(value)
  unit(x, active, training=True)
  for variable, value in zip(unit.non_trainable_variables, once):
    np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6)


def test_masked_unit_must_keep_stride_and_depth():
  x = tf.random.normal([1, 4, 4, 8])
  active = MASKS['random']([1, 4, 4])
  strided = units.BottleneckUnit(8, 2, stride=2)
  strided(x)
  with pytest.raises(ValueError, match='stride 2'):
    strided(x, active)
  wider = units.BottleneckUnit(16, 2)
  wider(x)
  with pytest.raises(ValueError, match='depth'):
    wider(x, active)


@pytest.mark.parametrize('leakiness', [None, 0.1])
@pytest.mark.parametrize('size', SIZES)
def test_sact_head_taps_match_a_conv_and_gathering(leakiness, size):
  head = heads.SACTHaltingHead(leakiness=leakiness, halting_bias_init=0.3)
  x = tf.constant(np.random.default_rng(11).normal(0, 1, (*size, 5)),
                  tf.float32)
  head(x)
  randomise_batch_norms(head, 12)
  head.local_conv.kernel.assign(
      np.random.default_rng(13).normal(0, 0.5, head.local_conv.kernel.shape))
  # Eq. 14 written with the layers themselves.
  act = (lambda t: t) if leakiness is None else (
      lambda t: tf.maximum(t, leakiness * t))
  local = head.local_conv(act(head.local_bn(x, training=False)))
  pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
  logit = local + head.global_conv(act(head.global_bn(pooled,
                                                      training=False)))
  expected = tf.sigmoid(logit[..., 0]).numpy()
  assert relative_error(head(x), expected) <= 1e-5
  active = MASKS['random'](size) | MASKS['corner'](size)
  with sparse.execution(dense_fraction=1.0):
    gathered = head(x, active).numpy()
  mask = active.numpy()
  assert relative_error(gathered[mask], expected[mask]) <= 1e-5
  assert np.all(gathered[~mask] == 0)
  assert np.all(head(x, MASKS['empty'](size)).numpy() == 0)


# --- blocks ----------------------------------------------------------------

def make_block(block_cls, num_units=4, depth=8, seed=0, bias=0.0, spread=2.0,
               **kwargs):
  """A bottleneck block whose real halting heads give mixed halting."""
  keras.utils.set_random_seed(seed)
  rng = np.random.default_rng(seed)
  unit_list = [units.BottleneckUnit(depth, depth // 4)
               for _ in range(num_units)]
  head_cls = (heads.SACTHaltingHead if block_cls is blocks.SACTBlock else
              heads.ACTHaltingHead)
  head_list = [head_cls() for _ in range(num_units - 1)]
  block = block_cls(unit_list, head_list, **kwargs)
  block.build((None, None, None, depth))
  randomise_batch_norms(block, seed)
  if block_cls is blocks.SACTBlock:
    # Non-zero residual biases: SACT's last dense step folds its weight
    # into the last convolution and corrects the bias term.
    for unit in unit_list:
      unit.conv3.bias.assign(rng.normal(0, 0.5, unit.conv3.bias.shape))
  for head in head_list:
    for variable in head.trainable_variables:
      if variable.path.endswith('kernel'):
        variable.assign(rng.normal(0, spread, variable.shape))
      if variable.path.endswith('bias'):
        variable.assign(np.full(variable.shape, bias))
  return block


def clone(block, **overrides):
  config = block.get_config()
  config.update(overrides)
  twin = type(block).from_config(config)
  twin.build((None, None, None, block.units[0].depth))
  twin.set_weights(block.get_weights())
  return twin


def assert_same_block_outputs(actual, expected):
  assert relative_error(actual['output'], expected['output']) <= 1e-4
  for key in ('num_units', 'flops'):
    np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
  for key in ('ponder_map', 'ponder_cost', 'halting_distribution'):
    np.testing.assert_allclose(actual[key], expected[key], atol=1e-5,
                               err_msg=key)


def assert_sparse_equals_dense(block, x):
  dense = clone(block, sparse=False)
  assert dense.executor().loop == blocks.DENSE_MASKED
  assert not any('sparse' in layer.get_config()
                 for layer in dense.units + dense.halting_heads)
  expected = dense(x)
  for call in (block, tf.function(block)):
    assert_same_block_outputs(call(x), expected)
  return expected


def mixed_halting_case(block_cls):
  """A block and an input whose halting is mixed (checked by the tests)."""
  if block_cls is blocks.SACTBlock:
    block = make_block(blocks.SACTBlock, bias=-1.0)
    return block, tf.constant(
        np.random.default_rng(14).normal(0, 1, (2, 9, 11, 8)), tf.float32)
  block = make_block(blocks.ACTBlock, num_units=5, bias=-0.5, spread=4.0)
  # Images of different scales get different pooled features and scores.
  scale = np.arange(1, 6)[:, None, None, None]
  return block, tf.constant(
      np.random.default_rng(15).normal(0, 1, (5, 5, 7, 8)) * scale,
      tf.float32)


@pytest.mark.parametrize('bias', [10.0, -10.0])
@pytest.mark.parametrize('dense_fraction', [1.0, 0.5])
@pytest.mark.parametrize('size', [(2, 9, 11), (1, 1, 1), (3, 4, 1)])
def test_sact_block_sparse_equals_dense(size, dense_fraction, bias):
  # bias +10: everything halts after the first unit; -10: nothing halts
  # before the last unit (full masks).
  block = make_block(blocks.SACTBlock, bias=bias,
                     dense_fraction=dense_fraction)
  x = tf.constant(np.random.default_rng(14).normal(0, 1, (*size, 8)),
                  tf.float32)
  assert_sparse_equals_dense(block, x)


@pytest.mark.parametrize('dense_fraction', [0.01, 0.85])
@pytest.mark.parametrize('bias', [10.0, -1.0, -10.0])
def test_two_unit_sact_block_sparse_equals_dense(bias, dense_fraction):
  # The only loop step is the last unit's, and nothing precedes it in the
  # output (`_table_loop`'s first and last dense step at once; masked with
  # bias -1 and dense_fraction 0.01).
  block = make_block(blocks.SACTBlock, num_units=2, bias=bias,
                     dense_fraction=dense_fraction)
  x = tf.constant(np.random.default_rng(16).normal(0, 1, (2, 9, 11, 8)),
                  tf.float32)
  assert_sparse_equals_dense(block, x)


@pytest.mark.parametrize('block_cls', [blocks.ACTBlock, blocks.SACTBlock])
@pytest.mark.parametrize('dense_fraction', [1.0, 0.5])
def test_mixed_halting_sparse_equals_dense(block_cls, dense_fraction):
  block, x = mixed_halting_case(block_cls)
  if block_cls is blocks.SACTBlock:
    block = clone(block, dense_fraction=dense_fraction)
    assert block.execution().dense_fraction == dense_fraction
  expected = assert_sparse_equals_dense(block, x)
  assert len(np.unique(expected['num_units'])) >= 3, 'halting is not mixed'


@pytest.mark.parametrize('bias', [10.0, -10.0])
@pytest.mark.parametrize('batch', [1, 4])
def test_act_block_compaction_equals_dense(batch, bias):
  block = make_block(blocks.ACTBlock, num_units=3, bias=bias)
  x = tf.constant(np.random.default_rng(15).normal(0, 1, (batch, 5, 7, 8)),
                  tf.float32)
  assert_sparse_equals_dense(block, x)


class BatchRecorder(keras.layers.Layer):
  """x + 1, recording the number of images it is called on."""

  def build(self, input_shape):
    self.images = self.add_weight(shape=(), initializer='zeros',
                                  trainable=False, dtype='int32')

  def call(self, x, active=None):
    self.images.assign_add(tf.shape(x)[0])
    return x + 1.0 if active is None else tf.where(
        active[:, None, None, None], x + 1.0, x)

  def compute_output_shape(self, input_shape):
    return input_shape

  def flops(self, input_shape, active=None):
    return tf.constant(0, tf.int64)


class PositiveStateHead(keras.layers.Layer):
  """Halting score 1 once an image's mean state is positive, else 0."""

  def call(self, x):
    return tf.cast(tf.reduce_mean(x, axis=[1, 2, 3]) > 0.5, x.dtype)

  def flops(self, input_shape, active=None):
    return tf.constant(0, tf.int64)


def test_act_units_run_on_the_active_images_only():
  num_units = np.array([1, 3, 2, 4])
  recorders = [BatchRecorder() for _ in range(4)]
  block = blocks.ACTBlock(recorders, [PositiveStateHead() for _ in range(3)])
  # The state after unit n is x + n: image i halts after num_units[i] units.
  x = tf.constant(1.0 - num_units, tf.float32)[:, None, None, None]
  out = block(tf.broadcast_to(x, [4, 2, 3, 2]))
  np.testing.assert_array_equal(out['num_units'], num_units)
  # Unit u runs on the images that use more than u units.
  assert [int(r.images) for r in recorders] == [4, 3, 2, 1]
  # Scores 0 then 1: each output is the state after the image's last unit.
  np.testing.assert_array_equal(out['output'], np.ones([4, 2, 3, 2]))


def graph_op_types(function, *args):
  """The op types of a traced function's graph and of its nested
  functions (loop bodies, branches)."""
  graph = function.get_concrete_function(*args).graph
  types = {op.type for op in graph.get_operations()}
  for nested in graph._functions.values():  # pylint: disable=protected-access
    types |= {node.op for node in nested.definition.node_def}
  return types


@pytest.mark.parametrize('compiled', [False, True])
def test_training_calls_stop_once_nothing_is_active(compiled):
  # Training-mode calls unroll the loop (a tf.cond per unit): every image
  # runs each unit while any is active (dense, masked), and no unit runs
  # once all have halted.
  recorders = [BatchRecorder() for _ in range(5)]
  block = blocks.ACTBlock(recorders, [PositiveStateHead() for _ in range(4)])
  x = tf.broadcast_to(tf.constant([-2.0, 0.0, -1.0, 0.0])[:, None, None, None],
                      [4, 2, 3, 2])
  call = lambda x: block(x, training=True)
  if compiled:
    call = tf.function(call)
    ops = graph_op_types(call, x)
    assert not ops & {'While', 'StatelessWhile'}
    assert ops & {'If', 'StatelessIf'}
    inference = tf.function(lambda x: block(x, training=False))
    assert graph_op_types(inference, x) & {'While', 'StatelessWhile'}
  out = call(x)
  np.testing.assert_array_equal(out['num_units'], [3, 1, 2, 1])
  assert [int(r.images) for r in recorders] == [4, 4, 4, 0, 0]
  np.testing.assert_array_equal(out['output'], np.ones([4, 2, 3, 2]))


@pytest.mark.parametrize('block_cls', [blocks.ACTBlock, blocks.SACTBlock])
def test_gradients_through_the_sparse_path(block_cls):
  # Inference-mode batch norm with a tape: fine-tuning with frozen batch
  # norm (as in detection) runs the sparse path in training.
  block, x = mixed_halting_case(block_cls)
  dense = clone(block, sparse=False)
  results = []
  for layer in (block, dense):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = layer(x, training=False)
      loss = (tf.reduce_sum(out['output'] ** 2)
              + 3.0 * tf.reduce_sum(out['ponder_cost']))
    results.append(tape.gradient(loss, [x] + layer.trainable_variables))
  for actual, expected in zip(*results):
    assert expected is not None
    assert relative_error(actual, expected) <= 1e-4
  assert len(np.unique(dense(x)['num_units'])) >= 3


def test_sact_bottleneck_blocks_run_the_table_loop(monkeypatch):
  calls = []
  original = executors.RUNNERS[executors.SACT_ROW_TABLE]

  def spy(context, *args, **kwargs):
    calls.append(context.num_units)
    return original(context, *args, **kwargs)

  monkeypatch.setitem(executors.RUNNERS, executors.SACT_ROW_TABLE, spy)
  block, x = mixed_halting_case(blocks.SACTBlock)
  expected = assert_sparse_equals_dense(block, x)
  assert calls and len(np.unique(expected['num_units'])) >= 3


def chained_units_reference(block, x, num_units):
  """The states after each unit, calling the units one after the other
  (no loop, no weight selection), unit n+1 where N > n."""
  states = [block.units[0](x, None, training=False)]
  for n, unit in enumerate(block.units[1:], 1):
    states.append(unit(states[-1], tf.constant(num_units > n),
                       training=False))
  return states


@pytest.mark.parametrize('block_cls', [blocks.ACTBlock, blocks.SACTBlock])
@pytest.mark.parametrize('sparse_flag', [True, False])
def test_each_unit_runs_with_its_own_weights(block_cls, sparse_flag):
  # The inference loop runs unit 2's graph with the weights of the unit the
  # loop is at: compare with calling every unit directly.
  block, x = mixed_halting_case(block_cls)
  block = clone(block, sparse=sparse_flag)
  assert block._loop_shares_graph  # pylint: disable=protected-access
  out = block(x, training=False)
  distribution = out['halting_distribution'].numpy()
  states = chained_units_reference(block, x, out['num_units'].numpy())
  weights = distribution if block_cls is blocks.SACTBlock else (
      distribution[:, None, None, :])
  expected = sum(weights[..., n, None] * states[n].numpy()
                 for n in range(len(block.units)))
  assert relative_error(out['output'], expected) <= 1e-4


@pytest.mark.parametrize('block_cls', [blocks.ACTBlock, blocks.SACTBlock])
def test_shared_graph_equals_a_graph_per_unit(block_cls):
  # Outputs and gradients of the inference loop against the per-unit
  # tf.switch_case branches (what training-mode calls use).
  block, x = mixed_halting_case(block_cls)
  per_unit = clone(block)
  per_unit._loop_shares_graph = False  # pylint: disable=protected-access
  results = []
  for layer in (block, per_unit):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = layer(x, training=False)
      loss = (tf.reduce_sum(out['output'] ** 2)
              + 3.0 * tf.reduce_sum(out['ponder_cost']))
    results.append((out, tape.gradient(loss, [x] + layer.trainable_variables)))
  (out, grads), (expected, expected_grads) = results
  assert_same_block_outputs(out, expected)
  for actual, wanted in zip(grads, expected_grads):
    assert wanted is not None
    assert relative_error(actual, wanted) <= 1e-4


def test_layers_that_do_not_declare_it_get_a_graph_per_unit():
  unit_list = [units.BottleneckUnit(8, 2) for _ in range(3)]

  class Head(heads.SACTHaltingHead):
    config_and_weights_only = False

  block = blocks.SACTBlock(unit_list, [Head(), Head()])
  assert not block._loop_shares_graph  # pylint: disable=protected-access
  unlike = blocks.SACTBlock(
      [units.BottleneckUnit(8, 2), units.BottleneckUnit(8, 2),
       units.BottleneckUnit(8, 2, bn_epsilon=1e-3)],
      [heads.SACTHaltingHead(), heads.SACTHaltingHead()])
  assert not unlike._loop_shares_graph  # pylint: disable=protected-access


# --- models ----------------------------------------------------------------

@pytest.mark.parametrize('model_type', ['act', 'sact'])
@pytest.mark.parametrize('family', ['imagenet', 'cifar'])
def test_model_sparse_equals_dense(family, model_type):
  def make(sparse_flag):
    if family == 'imagenet':
      return models.imagenet_resnet(units=[2, 3, 2, 2], base_channels=4,
                                    num_classes=5, model_type=model_type,
                                    halting_bias_init=-0.5,
                                    sparse=sparse_flag)
    return models.cifar_resnet([2, 3, 2], base_channels=4,
                               model_type=model_type, halting_bias_init=-0.5,
                               sparse=sparse_flag)
  x = tf.random.uniform([2, 37, 45, 3], -1, 1, seed=17)
  model, dense = make(True), make(False)
  model(x)
  dense(x)
  randomise_batch_norms(model, 18)
  dense.set_weights(model.get_weights())
  expected, actual = dense(x), model(x)
  assert relative_error(actual['logits'], expected['logits']) <= 1e-4
  for key, value in expected.items():
    if key.endswith(('flops', 'num_units')):
      np.testing.assert_array_equal(actual[key], value, err_msg=key)
    elif key != 'logits':
      np.testing.assert_allclose(actual[key], value, atol=1e-4, err_msg=key)


def test_model_config_carries_the_switches():
  model = models.imagenet_resnet(units=[1, 2, 1, 1], base_channels=2,
                                 num_classes=3, sparse=False,
                                 dense_fraction=0.6)
  config = model.get_config()
  assert config['sparse'] is False and config['dense_fraction'] == 0.6
  # Held once, by the model: the blocks, units and heads read them when
  # the model calls them.
  block = model.blocks[1]
  assert block.sparse is None and block.dense_fraction is None
  for layer in (block.units[1], block.halting_heads[0]):
    assert not {'sparse', 'dense_fraction'} & set(layer.get_config())
  with sparse.execution(model.sparse, model.dense_fraction):
    assert block.execution() == sparse.Execution(False, 0.6)
    assert block.executor().loop == blocks.DENSE_MASKED
  restored = type(model).from_config(config)
  assert not restored.sparse and restored.dense_fraction == 0.6


# --- the benchmark's forced halting ------------------------------------------

def test_benchmark_forces_a_blob_after_the_first_unit():
  units_per_block = (2, 3, 2)
  scores = sparse_speed.sact_scores(0.3, height=61, width=97)
  network = sparse_speed.Network(units_per_block, 'sact', scores,
                                 num_blocks=3, base_channels=2)
  plain = sparse_speed.Network(units_per_block, 'resnet', num_blocks=3,
                               base_channels=2)
  images = tf.random.uniform([1, 61, 97, 3], -1, 1)
  _, flops = network(images)
  _, plain_flops = plain(images)
  assert flops.shape == (1,) and int(flops[0]) < int(plain_flops[0])
  x, _ = network.stem_and_pool(images)
  for block, block_scores, num_units in zip(network.blocks, scores,
                                            units_per_block):
    out = block(x)
    assert out['num_units'].shape[1:] == block_scores.shape
    blob = block_scores == 0.0
    assert 0.2 < blob.mean() < 0.4
    np.testing.assert_array_equal(out['num_units'][0],
                                  np.where(blob, num_units, 1))
    x = out['output']


def test_benchmark_floor_runs_later_units_on_the_active_images_only():
  units_per_block = (2, 3, 1, 2)
  active = np.array([False, True, False, True])
  scores = [np.where(active, 0.0, 1.0)] * 4
  images = tf.random.uniform([4, 32, 32, 3], -1, 1, seed=1)
  act = sparse_speed.Network(units_per_block, 'act', scores, base_channels=2)
  plain = sparse_speed.Network(units_per_block, 'resnet', base_channels=2)
  floor = sparse_speed.ActiveImagesNetwork(units_per_block, active,
                                           base_channels=2)
  _, act_flops = act(images)
  plain_logits, plain_flops = plain(images)
  floor(images)
  floor.set_weights(plain.get_weights())
  floor_logits, floor_flops = floor(images)
  # The forced heads cost nothing: the same FLOPs as ACT, per image.
  np.testing.assert_array_equal(floor_flops, act_flops)
  assert np.all(floor_flops.numpy()[~active] < plain_flops.numpy()[~active])
  np.testing.assert_array_equal(floor_flops.numpy()[active],
                                plain_flops.numpy()[active])
  # The running images get the plain network's answer.
  np.testing.assert_allclose(floor_logits.numpy()[active],
                             plain_logits.numpy()[active], rtol=1e-5,
                             atol=1e-5)


def test_benchmark_floor_needs_a_running_image():
  with pytest.raises(ValueError, match='some image True'):
    sparse_speed.ActiveImagesNetwork((1, 1, 1, 1), [False, False])
