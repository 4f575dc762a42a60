"""The unit and halting-head protocols (`sact_tf.layers.protocols`).

Units and heads that implement `call` alone, as plain Keras layers or as
subclasses of `ResidualUnit` / `HaltingHead`, checked against the NumPy
Algorithms 1 and 2 of `tests/reference.py`, sparse against dense; the
blocks' executor choice and its log.
"""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sact_tf import layers
from sact_tf.layers import blocks
from sact_tf.layers import common
from sact_tf.layers import heads
from sact_tf.layers import protocols
from sact_tf.layers import units
from tests import helpers
from tests import reference

CHANNELS = 3


class _TanhConv:
  """x + tanh(conv3x3(x) + b), left unchanged where `active` is False.

  `call` is all the protocol asks for: no flops, compute_output_shape or
  fast-path methods.
  """

  def __init__(self, kernel, bias, **kwargs):
    super().__init__(**kwargs)
    self.kernel_value = np.asarray(kernel, np.float32)
    self.bias_value = np.asarray(bias, np.float32)

  def call(self, x, active=None):
    new = x + tf.tanh(tf.nn.conv2d(x, self.kernel_value, 1, 'SAME')
                      + self.bias_value)
    return common.mask_state(new, x, active)

  def numpy(self, x):
    return x + np.tanh(reference.conv3x3(x, self.kernel_value,
                                         self.bias_value))


class PlainUnit(_TanhConv, keras.layers.Layer):
  """A Keras layer that knows nothing of `sact_tf`."""


class SubclassedUnit(_TanhConv, protocols.ResidualUnit):
  """The same unit as a `ResidualUnit`."""


class PlainHead(helpers.LinearScores, keras.layers.Layer):
  """A Keras layer that knows nothing of `sact_tf`."""


class SubclassedHead(helpers.LinearScores, protocols.HaltingHead):
  """The same head as a `HaltingHead`."""


KINDS = {'plain': (PlainUnit, PlainHead),
         'subclass': (SubclassedUnit, SubclassedHead)}


def make_block(block_cls, kind, num_units, seed, sparse, offset):
  unit_cls, head_cls = KINDS[kind]
  rng = np.random.default_rng(seed)
  unit_list = [unit_cls(rng.normal(0, 0.4, (3, 3, CHANNELS, CHANNELS)),
                        rng.normal(0, 0.1, CHANNELS))
               for _ in range(num_units)]
  head_list = [head_cls(rng.normal(0, 1.5, CHANNELS), offset,
                        spatial=block_cls is blocks.SACTBlock)
               for _ in range(num_units - 1)]
  return block_cls(unit_list, head_list, eps=0.01, sparse=sparse)


def assert_matches_reference(block, x, out):
  """Each image's output, ponder cost and N against Algorithm 1 or 2."""
  algorithm = (reference.sact_block if isinstance(block, blocks.SACTBlock)
               else reference.act_block)
  counts = []
  for b in range(x.shape[0]):
    ref_out, ref_rho, ref_count = algorithm(
        x[b].astype(np.float64), [u.numpy for u in block.units],
        [h.numpy for h in block.halting_heads], 0.01)
    np.testing.assert_array_equal(out['num_units'].numpy()[b], ref_count)
    np.testing.assert_allclose(out['output'].numpy()[b], ref_out, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out['ponder_map'].numpy()[b], ref_rho,
                               rtol=1e-5)
    counts.append(np.ravel(ref_count))
  return np.concatenate(counts)


@pytest.fixture(name='absl_records')
def _absl_records(caplog):
  """The absl logger's records (INFO and up) of the test."""
  caplog.set_level(logging.INFO, logger='absl')
  return lambda: [r for r in caplog.records if r.name == 'absl']


@pytest.mark.parametrize('kind', ['plain', 'subclass'])
@pytest.mark.parametrize('block_cls', [blocks.ACTBlock, blocks.SACTBlock])
def test_call_only_layers_follow_the_algorithms_sparse_and_dense(block_cls,
                                                                 kind):
  spatial = block_cls is blocks.SACTBlock
  shape = (2, 4, 5, CHANNELS) if spatial else (4, 3, 3, CHANNELS)
  scale = 1.0 if spatial else np.arange(1, 5)[:, None, None, None]
  x = (np.random.default_rng(7).normal(0, 1, shape) * scale).astype(
      np.float32)
  outputs = {}
  for sparse_flag in (True, False):
    block = make_block(block_cls, kind, 4, seed=0, sparse=sparse_flag,
                       offset=-1.0 if spatial else -0.5)
    expected_loop = ((blocks.SACT_MASKED_UNITS if spatial
                      else blocks.ACT_STATES) if sparse_flag
                     else blocks.DENSE_MASKED)
    assert block.executor() == blocks.Executor(expected_loop, False)
    for name, call in (('eager', block), ('function', tf.function(block))):
      out = call(x, training=False)
      counts = assert_matches_reference(block, x, out)
      # Units and heads without `flops` count as 0.
      np.testing.assert_array_equal(out['flops'].numpy(), 0)
      outputs[sparse_flag, name] = out
  # The case exercises mixed halting.
  assert len(np.unique(counts)) >= 2
  expected = outputs[False, 'eager']
  for out in outputs.values():
    np.testing.assert_allclose(out['output'], expected['output'], rtol=1e-5,
                               atol=1e-6)
    for key in ('num_units', 'flops'):
      np.testing.assert_array_equal(out[key], expected[key])
    np.testing.assert_allclose(out['ponder_cost'], expected['ponder_cost'],
                               rtol=1e-6)


@pytest.mark.parametrize('block_cls', [blocks.ACTBlock, blocks.SACTBlock])
def test_training_calls_of_call_only_layers_follow_the_algorithms(block_cls):
  block = make_block(block_cls, 'plain', 3, seed=1, sparse=True,
                     offset=-1.0)
  x = np.random.default_rng(8).normal(0, 1, (2, 3, 4, CHANNELS)).astype(
      np.float32)
  assert_matches_reference(block, x, block(x, training=True))


def test_missing_flops_are_zero_with_one_warning_per_class(absl_records):
  # Classes of this test alone: the warning is once per class and process.
  class QuietUnit(PlainUnit):
    pass

  class QuietHead(SubclassedHead):
    pass

  rng = np.random.default_rng(2)
  for block_cls in (blocks.SACTBlock, blocks.ACTBlock):
    spatial = block_cls is blocks.SACTBlock
    block = block_cls(
        [QuietUnit(rng.normal(0, 0.4, (3, 3, CHANNELS, CHANNELS)),
                   np.zeros(CHANNELS)) for _ in range(3)],
        [QuietHead(np.zeros(CHANNELS), -2.0, spatial) for _ in range(2)])
    x = tf.random.normal([2, 3, 3, CHANNELS])
    for call in (block, block, tf.function(block)):
      np.testing.assert_array_equal(call(x)['flops'].numpy(), 0)
  messages = [r.getMessage() for r in absl_records()
              if 'has no flops' in r.getMessage()]
  assert len(messages) == 2, messages
  unit_message, head_message = sorted(messages, key=lambda m: 'Head' in m)
  assert unit_message.startswith('QuietUnit (layer ')
  assert 'sact_tf.layers.protocols.ResidualUnit.flops' in unit_message
  assert head_message.startswith('QuietHead (layer ')
  assert 'sact_tf.layers.protocols.HaltingHead.flops' in head_message
  assert all(r.levelno == logging.WARNING for r in absl_records()
             if 'has no flops' in r.getMessage())


def executor_records(records, block):
  return [r for r in records if r.getMessage().startswith(
      f'{type(block).__name__} {block.name!r}:')]


@pytest.mark.parametrize('case,expected', [
    ('sact_bottleneck', blocks.SACT_ROW_TABLE),
    ('sact_cifar', blocks.SACT_GATHERED),
    ('act_bottleneck', blocks.ACT_RESIDUALS),
    ('act_cifar', blocks.ACT_RESIDUALS),
    ('sact_dense', blocks.DENSE_MASKED),
    ('act_dense', blocks.DENSE_MASKED),
])
def test_built_in_layers_choose_the_fast_executors(case, expected,
                                                   absl_records):
  block_type, family = case.split('_')
  block_cls = blocks.SACTBlock if block_type == 'sact' else blocks.ACTBlock
  head_cls = (heads.SACTHaltingHead if block_type == 'sact'
              else heads.ACTHaltingHead)
  if family == 'cifar':
    make_unit = lambda: units.CifarUnit(8)
    make_head = lambda: head_cls(leakiness=0.1)
  else:
    make_unit, make_head = lambda: units.BottleneckUnit(8, 2), head_cls
  block = block_cls([make_unit() for _ in range(3)],
                    [make_head() for _ in range(2)],
                    sparse=family != 'dense')
  assert block.executor() == blocks.Executor(expected, True)
  assert block.executor(training=True) == blocks.Executor(
      blocks.DENSE_MASKED, False)
  x = tf.random.normal([2, 4, 4, 8])
  block(x, training=False)
  block(x, training=False)
  records = executor_records(absl_records(), block)
  assert len(records) == 1
  assert records[0].levelno == logging.INFO
  message = records[0].getMessage()
  assert f"run on executor {expected!r}" in message
  assert "one shared graph run with each unit's weights" in message
  assert ('sparse=False' in message) == (family == 'dense')
  # CifarUnit has no row interface: said, but no warning (nothing the user
  # could add).
  if case == 'sact_cifar':
    assert ('units of class CifarUnit lack residual_from_rows, '
            'residual_after_preact, preact_affine, residual_bias (for '
            "executor 'SACT row table')") in message
  else:
    assert 'Not faster' not in message
  assert not [r for r in absl_records() if r.levelno >= logging.WARNING]


def test_blocks_with_call_only_layers_warn_once_why_not_faster(absl_records):
  block = make_block(blocks.SACTBlock, 'plain', 3, seed=0, sparse=True,
                     offset=-1.0)
  x = tf.random.normal([1, 3, 3, CHANNELS])
  for call in (block, block, tf.function(block)):
    call(x, training=False)
  block(x, training=True)
  records = executor_records(absl_records(), block)
  assert len(records) == 1 and records[0].levelno == logging.WARNING
  message = records[0].getMessage()
  assert ("run on executor 'SACT masked units' (a graph per unit in a "
          'tf.switch_case)') in message
  assert ('units of class PlainUnit lack residual_from_rows, '
          'residual_after_preact, preact_affine, residual_bias (for '
          "executor 'SACT row table'), gathered_residual, dense_residual "
          "(for executor 'SACT gathered residuals') and the opt-in "
          'config_and_weights_only = True (for one shared graph)') in message
  assert ("heads of class PlainHead lack scores_from_rows (for executor "
          "'SACT row table') and the opt-in config_and_weights_only = True "
          '(for one shared graph)') in message
  assert ('see sact_tf.layers.protocols.ResidualUnit and '
          'sact_tf.layers.protocols.HaltingHead') in message

  act = make_block(blocks.ACTBlock, 'subclass', 3, seed=0, sparse=True,
                   offset=-1.0)
  act(x, training=False)
  [record] = executor_records(absl_records(), act)
  assert record.levelno == logging.WARNING
  assert ("units of class SubclassedUnit lack dense_residual (for executor "
          "'ACT working batch, residuals')") in record.getMessage()


def test_a_head_without_the_opt_in_is_named_in_a_warning(absl_records):
  class MyHead(heads.SACTHaltingHead):
    # E.g. a head with Python-side state: it must not inherit the opt-in.
    config_and_weights_only = False

  block = blocks.SACTBlock([units.BottleneckUnit(8, 2) for _ in range(3)],
                           [MyHead(), MyHead()], name='block3')
  assert block.executor() == blocks.Executor(blocks.SACT_GATHERED, False)
  block(tf.random.normal([1, 3, 3, 8]), training=False)
  [record] = executor_records(absl_records(), block)
  assert record.levelno == logging.WARNING
  message = record.getMessage()
  assert message.startswith("SACTBlock 'block3': at inference, units 2..3 "
                            "run on executor 'SACT gathered residuals' (a "
                            'graph per unit in a tf.switch_case)')
  assert ('heads of class MyHead lack the opt-in config_and_weights_only = '
          'True (for one shared graph)') in message
  assert 'units of class' not in message
  assert 'sact_tf.layers.protocols.HaltingHead' in message


def test_unlike_configs_are_said_at_info(absl_records):
  block = blocks.SACTBlock(
      [units.BottleneckUnit(8, 2), units.BottleneckUnit(8, 2),
       units.BottleneckUnit(8, 2, bn_epsilon=1e-3)],
      [heads.SACTHaltingHead(), heads.SACTHaltingHead()])
  block(tf.random.normal([1, 3, 3, 8]), training=False)
  [record] = executor_records(absl_records(), block)
  assert record.levelno == logging.INFO
  assert 'differ in class or config' in record.getMessage()


class ConvUnit(protocols.ResidualUnit):
  """x + conv3x3(relu(x)) with a Keras Conv2D, opting in to one graph."""

  config_and_weights_only = True

  def __init__(self, channels, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.conv = keras.layers.Conv2D(channels, 3, padding='same')

  def call(self, x, active=None):
    return common.mask_state(x + self.conv(tf.nn.relu(x)), x, active)

  def get_config(self):
    return {**super().get_config(), 'channels': self.channels}


def test_an_opted_in_subclass_runs_one_shared_graph():
  def make(opt_in):
    cls = ConvUnit if opt_in else type('PerUnitConv', (ConvUnit,), {
        'config_and_weights_only': False})
    unit_list = [cls(CHANNELS) for _ in range(3)]
    return blocks.SACTBlock(
        unit_list, [heads.SACTHaltingHead(halting_bias_init=-0.5)
                    for _ in range(2)])

  x = tf.random.normal([2, 4, 4, CHANNELS], seed=3)
  shared, per_unit = make(True), make(False)
  shared(x)
  per_unit(x)
  per_unit.set_weights(shared.get_weights())
  assert shared.executor() == blocks.Executor(blocks.SACT_MASKED_UNITS, True)
  assert per_unit.executor() == blocks.Executor(blocks.SACT_MASKED_UNITS,
                                                False)
  expected = per_unit(x, training=False)
  for call in (shared, tf.function(shared)):
    out = call(x, training=False)
    np.testing.assert_allclose(out['output'], expected['output'], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(out['num_units'], expected['num_units'])
    # The units count 0 FLOPs, the heads their own.
    np.testing.assert_array_equal(out['flops'], expected['flops'])


def test_a_first_unit_changing_the_shape_needs_compute_output_shape():
  class Widen(keras.layers.Layer):
    def call(self, x, active=None):
      del active
      return tf.concat([x, x], axis=-1)

  class Downsample(protocols.ResidualUnit):
    def call(self, x, active=None):
      del active
      return x[:, ::2, ::2]

    def compute_output_shape(self, input_shape):
      return (input_shape[0], (input_shape[1] + 1) // 2,
              (input_shape[2] + 1) // 2, input_shape[3])

  x = tf.random.normal([1, 4, 4, CHANNELS])
  block = blocks.SACTBlock(
      [Widen()] + [PlainUnit(np.zeros((3, 3, 2 * CHANNELS, 2 * CHANNELS)),
                             np.zeros(2 * CHANNELS))],
      [PlainHead(np.zeros(2 * CHANNELS), 0.0, spatial=True)], name='wide')
  with pytest.raises(ValueError, match=(
      r"wide: its first unit 'widen' \(Widen\) turned a state of shape "
      r'\(1, 4, 4, 3\) into \(1, 4, 4, 6\) but does not implement '
      r'compute_output_shape')):
    block(x)
  with pytest.raises(ValueError, match='does not implement'):
    blocks.ResNetBlock([Widen()])(x)

  # A call that cannot be traced without real sizes is checked at the first
  # call.
  class WidenWithSizes(keras.layers.Layer):
    def call(self, x, active=None):
      del active
      if x.shape[1] is None:
        raise TypeError('needs the height')
      return tf.concat([x, x], axis=-1)

  block = blocks.SACTBlock([WidenWithSizes(), ConvUnit(CHANNELS)],
                           [PlainHead(np.zeros(CHANNELS), 0.0, spatial=True)],
                           name='late')
  block.build((None, None, None, CHANNELS))
  with pytest.raises(ValueError, match=(
      r"late: its first unit 'widen_with_sizes' \(WidenWithSizes\) turned a "
      r'state of shape \(1, 4, 4, 3\) into \(1, 4, 4, 6\) but does not '
      r'implement compute_output_shape')):
    block(x)

  block = blocks.ACTBlock(
      [Downsample(), SubclassedUnit(np.zeros((3, 3, CHANNELS, CHANNELS)),
                                    np.zeros(CHANNELS))],
      [SubclassedHead(np.zeros(CHANNELS), 0.0, spatial=False)])
  assert block(x)['output'].shape == (1, 2, 2, CHANNELS)
  assert block.compute_output_shape((1, 4, 4, CHANNELS)) == (1, 2, 2,
                                                             CHANNELS)


def test_protocol_checks():
  bottleneck, cifar = units.BottleneckUnit(8, 2), units.CifarUnit(8)
  plain = PlainUnit(np.zeros((3, 3, 1, 1)), np.zeros(1))
  assert isinstance(bottleneck, layers.ResidualUnit)
  assert isinstance(heads.ACTHaltingHead(), layers.HaltingHead)
  assert protocols.supports_rows(bottleneck)
  assert not protocols.supports_rows(cifar)
  assert protocols.supports_gathered(cifar)
  assert protocols.supports_residual(cifar)
  assert not protocols.supports_residual(plain)
  assert protocols.head_supports_rows(heads.SACTHaltingHead())
  assert not protocols.head_supports_rows(heads.ACTHaltingHead())
  assert protocols.head_takes_active(heads.SACTHaltingHead())
  assert not protocols.head_takes_active(heads.ACTHaltingHead())
  assert not protocols.head_takes_active(PlainHead([0.0], 0.0, True))
  assert protocols.shares_graph([units.CifarUnit(8), units.CifarUnit(8)])
  assert not protocols.shares_graph([plain, plain])
  assert not protocols.shares_graph([units.CifarUnit(8),
                                     units.CifarUnit(16)])
  assert protocols.output_shape(plain, (2, 5, 5, 1)) == (2, 5, 5, 1)
  assert protocols.output_shape(
      units.BottleneckUnit(8, 2, stride=2), (2, 5, 5, 4)) == (2, 3, 3, 8)
  # Execution settings are the block's or model's: no layer holds them.
  assert not hasattr(cifar, 'sparse') and not hasattr(bottleneck, 'sparse')
  with pytest.raises(NotImplementedError, match='must implement call'):
    protocols.ResidualUnit()(tf.zeros([1, 1, 1, 1]))


def _readme_example():
  """The Python block of the README's "Writing your own unit or halting
  head" section."""
  path = os.path.join(os.path.dirname(__file__), '..', 'README.md')
  with open(path, encoding='utf-8') as f:
    readme = f.read()
  section = readme[readme.index('### Writing your own unit or halting head'):]
  return section.split('```python\n', 1)[1].split('```', 1)[0]


def test_readme_example():
  # Runs the README's example as it stands there.
  namespace = {}
  exec(_readme_example(), namespace)  # pylint: disable=exec-used
  block, out = namespace['block'], namespace['out']

  assert out['ponder_map'].shape == (2, 8, 8)
  np.testing.assert_array_equal(out['flops'].numpy(), 0)
  assert block.executor() == blocks.Executor(blocks.SACT_MASKED_UNITS, False)
  # Against Algorithm 2 on the same input.
  x = np.random.default_rng(5).normal(0, 1, (2, 6, 5, 16)).astype(np.float32)
  out = block(x)

  def unit_numpy(unit):
    kernel, bias = (v.numpy() for v in unit.conv.weights)
    return lambda x: x + reference.conv3x3(np.maximum(x, 0), kernel, bias)

  def head_numpy(x):
    return 1 / (1 + np.exp(-(x.mean(axis=-1) - 1.0)))

  for b in range(2):
    ref_out, ref_rho, ref_count = reference.sact_block(
        x[b].astype(np.float64), [unit_numpy(u) for u in block.units],
        [head_numpy] * 3, 0.01)
    np.testing.assert_array_equal(out['num_units'].numpy()[b], ref_count)
    np.testing.assert_allclose(out['output'].numpy()[b], ref_out, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(out['ponder_map'].numpy()[b], ref_rho,
                               rtol=1e-5)
