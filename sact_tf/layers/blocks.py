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

Inference (`training` falsy) runs units 2..L as one graph: the loop reads
the variables of the unit it is at from `tf.TensorArray`s built before it
and runs unit 2's graph with them (`keras.StatelessScope`), when the units,
and the heads, are of one class with equal configs that declares
`config_and_weights_only`; otherwise, and in training mode, a
`tf.switch_case` holds a graph per unit.

Sparse execution (`sparse=True`, the default, with `training` falsy):
  ACT: the units run on the images still active only. The block keeps the
    state of those images as a working batch, evaluates each unit and halting
    head on it with `active=None`, adds the weighted result to the output
    rows of those images, and drops images from it as they halt. This lives
    in the block rather than in the units because the working batch carries
    over from unit to unit: an image leaves it once, when it halts, instead
    of every unit gathering and scattering the active images.
  SACT: while at least `dense_fraction` of the positions are active the
    units compute densely. Below it, the block keeps the state at the active
    positions and their 3x3 neighbours as a table of rows, which the units
    (`residual_from_rows`) and halting heads (`scores_from_rows`) read and
    the units add their residuals to; it is rebuilt when positions halt (see
    `SACTBlock._table_loop`). Units without that interface are told the
    active positions and evaluate there only (see `sact_tf.layers.units`).
  Both add the units' remainder-weighted residuals to the output, which
  equals the weighted sum of eq. 8 (see `SACTBlock._sparse_loop`); SACT's
  dense units add their weighted states instead, with the next unit's
  pre-activation (see `SACTBlock._table_loop`).
Training-mode calls evaluate densely and mask, as the authors' code did:
batch-norm statistics over the gathered images or positions would differ.
Either way the outputs agree up to float rounding, and the ponder costs and
FLOPs are the same.

Which of these executors runs units 2..L depends on the layers' optional
methods and `config_and_weights_only` (the blocks' `executor()`, `Executor`).
A halting block logs its choice once, at its first call: at INFO, or at
WARNING, with what to add, where a faster executor needs a method or the
opt-in that a layer class from outside sact_tf lacks.
"""

import collections

from absl import logging
import keras
import tensorflow as tf

from sact_tf import halting
from sact_tf import sparse as sparse_lib
from sact_tf.layers import passes
from sact_tf.layers import protocols


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
DENSE_MASKED = 'dense-masked'
ACT_RESIDUALS = 'ACT working batch, residuals'
ACT_STATES = 'ACT working batch, weighted states'
SACT_ROW_TABLE = 'SACT row table'
SACT_GATHERED = 'SACT gathered residuals'
SACT_MASKED_UNITS = 'SACT masked units'

Executor = collections.namedtuple('Executor', ['loop', 'shared_graph'])
Executor.__doc__ = """How a halting block runs units 2..L (its `executor()`).

  loop: DENSE_MASKED (the whole batch, each unit masking its result:
    training-mode calls and `sparse=False`), ACT_RESIDUALS / ACT_STATES
    (`ACTBlock`'s working batch of the active images, the output gaining
    remainder-weighted residuals / weighted states), SACT_ROW_TABLE
    (`SACTBlock._table_loop`), SACT_GATHERED (units' `gathered_residual`)
    or SACT_MASKED_UNITS (units called with the mask, as they evaluate it).
  shared_graph: True where the loop runs unit 2's graph with each unit's
    variables, False for a `tf.switch_case` with a graph per unit.
"""


def _enumerate(texts):
  """'a', 'a and b', 'a, b and c'."""
  if len(texts) < 2:
    return ''.join(texts)
  return ', '.join(texts[:-1]) + ' and ' + texts[-1]


def _from_library(layer):
  return type(layer).__module__.startswith('sact_tf.')


_Table = collections.namedtuple(
    '_Table', ['active', 'centres', 'rows', 'increments', 'border',
               'neighbours', 'state_sum'])
_Table.__doc__ = """The state around the active positions of `SACTBlock`.

  active: bool `[B, H, W]`, the positions the table was built for (all False:
    no table yet).
  centres: int64 `[n, 3]`, `sparse.positions(active)`.
  rows: `[n, C]`, the state at the centres.
  increments: `[n, C]`, what the centres' block output gained since the
    table was built.
  border: `[m, C]`, the state at the rest of the dilated active set (fixed:
    those positions have halted).
  neighbours: int32 `[n, 9]`, the centres' 3x3 windows in rows + border.
  state_sum: `[B, C]`, the state summed over positions, kept up to date.
"""


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

  def _first_unit(self, x, active, training):
    """The first unit's output on the block input `x`, checked to have the
    shape the later units were built for."""
    unit = self.units[0]
    output = unit(x, active, training=training)
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
        x = self._first_unit(x, None, training)
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

  def __init__(self, units, halting_heads, eps=0.01, sparse=True, **kwargs):
    super().__init__(units, **kwargs)
    halting_heads = _layer_list('halting_heads', halting_heads)
    if len(halting_heads) != len(self.units) - 1:
      raise ValueError(
          f'halting_heads: a block of {len(self.units)} units needs '
          f'{len(self.units) - 1} halting heads (the last unit halts by '
          f'definition), got {len(halting_heads)}.')
    self.halting_heads = halting_heads
    self.eps = halting.validate_eps(eps)
    self.sparse = sparse_lib.validate_sparse(sparse)
    for layer in self._sparse_capable():
      layer.sparse = sparse
    self._heads_take_active = [protocols.head_takes_active(head)
                               for head in halting_heads]
    self._loop_shares_graph = (protocols.shares_graph(self.units[1:])
                               and protocols.shares_graph(
                                   self.halting_heads[1:]))
    self._executor_logged = False

  def _sparse_capable(self):
    """The units and heads that can evaluate sparsely (have `sparse`)."""
    return protocols.sparse_capable(self.units + self.halting_heads)

  def build(self, input_shape):
    state_shape = self._build_units(tuple(input_shape))
    for head in self.halting_heads:
      protocols.build(head, state_shape)

  def _evaluate(self, index, x, active, training, unit_active, step=None,
                output=None):
    """Unit `index` and its halting head on `x`.

    Args:
      index: the unit (Python int).
      x: the state the unit reads, `[B, H, W, C]` or a working subset.
      active: the block's mask before the unit (None for the first unit);
        FLOPs are counted from it.
      training: the Keras training flag.
      unit_active: the mask the unit and the head are given.
      step: `step(unit, x, output)` evaluates the unit and returns (new
        state, new block output); None: `unit(x, unit_active)`, output
        unchanged.
      output: the block output so far, passed to `step`.

    Returns:
      (new state, halting scores of the shape of `x`'s mask, FLOPs `[B]`,
      block output).
    """
    unit = self.units[index]
    flops = protocols.unit_flops(unit, tf.shape(x), active)
    if index == 0:
      x = self._first_unit(x, unit_active, training)
    else:
      step = step or self._plain_step(training, unit_active)
      x, output = step(unit, x, output)
    mask_shape = self._mask_shape(x)
    if index < len(self.halting_heads):
      head = self.halting_heads[index]
      halting_proba = self._call_head(head, self._heads_take_active[index], x,
                                      unit_active, training)
      flops += protocols.head_flops(head, tf.shape(x), active)
    else:
      halting_proba = tf.ones(mask_shape, x.dtype)
    batch = tf.shape(x if active is None else active)[:1]
    return x, halting_proba, tf.broadcast_to(flops, batch), output

  def _call_head(self, head, takes_active, x, active, training):
    """`head`'s scores on `x` in the shape of `x`'s mask; `active` goes to
    heads that take it."""
    if takes_active:
      proba = head(x, active, training=training)
    else:
      proba = head(x, training=training)
    return tf.reshape(proba, self._mask_shape(x))

  @staticmethod
  def _plain_step(training, unit_active):
    return lambda unit, x, output: (unit(x, unit_active, training=training),
                                    output)

  def _mask_shape(self, x):
    shape = tf.shape(x)
    return shape[:3] if self.spatial else shape[:1]

  def _next_unit(self, index, x, active, training, unit_active, step=None,
                 output=None, loop_weights=None):
    """Units 2..L chosen by the loop index: `_evaluate` of unit `index`.

    `loop_weights`: from `_loop_weights`, built before the loop (None: a
    graph per unit).
    """
    if loop_weights is None:
      new_x, halting_proba, flops, output = self._switch_units(
          index, x, active, training, unit_active, step, output)
    else:
      new_x, halting_proba, flops, output = self._shared_graph_unit(
          index, x, active, training, unit_active, step, output,
          loop_weights)
    new_x.set_shape(x.shape)
    return new_x, halting_proba, flops, output

  def _switch_units(self, index, x, active, training, unit_active, step,
                    output):
    """One `tf.switch_case` branch per unit, each with its own graph."""
    def branch(k):
      # k is bound now: a closure over the loop variable would make every
      # branch call the last unit.
      return lambda: self._evaluate(k, x, active, training, unit_active,
                                    step, output)
    return tf.switch_case(
        index - 1, [branch(k) for k in range(1, len(self.units))])

  def _loop_weights(self, training):
    """What `_shared_weights` reads, built before a loop; None for a
    `tf.switch_case` over a graph per unit (training, or layers that do not
    share a graph).

    Per variable of unit 2 (and head 2), a `tf.TensorArray` of that variable
    in units 2..L (heads 2..L-1, and the last head again for unit L, which
    has none). Writing and reading a variable's value copies nothing, and
    the reads are differentiable, so gradients reach every unit's variables.
    """
    if training or not self._loop_shares_graph:
      return None
    unit = self.units[1]
    heads = self.halting_heads[1:]
    head = heads[0] if heads else None
    layers = [[self.units[k]] + ([heads[min(k, len(heads)) - 1]] if heads
                                 else [])
              for k in range(1, len(self.units))]
    template = unit.variables + (head.variables if head else [])
    arrays = []
    for slot, variable in enumerate(template):
      array = tf.TensorArray(variable.dtype, size=len(layers),
                             element_shape=variable.shape,
                             clear_after_read=False)
      for k, unit_layers in enumerate(layers):
        values = [v for layer in unit_layers for v in layer.variables]
        array = array.write(k, tf.convert_to_tensor(values[slot]))
      # Eagerly, TensorFlow logs an error for a written array that is never
      # read, which is legitimate here: a loop that runs no step (every
      # image or position halted at unit 1) reads none of them. (Traced, the
      # loop body reads them whatever it does at run time, and `write`
      # returns a plain array, without `mark_used`.)
      mark_used = getattr(array, 'mark_used', None)
      if mark_used is not None:
        mark_used()
      arrays.append(array)
    return unit, head, template, arrays

  def _shared_weights(self, index, loop_weights):
    """(unit, head, mapping): unit 2 and head 2 (None if the block has no
    head after unit 2), and a `keras.StatelessScope` mapping that gives
    their variables the values of unit `index` and its head (any head's for
    the last unit, which has none), from `_loop_weights`. See
    `_shared_graph_unit`."""
    unit, head, template, arrays = loop_weights
    mapping = []
    for variable, array in zip(template, arrays):
      value = array.read(index - 1)
      value.set_shape(variable.shape)
      mapping.append((variable, value))
    return unit, head, mapping

  def _shared_graph_unit(self, index, x, active, training, unit_active, step,
                         output, loop_weights):
    """Unit `index` as the graph of unit 2 run with unit `index`'s weights.

    A `tf.switch_case` over a graph per unit is slower: it lowers to Switch /
    Merge nodes, and the untaken branches' nodes are still visited on every
    step. Used when `_loop_shares_graph`, at inference only: a
    training-mode batch norm updates its own variables.
    """
    unit, head, mapping = self._shared_weights(index, loop_weights)
    with keras.StatelessScope(state_mapping=mapping):
      flops = protocols.unit_flops(unit, tf.shape(x), active)
      step = step or self._plain_step(training, unit_active)
      new_x, output = step(unit, x, output)
      mask_shape = self._mask_shape(new_x)
      if head is None:
        halting_proba = tf.ones(mask_shape, new_x.dtype)
      else:
        def evaluate_head():
          return (self._call_head(head, self._heads_take_active[1], new_x,
                                  unit_active, training),
                  protocols.head_flops(head, tf.shape(new_x), active))

        halting_proba, head_flops = tf.cond(
            index < len(self.halting_heads), evaluate_head,
            lambda: (tf.ones(mask_shape, new_x.dtype),
                     tf.zeros_like(flops)))
        flops += head_flops
    batch = tf.shape(x if active is None else active)[:1]
    return new_x, halting_proba, tf.broadcast_to(flops, batch), output

  def _distribution_step(self, distribution, weight, index):
    return distribution + weight[..., tf.newaxis] * tf.one_hot(
        index, len(self.units), dtype=weight.dtype)

  def executor(self, training=False):
    """The `Executor` of units 2..L in a call with `training`."""
    if training or not self.sparse:
      return Executor(DENSE_MASKED, not training and self._loop_shares_graph)
    return Executor(self._sparse_executor(), self._loop_shares_graph)

  def _sparse_executor(self):
    """The loop of `_sparse_loop` (inference, `sparse=True`)."""
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
    settings = '' if self.sparse else 'sparse=False, '
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
    self._log_executor()
    x, halting_proba, flops, _ = self._evaluate(0, inputs, None, training,
                                                None)
    state, weight = halting.update(
        halting.initial_state(self._mask_shape(x), x.dtype), halting_proba,
        self.eps)
    output = passes.expand_to_state(weight) * x
    distribution = self._distribution_step(0.0, weight, 0)
    if len(self.units) > 1:
      loop = (self._sparse_loop if self.sparse and not training else
              self._dense_loop)
      output, distribution, flops, state = loop(
          x, output, distribution, flops, state, training)
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

  def _dense_loop(self, x, output, distribution, flops, state, training):
    """Units 2..L on the whole batch, the units masking their results.

    Returns (output, halting distribution, FLOPs, halting state); so does
    `_sparse_loop` (defined by the subclasses).
    """
    return self._masked_loop(
        x, output, distribution, flops, state, training,
        lambda output, weight, new_x, active: (
            output + passes.expand_to_state(weight) * new_x))

  def _masked_loop(self, x, output, distribution, flops, state, training,
                   accumulate, make_step=None):
    """The halting loop over units 2..L on the whole batch.

    `accumulate(output, weight, new_x, active)` adds a unit's weighted state
    to the block output (`active`: the mask the unit ran under), unless
    None. `make_step(state)`, if given, returns the `step` of `_evaluate`
    for the halting state before the unit.
    """

    def cond(index, x, output, distribution, flops, state):
      del index, x, output, distribution, flops
      return tf.reduce_any(state.active)

    loop_weights = self._loop_weights(training)

    def body(index, x, output, distribution, flops, state):
      new_x, halting_proba, unit_flops, output = self._next_unit(
          index, x, state.active, training, state.active,
          make_step(state) if make_step else None, output, loop_weights)
      new_state, weight = halting.update(state, halting_proba, self.eps)
      if accumulate is not None:
        output = accumulate(output, weight, new_x, state.active)
      return (index + 1, new_x, output,
              self._distribution_step(distribution, weight, index),
              flops + unit_flops, new_state)

    _, _, output, distribution, flops, state = tf.while_loop(
        cond, body, (tf.constant(1), x, output, distribution, flops, state),
        maximum_iterations=len(self.units) - 1)
    return output, distribution, flops, state

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
      module doc). Also set on the units and heads that have a `sparse`
      attribute.
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

  def _sparse_loop(self, x, output, distribution, flops, state, training):
    """Units 2..L on a shrinking working batch of the active images.

    `done` starts as the block output after the first unit, final for the
    images that halt there, which never enter the working batch. The
    working batch carries the states of the active images and their output
    increments over `done`, added to it when images halt and at the end.
    With units that have `dense_residual` the output starts at x_1 and the
    increments are remainder-weighted residuals (see
    `SACTBlock._sparse_loop`); otherwise they are the weighted states of
    eq. 8.
    """
    batch = tf.shape(x)[0]
    loop_weights = self._loop_weights(training)
    residual_form = self._sparse_executor() == ACT_RESIDUALS
    if residual_form:
      output = x

    def leave(done, images, increments, halted):
      return sparse_lib.add_rows(
          done, tf.boolean_mask(images, halted)[:, tf.newaxis],
          tf.boolean_mask(increments, halted))

    def cond(index, x, increments, images, done, distribution, flops,
             state):
      del index, x, increments, images, done, distribution, flops
      return tf.reduce_any(state.active)

    def body(index, x, increments, images, done, distribution, flops, state):
      keep = tf.gather(state.active, images)

      def drop_halted():
        return (tf.boolean_mask(x, keep), tf.boolean_mask(increments, keep),
                tf.boolean_mask(images, keep),
                leave(done, images, increments, tf.logical_not(keep)))

      x, increments, images, done = tf.cond(
          tf.reduce_all(keep), lambda: (x, increments, images, done),
          drop_halted)
      step = None
      if residual_form:
        remainder = tf.gather(state.remainder, images)
        step = lambda unit, x, increments: passes.residual_step(
            x, unit.dense_residual(x, training), increments, remainder)
      new_x, halting_proba, unit_flops, increments = self._next_unit(
          index, x, state.active, training, None, step, increments,
          loop_weights)
      # The halting state stays batch-sized; scores of halted images are
      # ignored by halting.update.
      halting_proba = tf.scatter_nd(images[:, tf.newaxis], halting_proba,
                                    [batch])
      halting_proba.set_shape(state.active.shape)
      new_state, weight = halting.update(state, halting_proba, self.eps)
      if not residual_form:
        increments = passes.add_weighted(increments, tf.gather(weight, images),
                                   new_x)
      increments.set_shape(x.shape)
      return (index + 1, new_x, increments, images, done,
              self._distribution_step(distribution, weight, index),
              flops + unit_flops, new_state)

    images = tf.cast(tf.where(state.active)[:, 0], tf.int32)
    working = tf.gather(x, images)
    loop_vars = (tf.constant(1), working, tf.zeros_like(working), images,
                 output, distribution, flops, state)
    invariants = tf.nest.map_structure(lambda t: t.shape, loop_vars)
    rows = tf.TensorShape([None, *x.shape[1:]])
    invariants = ((invariants[0], rows, rows, tf.TensorShape([None]))
                  + invariants[4:])
    _, _, increments, images, done, distribution, flops, state = (
        tf.while_loop(cond, body, loop_vars, shape_invariants=invariants,
                      maximum_iterations=len(self.units) - 1))
    output = sparse_lib.add_rows(done, images[:, tf.newaxis], increments)
    return output, distribution, flops, state


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
      only (see the module doc). Set on the units and heads that have a
      `sparse` attribute (`BottleneckUnit`, `CifarUnit`, `SACTHaltingHead`).
    dense_fraction: active fraction of the batch's positions from which
      units, heads and the block compute densely and mask instead, in
      (0, 1]; set on the units and heads like `sparse`. The sparse loop
      computes densely until the active fraction first falls below it and
      on the table of rows from then on (see `_table_loop`).
  """

  spatial = True

  def __init__(self, units, halting_heads, eps=0.01, sparse=True,
               dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION, **kwargs):
    super().__init__(units, halting_heads, eps=eps, sparse=sparse, **kwargs)
    self.dense_fraction = sparse_lib.validate_dense_fraction(dense_fraction)
    for layer in self._sparse_capable():
      layer.dense_fraction = self.dense_fraction

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

  def _sparse_loop(self, x, output, distribution, flops, state, training):
    """Units 2..L, adding their remainder-weighted residuals to the output.

    With the halting distribution p of eq. 8 and the states x_1 .. x_N of a
    position, x_n = x_{n-1} + r_n, the output sum_n p_n x_n equals
    x_1 + sum_{n >= 2} R_{n-1} r_n, where R_{n-1} = 1 - c_{n-1} is the
    remainder before unit n (sum_{m >= n} p_m = R_{n-1}). Every term is
    known when unit n runs, so the unit's residual rows go into the state
    and, scaled, into the output, without gathering the new state again.
    Units without `gathered_residual` / `dense_residual` get the plain
    weighted sum instead. (`_table_loop` uses both forms.)
    """
    executor = self._sparse_executor()
    if executor == SACT_ROW_TABLE:
      return self._table_loop(x, distribution, flops, state, training)
    if executor == SACT_MASKED_UNITS:
      return self._weighted_sparse_loop(x, output, distribution, flops,
                                        state, training)

    def make_step(state):
      active, remainder = state.active, state.remainder

      def step(unit, x, output):
        def gathered():
          centres, rows = unit.gathered_residual(x, active)
          weights = tf.gather_nd(remainder, centres)[:, tf.newaxis]
          return (sparse_lib.add_rows(x, centres, rows),
                  sparse_lib.add_rows(output, centres, weights * rows))

        def dense():
          return passes.residual_step(x, unit.dense_residual(x, training), output,
                                remainder, active)

        return tf.cond(
            tf.equal(sparse_lib.choose_path(active, self.dense_fraction),
                     sparse_lib.GATHERED), gathered, dense)

      return step

    del output  # The sum starts at x_1 (see above).
    return self._masked_loop(x, x, distribution, flops, state, training,
                             None, make_step)

  def _table_loop(self, x, distribution, flops, state, training):
    """Units 2..L on a table of the state's rows around the active positions.

    While at least `dense_fraction` of the positions are active, the units
    run densely, and the output is the weighted sum of the states, one unit
    behind: unit n's pre-activation relu(BN(x_{n-1})) is one pass
    (`passes.preact`), made by the step before as soon as x_{n-1} is (not after
    that step's halting bookkeeping), and a second pass adds p_{n-1} x_{n-1}
    to the output (`passes.accumulate`, a call of its own: one XLA call for both
    ran their loops one after the other, each on one thread). Unit n then
    adds its residual to x_{n-1} as the plain network does (Grappler fuses
    that add into the last convolution, which writes into the state's
    buffer): two elementwise passes over the state per unit in place of
    five (the pre-activation's multiply, add and ReLU, the residual's add
    and the output update of `passes.residual_step`). The last unit's weight p_L
    is known before it runs (the remainder), so its step adds
    (p_{L-1} + p_L) x_{L-1} and, through its last convolution, p_L r_L:
    the output is complete without x_L. (When positions halt before unit
    L, the last state's term is added after the loop.)

    From the first unit below `dense_fraction`, the output turns into the
    residual form of `_sparse_loop` (x_1 + sum_n R_{n-1} r_n equals
    sum_{m < n} p_m x_m + R_{n-1} x_{n-1} before unit n: one pass, none if
    no unit ran densely, as it is then x_1), and the block keeps the state
    at the active positions and at their 3x3 neighbours as rows
    (`_Table`): the units read their neighbourhoods from it and add their
    residuals to its active rows, and to the remainder-weighted output
    increments, without gathering from or scattering into the
    `[B, H, W, C]` state. When positions halt, the table's rows are written
    back and the table is rebuilt for the smaller set; at the end its
    output increments are added to the output. The halting heads read the
    same rows and a running per-image sum of the state for their global
    term.
    """
    batch = tf.shape(x)[0]
    area = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
    mask_shape = self._mask_shape(x)
    channels = x.shape[-1]
    no_rows = tf.zeros([0, channels], x.dtype)
    empty = _Table(
        active=tf.zeros_like(state.active),
        centres=tf.zeros([0, 3], tf.int64), rows=no_rows, increments=no_rows,
        border=no_rows, neighbours=tf.zeros([0, 9], tf.int32),
        state_sum=tf.zeros([batch, channels], x.dtype))
    rows_shape = tf.TensorShape([None, channels])
    table_shapes = _Table(
        active=state.active.shape, centres=tf.TensorShape([None, 3]),
        rows=rows_shape, increments=rows_shape, border=rows_shape,
        neighbours=tf.TensorShape([None, 9]),
        state_sum=tf.TensorShape([None, channels]))

    def add_last_term(output, weight, x, started):
      """output + weight * x; x itself (x_1) before any dense step."""
      return tf.cond(started, lambda: passes.add_weighted(output, weight, x),
                     lambda: x)

    def write_back(x, output, table, had_table, started, weight):
      """x and output with the table's rows added back; without a table,
      the output turns from the weighted sum of states into the residual
      form (`add_last_term`)."""
      def add():
        new_x = sparse_lib.add_rows(
            x, table.centres, table.rows - tf.gather_nd(x, table.centres))
        return new_x, sparse_lib.add_rows(output, table.centres,
                                          table.increments)

      # Without a table there is nothing to write back (adding nothing
      # would still copy the state and the output, which may be one
      # tensor).
      return tf.cond(had_table, add, lambda: (
          x, add_last_term(output, weight, x, started)))

    def rebuild(x, output, table, active, started, weight):
      had_table = tf.reduce_any(table.active)
      x, output = write_back(x, output, table, had_table, started, weight)
      centres = sparse_lib.positions(active)
      dilated = sparse_lib.dilate(active)
      rows = tf.gather_nd(x, centres)
      return x, output, _Table(
          active=active, centres=centres, rows=rows,
          increments=tf.zeros_like(rows),
          border=tf.gather_nd(x, sparse_lib.positions(
              tf.logical_and(dilated, tf.logical_not(active)))),
          neighbours=sparse_lib.neighbour_rows(centres, dilated,
                                               first=active),
          # The old table kept the sum up to date; a pass over the state
          # only when the table follows dense steps.
          state_sum=tf.cond(had_table, lambda: table.state_sum,
                            lambda: tf.reduce_sum(x, axis=[1, 2])))

    loop_weights = self._loop_weights(training)
    last_index = len(self.units) - 1

    def cond(index, x, output, preact, table, distribution, flops, state):
      del index, x, output, preact, table, distribution, flops
      return tf.reduce_any(state.active)

    def last_weight(distribution, index):
      """p_{index-1}: the weight of the unit before unit `index`."""
      return tf.gather(distribution, index - 1, axis=-1)

    def runs_densely(active):
      """Whether a unit under `active` runs densely (it has positions to
      run, and at least `dense_fraction` of them)."""
      path = sparse_lib.choose_path(active, self.dense_fraction)
      return tf.logical_or(tf.equal(path, sparse_lib.ALL_ACTIVE),
                           tf.equal(path, sparse_lib.DENSE_MASKED))

    def preact_of(index, x):
      """Unit `index`'s pre-activation relu(BN(x)) (`passes.preact`)."""
      unit, _, mapping = self._shared_weights(index, loop_weights)
      with keras.StatelessScope(state_mapping=mapping):
        scale, offset = unit.preact_affine()
      # A static shape: see the Grappler note in `dense_step`.
      return tf.ensure_shape(passes.preact(x, scale, offset), x.shape)

    def body(index, x, output, preact, table, distribution, flops, state):
      # `preact`: unit `index`'s pre-activation of x where the step before
      # was dense (or, at unit 2, will be); anything otherwise.
      active = state.active
      started = index > 1
      pending = last_weight(distribution, index)
      has_head = index < len(self.halting_heads)
      unit, head, mapping = self._shared_weights(index, loop_weights)
      ones = lambda: tf.ones(mask_shape, x.dtype)
      with keras.StatelessScope(state_mapping=mapping):
        unit_flops = protocols.unit_flops(unit, tf.shape(x), active)
        if head is not None:
          unit_flops += tf.where(
              has_head, protocols.head_flops(head, tf.shape(x), active),
              tf.zeros_like(unit_flops))

        def dense_step(everywhere, last=False):
          # `output` holds sum_{m < n-1} p_m x_m (nothing if not started).
          weight, bias = pending, None
          if last:
            # The last unit's weight p_L is the remainder where it runs:
            # the output is complete after it, as sum_{m < L-1} p_m x_m +
            # (p_{L-1} + p_L) x_{L-1} + p_L r_L, and p_L r_L comes out of
            # the last convolution (`residual_after_preact` with a weight,
            # whose bias term the pass corrects). x_L is not needed, and
            # no pass over the state follows the loop.
            final = tf.where(active, state.remainder, tf.zeros_like(pending))
            weight, bias = pending + final, (final, unit.residual_bias())
          # The pre-activation came from the step before (see the doc).
          new_output = tf.cond(
              started, lambda: passes.accumulate(x, weight, output, bias),
              lambda: passes.accumulate(x, weight, bias=bias))
          # Grappler fuses the adds below into the last convolution only
          # where it can tell that the shapes are equal; inside the branch
          # it knows them from these static shapes alone.
          current = tf.ensure_shape(preact, x.shape)
          if last:
            residual = unit.residual_after_preact(
                current, training, tf.ensure_shape(final, x.shape[:-1]))
            return (x, tf.ensure_shape(new_output, x.shape) + residual,
                    preact, table, ones())
          residual = unit.residual_after_preact(current, training)
          if everywhere:
            new_x = tf.ensure_shape(x, x.shape) + residual
          else:
            new_x = passes.masked_add(x, residual, active)
          # The next unit's pre-activation (wasted if the next step is a
          # table step or there is none: once per block at most).
          next_preact = preact_of(index + 1, new_x)
          if head is None:
            return new_x, new_output, next_preact, table, ones()
          proba = tf.cond(
              has_head,
              lambda: self._call_head(head, self._heads_take_active[1], new_x,
                                      active, training), ones)
          return new_x, new_output, next_preact, table, proba

        def table_step():
          new_x, new_output, new_table = tf.cond(
              tf.reduce_all(tf.equal(table.active, active)),
              lambda: (x, output, table),
              lambda: rebuild(x, output, table, active, started, pending
                              + tf.where(active, state.remainder,
                                         tf.zeros_like(pending))))
          residual = unit.residual_from_rows(
              [new_table.rows, new_table.border], new_table.neighbours)
          weights = tf.gather_nd(state.remainder, new_table.centres)
          new_table = new_table._replace(
              rows=new_table.rows + residual,
              increments=new_table.increments + weights[:, tf.newaxis]
              * residual,
              # A matmul with the images' one-hot rows: several times faster
              # than tf.math.unsorted_segment_sum here.
              state_sum=new_table.state_sum + tf.matmul(
                  tf.one_hot(new_table.centres[:, 0], batch, dtype=x.dtype),
                  residual, transpose_a=True))
          if head is None:
            return new_x, new_output, preact, new_table, ones()

          def scores():
            rows = head.scores_from_rows(
                [new_table.rows, new_table.border], new_table.neighbours,
                new_table.centres, new_table.state_sum / area)
            return tf.scatter_nd(new_table.centres, rows,
                                 tf.cast(mask_shape, tf.int64))

          return (new_x, new_output, preact, new_table,
                  tf.cond(has_head, scores, ones))

        # Some position is active here (the loop's condition).
        dense = tf.logical_and(tf.logical_not(tf.reduce_any(table.active)),
                               runs_densely(active))
        path = tf.where(
            dense, tf.where(index == last_index, 3,
                            tf.where(tf.reduce_all(active), 0, 1)), 2)
        new_x, output, preact, table, halting_proba = tf.switch_case(
            path, [lambda: dense_step(everywhere=True),
                   lambda: dense_step(everywhere=False), table_step,
                   lambda: dense_step(everywhere=False, last=True)])
      for tensor in (new_x, output, preact):
        tensor.set_shape(x.shape)
      halting_proba.set_shape(active.shape)
      new_state, weight = halting.update(state, halting_proba, self.eps)
      return (index + 1, new_x, output, preact, table,
              self._distribution_step(distribution, weight, index),
              flops + unit_flops, new_state)

    # `output` holds no term yet: x stands in for it, and for unit 2's
    # pre-activation where the first step is a table step.
    preact = tf.cond(runs_densely(state.active), lambda: preact_of(1, x),
                     lambda: x)
    loop_vars = (tf.constant(1), x, x, preact, empty, distribution, flops,
                 state)
    invariants = tf.nest.map_structure(lambda t: t.shape, loop_vars)
    invariants = invariants[:4] + (table_shapes,) + invariants[5:]
    index, x, output, _, table, distribution, flops, state = tf.while_loop(
        cond, body, loop_vars, shape_invariants=invariants,
        maximum_iterations=len(self.units) - 1)
    # Without a table, the last state's term, unless the last unit ran
    # densely and added it; x_1 if no unit ran (every position halted at
    # unit 1, with weight 1).
    output = tf.switch_case(
        tf.where(tf.reduce_any(table.active), 0,
                 tf.where(index > last_index, 1, 2)),
        [lambda: sparse_lib.add_rows(output, table.centres, table.increments),
         lambda: output,
         lambda: add_last_term(output, last_weight(distribution, index), x,
                               index > 1)])
    return output, distribution, flops, state

  def _weighted_sparse_loop(self, x, output, distribution, flops, state,
                            training):
    """Units 2..L; the output gets the weighted states at active positions."""

    def accumulate(output, weight, new_x, active):
      def gathered():
        # The weights are zero where the unit did not run.
        centres = sparse_lib.positions(active)
        return sparse_lib.add_rows(
            output, centres, tf.gather_nd(weight, centres)[:, tf.newaxis]
            * tf.gather_nd(new_x, centres))

      return tf.cond(
          tf.equal(sparse_lib.choose_path(active, self.dense_fraction),
                   sparse_lib.GATHERED), gathered,
          lambda: passes.add_weighted(output, weight, new_x))

    return self._masked_loop(x, output, distribution, flops, state, training,
                             accumulate)

  def get_config(self):
    config = super().get_config()
    config['dense_fraction'] = self.dense_fraction
    return config
