"""Blocks of residual units: plain, ACT (Algorithm 1) and SACT (Algorithm 2).

A block calls its first unit everywhere (it may change stride and channels),
then runs the remaining units in a `tf.while_loop` that stops as soon as no
image (ACT) or position (SACT) of the batch is active: the units after that
are never executed. Units and halting heads are any Keras layers following
the protocols of `sact_tf.layers.protocols` (`ResidualUnit`, `HaltingHead`);
the blocks reach them through that module's functions, which give layers
that do not subclass those classes the same defaults.

Calling a block returns a dict:
  output: `[B, H, W, C]`, the halting-distribution-weighted sum of the states.
  ponder_cost: `[B]`, rho = N + R (SACT: averaged over positions).
  ponder_map: `[B, H, W]`, per-position rho (ACT: the image's rho everywhere).
  num_units: int32 `[B]` (ACT) or `[B, H, W]` (SACT), units evaluated, N.
  halting_distribution: `[B, L]` or `[B, H, W, L]`, the weights p.
  flops: int64 `[B]`, FLOPs of the units and heads actually evaluated.

Unit 1 runs everywhere; units 2..L run on one executor per call
(`sact_tf.layers.executors`: dense-masked for training-mode calls and
`sparse=False`; at inference ACT's working batch of the active images or
SACT's table of rows around the active positions, where the layers have
the methods those need). All executors share the halting loop of
`executors.base` and give the same outputs up to float rounding, and the
same ponder costs and FLOPs. A halting block logs its choice once, at its
first call: at INFO, or at WARNING, with what to add, where a faster
executor needs a method or the opt-in that a layer class from outside
sact_tf lacks.

Execution settings: `sparse` (at inference, compute where the computation
goes on only) and SACT's `dense_fraction` (the active fraction from which
units compute densely and mask) belong to the block.
"""

from absl import logging
import keras
import tensorflow as tf

from sact_tf import halting
from sact_tf import sparse as sparse_lib
from sact_tf.layers import common
from sact_tf.layers import executors
from sact_tf.layers import protocols
from sact_tf.layers.output_sum import OutputSum


def _serialize_list(layers):
  return [keras.saving.serialize_keras_object(layer) for layer in layers]


def _deserialize_list(configs):
  return [keras.saving.deserialize_keras_object(c) for c in configs]


def _layer_list(name, layers):
  """`layers` as a list, or raises naming `name` unless it is a sequence of
  Keras layers."""
  if isinstance(layers, (keras.layers.Layer, str, bytes)):
    raise ValueError(f'{name} must be a list of Keras layers, got '
                     f'{layers!r}.')
  try:
    layers = list(layers)
  except TypeError:
    raise ValueError(f'{name} must be a list of Keras layers, got '
                     f'{layers!r}.') from None
  for layer in layers:
    if not isinstance(layer, keras.layers.Layer):
      raise ValueError(f'{name} must be a list of Keras layers, got '
                       f'{layer!r} among them.')
  return layers


# The executors of units 2..L (`_HaltingBlock.executor`).
DENSE_MASKED = executors.DENSE_MASKED
ACT_RESIDUALS = executors.ACT_RESIDUALS
ACT_STATES = executors.ACT_STATES
SACT_ROW_TABLE = executors.SACT_ROW_TABLE
SACT_GATHERED = executors.SACT_GATHERED
SACT_MASKED_UNITS = executors.SACT_MASKED_UNITS
Executor = executors.Executor


def _enumerate(texts):
  """'a', 'a and b', 'a, b and c'."""
  if len(texts) < 2:
    return ''.join(texts)
  return ', '.join(texts[:-1]) + ' and ' + texts[-1]


def _from_library(layer):
  return type(layer).__module__.startswith('sact_tf.')


class _Block(keras.layers.Layer):
  """Holds the units and builds them in order (never inside the loop)."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    units = _layer_list('units', units)
    if not units:
      raise ValueError('units must hold at least one unit layer, got an '
                       'empty list.')
    self.units = units

  def _build_units(self, input_shape):
    # Layers restored from a config arrive built already.
    protocols.build(self.units[0], input_shape)
    state_shape = protocols.first_output_shape(self.name, self.units[0],
                                               input_shape)
    for unit in self.units[1:]:
      protocols.build(unit, state_shape)
    return state_shape

  def build(self, input_shape):
    self._build_units(tuple(input_shape))

  def compute_output_shape(self, input_shape):
    return protocols.output_shape(self.units[0], input_shape)

  def first_unit(self, x, training):
    """The first unit's output on the block input `x` (evaluated
    everywhere), checked to have the shape the later units were built
    for."""
    unit = self.units[0]
    output = unit(x, None, training=training)
    protocols.check_first_output(self.name, unit, x.shape, output)
    return output

  def get_config(self):
    config = super().get_config()
    config['units'] = _serialize_list(self.units)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config['units'] = _deserialize_list(config['units'])
    return cls(**config)


@keras.saving.register_keras_serializable('sact_tf')
class ResNetBlock(_Block):
  """A plain block: every unit evaluated everywhere (model_type='resnet')."""

  def call(self, inputs, training=None):
    x = inputs
    flops = tf.zeros([tf.shape(inputs)[0]], tf.int64)
    for index, unit in enumerate(self.units):
      flops += protocols.unit_flops(unit, tf.shape(x), None)
      if index == 0:
        x = self.first_unit(x, training)
      else:
        x = unit(x, None, training=training)
    batch = tf.shape(x)[0]
    return {
        'output': x,
        'num_units': tf.fill([batch], len(self.units)),
        'flops': flops,
    }


class _HaltingBlock(_Block):
  """The halting loop shared by ACT and SACT; subclasses set `spatial`."""

  spatial = None

  def __init__(self, units, halting_heads, eps=0.01, sparse=None, **kwargs):
    super().__init__(units, **kwargs)
    halting_heads = _layer_list('halting_heads', halting_heads)
    if len(halting_heads) != len(self.units) - 1:
      raise ValueError(
          f'halting_heads: a block of {len(self.units)} units needs '
          f'{len(self.units) - 1} halting heads (the last unit halts by '
          f'definition), got {len(halting_heads)}.')
    self.halting_heads = halting_heads
    self.eps = halting.validate_eps(eps)
    self.sparse, _ = sparse_lib.validate_execution(sparse)
    self._loop_shares_graph = (protocols.shares_graph(self.units[1:])
                               and protocols.shares_graph(
                                   self.halting_heads[1:]))
    self._executor_logged = False

  def build(self, input_shape):
    state_shape = self._build_units(tuple(input_shape))
    for head in self.halting_heads:
      protocols.build(head, state_shape)

  def _settings(self):
    """The block's own execution settings (None: not set)."""
    return self.sparse, None

  def execution(self):
    """The `sact_tf.sparse.Execution` a call made here would run with:
    an enclosing `sact_tf.sparse.execution` scope's settings, else the
    block's, else the defaults."""
    with sparse_lib.execution(*self._settings()):
      return sparse_lib.current_execution()

  def executor(self, training=False):
    """The `Executor` of units 2..L in a call with `training` made here
    (see `execution`)."""
    if training or not self.execution().sparse:
      return Executor(DENSE_MASKED, not training and self._loop_shares_graph)
    return Executor(self._sparse_executor(), self._loop_shares_graph)

  def _sparse_executor(self):
    """The executor name at inference with `sparse=True`."""
    raise NotImplementedError

  def _faster_needs(self, loop):
    """What the executors faster than `loop` need of the layers: a list of
    (role, layers, method names, executor)."""
    del loop
    return []

  def _executor_gaps(self):
    """Why units 2..L do not run on a faster executor at inference.

    Returns (sentences, the roles, 'units' and / or 'heads', of the layer
    classes from outside sact_tf that lack a method or the
    `config_and_weights_only` opt-in that a faster executor needs).
    """
    executor = self.executor(training=False)
    notes = {}  # (role, class) -> what the class lacks, for which executor.
    user_roles = set()

    def note(role, layer, text):
      texts = notes.setdefault((role, type(layer)), [])
      if text not in texts:
        texts.append(text)
      if not _from_library(layer):
        user_roles.add(role)

    for role, layers, names, purpose in self._faster_needs(executor.loop):
      for layer in layers:
        missing = protocols.missing_methods(layer, names)
        if missing:
          note(role, layer, f'{", ".join(missing)} (for {purpose})')
    sentences = []
    if not executor.shared_graph:
      groups = (('units', self.units[1:]), ('heads', self.halting_heads[1:]))
      lacking = False
      for role, layers in groups:
        for layer in layers:
          if not protocols.opts_in(layer):
            lacking = True
            note(role, layer, 'the opt-in config_and_weights_only = True '
                 '(for one shared graph)')
      if not lacking:
        if all(protocols.shares_graph(layers) for _, layers in groups):
          sentences.append('graph sharing is turned off for this block')
        else:
          sentences.append(
              'units 2..L or heads 2..L-1 differ in class or config, so they '
              'cannot share one graph')
    sentences = [f'{role} of class {cls.__name__} lack ' + _enumerate(texts)
                 for (role, cls), texts in notes.items()] + sentences
    return sentences, user_roles

  def _log_executor(self):
    """Logs, once per block, which executor units 2..L run on and, if a
    faster one needs what a layer lacks, what: at INFO, or at WARNING where
    a class from outside sact_tf lacks a method or the opt-in."""
    if self._executor_logged or len(self.units) < 2:
      return
    self._executor_logged = True
    executor = self.executor(training=False)
    graph = ('one shared graph run with each unit\'s weights'
             if executor.shared_graph
             else 'a graph per unit in a tf.switch_case')
    settings = '' if self.execution().sparse else 'sparse=False, '
    message = (f'{type(self).__name__} {self.name!r}: at inference, units '
               f'2..{len(self.units)} run on executor {executor.loop!r} '
               f'({settings}{graph}); training-mode calls on executor '
               f'{DENSE_MASKED!r} (a graph per unit).')
    sentences, user_roles = self._executor_gaps()
    if sentences:
      message += ' Not faster because ' + '; '.join(sentences) + '.'
    if not user_roles:
      logging.info('%s', message)
      return
    bases = [base for role, base in (('units', 'ResidualUnit'),
                                     ('heads', 'HaltingHead'))
             if role in user_roles]
    message += (
        ' Add them (see ' + ' and '.join(
            f'sact_tf.layers.protocols.{base}' for base in bases)
        + "); set config_and_weights_only only where a layer's computation "
        'depends on its config and variables alone.')
    logging.warning('%s', message)

  def call(self, inputs, training=None):
    # Variables read as their own dtype (see `common.exact_variables`).
    with sparse_lib.execution(*self._settings()), common.exact_variables():
      return self._call(inputs, training)

  def _call(self, inputs, training):
    self._log_executor()
    executor = self.executor(training)
    context = executors.LoopContext(self, training, executor.shared_graph,
                                    sparse_lib.current_execution())
    x, halting_proba, flops = context.first_unit(self, inputs)
    state, weight = halting.update(
        halting.initial_state(context.mask_shape(x), tf.float32),
        halting_proba,
        self.eps)
    output = OutputSum.start(x, weight, OutputSum.STATES)
    distribution = executors.base.distribution_step(0.0, weight, 0,
                                                    len(self.units))
    if len(self.units) > 1:
      output, distribution, flops, state = executors.RUNNERS[executor.loop](
          context, x, output, distribution, flops, state)
    ponder_map = state.ponder_cost
    ponder_cost = ponder_map
    if self.spatial:
      ponder_cost = tf.reduce_mean(ponder_map, axis=[1, 2])
    else:
      ponder_map = tf.broadcast_to(ponder_map[:, tf.newaxis, tf.newaxis],
                                   tf.shape(output)[:3])
    return {
        'output': output,
        'ponder_cost': ponder_cost,
        'ponder_map': ponder_map,
        'num_units': state.num_units,
        'halting_distribution': distribution,
        'flops': flops,
    }

  def get_config(self):
    config = super().get_config()
    config['halting_heads'] = _serialize_list(self.halting_heads)
    config['eps'] = self.eps
    config['sparse'] = self.sparse
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config['halting_heads'] = _deserialize_list(config['halting_heads'])
    return super().from_config(config)


@keras.saving.register_keras_serializable('sact_tf')
class ACTBlock(_HaltingBlock):
  """Adaptive Computation Time over whole images (paper Algorithm 1).

  Args:
    units: L unit layers following the `unit(x, active)` protocol (see
      `sact_tf.layers.protocols.ResidualUnit`); `active` is a `[B]` bool
      mask.
    halting_heads: L-1 layers mapping a state to halting scores `[B]`
      (`sact_tf.layers.protocols.HaltingHead`).
    eps: the computation halts once the cumulative score reaches 1 - eps.
    sparse: at inference, run the units on the active images only (see the
      module doc); None (the default): from the enclosing model or
      `sact_tf.sparse.execution` scope, else True.
  """

  spatial = False

  def _sparse_executor(self):
    if all(protocols.supports_residual(unit) for unit in self.units[1:]):
      return ACT_RESIDUALS
    return ACT_STATES

  def _faster_needs(self, loop):
    if loop == ACT_STATES:
      return [('units', self.units[1:], protocols.RESIDUAL_METHODS,
               f'executor {ACT_RESIDUALS!r}')]
    return []


@keras.saving.register_keras_serializable('sact_tf')
class SACTBlock(_HaltingBlock):
  """Spatially Adaptive Computation Time (paper Algorithm 2).

  Args:
    units: L unit layers following the `unit(x, active)` protocol
      (`sact_tf.layers.protocols.ResidualUnit`); `active` is a `[B, H, W]`
      bool mask and inactive positions keep their value.
    halting_heads: L-1 layers mapping a state to halting scores `[B, H, W]`
      (`sact_tf.layers.protocols.HaltingHead`).
    eps: the computation halts once the cumulative score reaches 1 - eps.
    sparse: at inference, evaluate units and heads at the active positions
      only (see the module doc); None (the default): from the enclosing
      model or `sact_tf.sparse.execution` scope, else True. The units and
      heads read it when called (`sact_tf.sparse.current_execution()`).
    dense_fraction: active fraction of the batch's positions from which
      units, heads and the block compute densely and mask instead, in
      (0, 1]; None: as `sparse` (default
      `sact_tf.sparse.DEFAULT_DENSE_FRACTION`). The row-table executor
      computes densely until the active fraction first falls below it and
      on the table of rows from then on
      (`sact_tf.layers.executors.sact_table`).
  """

  spatial = True

  def __init__(self, units, halting_heads, eps=0.01, sparse=None,
               dense_fraction=None, **kwargs):
    super().__init__(units, halting_heads, eps=eps, sparse=sparse, **kwargs)
    _, self.dense_fraction = sparse_lib.validate_execution(
        dense_fraction=dense_fraction)

  def _settings(self):
    return self.sparse, self.dense_fraction

  def _sparse_executor(self):
    if (self._loop_shares_graph
        and all(protocols.supports_rows(unit) for unit in self.units[1:])
        and all(protocols.head_supports_rows(head)
                for head in self.halting_heads[1:])):
      return SACT_ROW_TABLE
    if all(protocols.supports_gathered(unit) for unit in self.units[1:]):
      return SACT_GATHERED
    return SACT_MASKED_UNITS

  def _faster_needs(self, loop):
    table = f'executor {SACT_ROW_TABLE!r}'
    needs = []
    if loop in (SACT_GATHERED, SACT_MASKED_UNITS):
      needs += [('units', self.units[1:], protocols.ROW_METHODS, table),
                ('heads', self.halting_heads[1:], protocols.HEAD_ROW_METHODS,
                 table)]
    if loop == SACT_MASKED_UNITS:
      needs.append(('units', self.units[1:], protocols.GATHERED_METHODS,
                    f'executor {SACT_GATHERED!r}'))
    return needs

  def get_config(self):
    config = super().get_config()
    config['dense_fraction'] = self.dense_fraction
    return config
