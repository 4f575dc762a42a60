import keras
import numpy as np
import pytest
import tensorflow as tf

from sact_tf import flops as flops_lib
from sact_tf import layers
from sact_tf.layers import common
from tests import helpers
from tests import reference

CHANNELS = 3


class ScriptedUnit(keras.layers.Layer):
  """x + tanh(conv3x3(x) + b), masked by `active`; counts its executions."""

  def __init__(self, kernel, bias, **kwargs):
    super().__init__(**kwargs)
    self.kernel_value = np.asarray(kernel, np.float32)
    self.bias_value = np.asarray(bias, np.float32)

  def build(self, input_shape):
    self.executions = self.add_weight(shape=(), initializer='zeros',
                                      trainable=False, dtype='int32',
                                      name='executions')

  def call(self, x, active=None):
    self.executions.assign_add(1)
    new = x + tf.tanh(tf.nn.conv2d(x, self.kernel_value, 1, 'SAME')
                      + self.bias_value)
    return common.mask_state(new, x, active)

  def compute_output_shape(self, input_shape):
    return input_shape

  def flops(self, input_shape, active=None):
    if active is None:
      area = tf.cast(input_shape[1] * input_shape[2], tf.int64)
    else:
      area, _ = flops_lib.position_counts(active, input_shape[1],
                                          input_shape[2])
    return flops_lib.conv_flops(area, 3, CHANNELS, CHANNELS)

  def numpy(self, x):
    return x + np.tanh(reference.conv3x3(x, self.kernel_value,
                                         self.bias_value))


class ScriptedHead(helpers.LinearScores, keras.layers.Layer):
  """sigmoid(x . w + c) per position (SACT) or of the pooled state (ACT),
  7 FLOPs."""

  def flops(self, input_shape, active=None):
    return tf.constant(7, tf.int64)


def make_block(block_cls, num_units, seed, offset=-1.0, head_scale=1.5):
  rng = np.random.default_rng(seed)
  units = [ScriptedUnit(rng.normal(0, 0.4, (3, 3, CHANNELS, CHANNELS)),
                        rng.normal(0, 0.1, CHANNELS), name=f'unit_{i + 1}')
           for i in range(num_units)]
  heads = [ScriptedHead(rng.normal(0, head_scale, CHANNELS), offset,
                        spatial=block_cls is layers.SACTBlock)
           for _ in range(num_units - 1)]
  return block_cls(units, heads, eps=0.01), units, heads


def expected_flops(counts_per_unit):
  return sum(counts_per_unit) * 2 * 9 * CHANNELS * CHANNELS


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_sact_block_matches_numpy_algorithm_2(seed):
  block, units, heads = make_block(layers.SACTBlock, 4, seed)
  x = np.random.default_rng(10 + seed).normal(
      0, 1, (2, 5, 6, CHANNELS)).astype(np.float32)
  out = block(x)
  # The scripted heads cost 7 FLOPs per image each time they are evaluated,
  # i.e. for every unit but the last that the batch runs.
  heads_run = min(int(out['num_units'].numpy().max()), 3)
  num_units_seen = set()
  for b in range(2):
    ref_out, ref_rho, ref_count = reference.sact_block(
        x[b].astype(np.float64), [u.numpy for u in units],
        [h.numpy for h in heads], 0.01)
    np.testing.assert_array_equal(out['num_units'].numpy()[b], ref_count)
    np.testing.assert_allclose(out['output'].numpy()[b], ref_out, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out['ponder_map'].numpy()[b], ref_rho,
                               rtol=1e-5)
    np.testing.assert_allclose(out['ponder_cost'].numpy()[b], ref_rho.mean(),
                               rtol=1e-5)
    # Unit l is evaluated where at least l units are used.
    unit_positions = [(ref_count >= l).sum() for l in range(1, 5)]
    assert out['flops'].numpy()[b] == (expected_flops(unit_positions)
                                       + 7 * heads_run)
    num_units_seen |= set(np.unique(ref_count))
  # The script must exercise mixed halting, or the test proves little.
  assert len(num_units_seen) >= 3


@pytest.mark.parametrize('seed', [0, 3])
def test_act_block_matches_numpy_algorithm_1(seed):
  block, units, heads = make_block(layers.ACTBlock, 5, seed, offset=-0.5)
  x = np.random.default_rng(20 + seed).normal(
      0, 1, (4, 4, 4, CHANNELS)).astype(np.float32)
  out = block(x)
  assert out['num_units'].shape == (4,)
  heads_run = min(int(out['num_units'].numpy().max()), 4)
  for b in range(4):
    ref_out, ref_rho, ref_n = reference.act_block(
        x[b].astype(np.float64), [u.numpy for u in units],
        [h.numpy for h in heads], 0.01)
    assert out['num_units'].numpy()[b] == ref_n
    np.testing.assert_allclose(out['output'].numpy()[b], ref_out, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out['ponder_cost'].numpy()[b], ref_rho,
                               rtol=1e-5)
    np.testing.assert_allclose(out['ponder_map'].numpy()[b], ref_rho,
                               rtol=1e-5)
    assert out['flops'].numpy()[b] == (expected_flops([16] * ref_n)
                                       + 7 * heads_run)


@pytest.mark.parametrize('block_cls', [layers.ACTBlock, layers.SACTBlock])
@pytest.mark.parametrize('compiled', [False, True])
def test_units_after_everything_halted_are_never_executed(block_cls,
                                                          compiled):
  # Every score is sigmoid(10) > 0.99: everything halts after the first unit.
  block, units, _ = make_block(block_cls, 4, 0, offset=10.0, head_scale=0.0)
  call = tf.function(block) if compiled else block
  out = call(tf.random.normal([2, 4, 4, CHANNELS]))
  assert np.all(out['num_units'].numpy() == 1)
  assert [int(u.executions.numpy()) for u in units] == [1, 0, 0, 0]

  block, units, _ = make_block(block_cls, 4, 1, offset=-1.0)
  call = tf.function(block) if compiled else block
  out = call(tf.random.normal([2, 4, 4, CHANNELS]))
  last_used = int(out['num_units'].numpy().max())
  executions = [int(u.executions.numpy()) for u in units]
  assert executions == [1] * last_used + [0] * (4 - last_used)


def test_inactive_positions_keep_their_values():
  rng = np.random.default_rng(0)
  unit = layers.BottleneckUnit(8, 2)
  x = tf.constant(rng.normal(size=(2, 5, 5, 8)), tf.float32)
  active = tf.constant(rng.uniform(size=(2, 5, 5)) > 0.5)
  dense = unit(x).numpy()
  masked = unit(x, active).numpy()
  a = active.numpy()
  np.testing.assert_array_equal(masked[~a], x.numpy()[~a])
  np.testing.assert_allclose(masked[a], dense[a], rtol=1e-6)
  image_mask = tf.constant([True, False])
  masked = unit(x, image_mask).numpy()
  np.testing.assert_array_equal(masked[1], x.numpy()[1])
  np.testing.assert_allclose(masked[0], dense[0], rtol=1e-6)


def test_block_arguments_are_validated():
  units = [layers.BottleneckUnit(8, 2) for _ in range(3)]
  with pytest.raises(ValueError, match='needs 2 halting heads'):
    layers.SACTBlock(units, [layers.SACTHaltingHead()])
  with pytest.raises(ValueError, match='eps'):
    layers.ACTBlock(units, [layers.ACTHaltingHead()] * 2, eps=1.5)
  with pytest.raises(ValueError, match='at least one unit'):
    layers.ResNetBlock([])


@pytest.mark.parametrize('block_cls,head_cls', [
    (layers.ACTBlock, layers.ACTHaltingHead),
    (layers.SACTBlock, layers.SACTHaltingHead)])
def test_block_config_round_trip(block_cls, head_cls):
  units = [layers.BottleneckUnit(16, 4, stride=2, name='unit_1')] + [
      layers.BottleneckUnit(16, 4, name=f'unit_{i}') for i in (2, 3)]
  heads = [head_cls(halting_bias_init=-2.0, name=f'head_{i}') for i in (1, 2)]
  block = block_cls(units, heads, eps=0.05, name='block2')
  x = tf.random.normal([2, 8, 8, 8])
  out = block(x)
  clone = block_cls.from_config(block.get_config())
  clone(x)
  clone.set_weights(block.get_weights())
  assert clone.eps == 0.05 and len(clone.units) == 3
  assert clone.units[0].stride == 2
  assert clone.halting_heads[0].halting_bias_init == -2.0
  np.testing.assert_allclose(clone(x)['output'].numpy(),
                             out['output'].numpy(), rtol=1e-6)


def test_resnet_block_takes_units_with_call_alone():
  # No flops, compute_output_shape or build: the protocol's defaults.
  class Double(keras.layers.Layer):
    def call(self, x, active=None):
      return common.mask_state(2.0 * x, x, active)

  block = layers.ResNetBlock([Double(), Double()])
  x = tf.random.normal([2, 3, 3, CHANNELS])
  for call in (block, tf.function(block)):
    out = call(x)
    np.testing.assert_allclose(out['output'], 4.0 * x.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out['flops'], [0, 0])
    np.testing.assert_array_equal(out['num_units'], [2, 2])
