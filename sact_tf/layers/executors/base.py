"""The halting loop over units 2..L, and what every executor calls a unit by.

`halting_loop` is the skeleton every executor runs: a `tf.while_loop` over
units 2..L that stops once nothing is active (in training-mode calls, a
`tf.cond` per unit that skips it then), and after each unit does the
bookkeeping of eqs. 7-11 once (`halting.update`: cumulative scores,
remainders, N, ponder cost; the unit's weight in the halting distribution;
the FLOPs). An executor supplies the step: how a unit and its halting head
run on its own representation of the state (the whole batch, a working
batch of images, a table of rows), returning the head's scores in the
shape of the halting state.

`LoopContext` is a block's call seen from the executors: its units and
heads, `eps`, the execution settings, the Keras training flag, and how unit
k is reached (a graph per unit in a `tf.switch_case`, or unit 2's graph with
unit k's weights, `sact_tf.layers.streaming`).
"""

import tensorflow as tf

from sact_tf import halting
from sact_tf.layers import protocols
from sact_tf.layers import streaming


def halting_loop(context, state, distribution, flops, carry, step,
                 after_update=None, carry_shapes=None):
  """Runs units 2..L, stopping once no image / position is active.

  Args:
    context: the block's `LoopContext`.
    state: `halting.HaltingState` after unit 1.
    distribution: the halting distribution so far, `[..., L]`.
    flops: int64 `[B]`, FLOPs so far.
    carry: the executor's loop variables (a nest of tensors).
    step: `step(index, carry, state, distribution)` runs unit `index` (a
      scalar int32 tensor, or a Python int where `context.unrolled`; 2..L
      counted from 1 as 1..L-1 from 0) and its
      head: returns (carry, halting scores in the state's shape, FLOPs
      `[B]`). Scores where the state is not active are ignored.
    after_update: optional `after_update(carry, weight, state)`: what the
      executor does with the unit's weight p (`state`: before the unit).
    carry_shapes: the shape invariants of `carry` (default: its shapes).

  Returns:
    (index after the last unit run, carry, distribution, flops, state).
  """
  eps = context.eps
  num_units = context.num_units

  def cond(index, carry, distribution, flops, state):
    del index, carry, distribution, flops
    return tf.reduce_any(state.active)

  def body(index, carry, distribution, flops, state):
    carry, halting_proba, unit_flops = step(index, carry, state, distribution)
    halting_proba.set_shape(state.active.shape)
    new_state, weight = halting.update(state, halting_proba, eps)
    if after_update is not None:
      carry = after_update(carry, weight, state)
    return (index + 1, carry,
            distribution_step(distribution, weight, index, num_units),
            flops + unit_flops, new_state)

  if context.unrolled:
    return _unrolled_loop(context, state, distribution, flops, carry, body)
  loop_vars = (tf.constant(1), carry, distribution, flops, state)
  invariants = tf.nest.map_structure(lambda t: t.shape, loop_vars)
  if carry_shapes is not None:
    invariants = (invariants[0], carry_shapes) + invariants[2:]
  return tf.while_loop(cond, body, loop_vars, shape_invariants=invariants,
                       maximum_iterations=num_units - 1)


def _unrolled_loop(context, state, distribution, flops, carry, body):
  """`halting_loop`'s loop with a `tf.cond` per unit in place of the
  `tf.while_loop` (units counted as Python ints, so that each calls its
  own graph directly): the same units run, and none once nothing is
  active.

  For training-mode calls. A unit's forward and backward pass inside a
  while loop took longer than at the top level of the function (two
  ResNet-50 block-1 units: 1.09x), and a graph per unit is what training
  runs anyway.
  """
  index = tf.constant(1)
  loop_vars = (carry, distribution, flops, state)
  for unit_index in range(1, context.num_units):
    def run(unit_index=unit_index, loop_vars=loop_vars):
      return (tf.constant(unit_index + 1),) + tuple(
          body(unit_index, *loop_vars)[1:])

    def skip(index=index, loop_vars=loop_vars):
      return (index,) + loop_vars

    outputs = tf.cond(tf.reduce_any(loop_vars[-1].active), run, skip)
    # tf.cond may return lists where the branches gave tuples.
    index, *rest = tf.nest.pack_sequence_as((index,) + loop_vars,
                                            tf.nest.flatten(outputs))
    loop_vars = tuple(rest)
  return (index,) + loop_vars


def distribution_step(distribution, weight, index, num_units):
  """The halting distribution with unit `index`'s weight p put in."""
  return distribution + weight[..., tf.newaxis] * tf.one_hot(
      index, num_units, dtype=weight.dtype)


def plain_step(training, unit_active):
  """The `step` of `LoopContext.next_unit` that calls the unit as a layer
  (`unit(x, unit_active)`), leaving the output alone."""
  return lambda unit, x, output: (unit(x, unit_active, training=training),
                                  output)


class LoopContext:
  """A halting block's call, as its executor sees it.

  Attributes:
    units, heads: the block's units and halting heads.
    eps: the halting threshold is 1 - eps.
    spatial: True for SACT (a halting state per position), False for ACT.
    dense_fraction: SACT: the active fraction from which units run densely
      (the call's `sact_tf.sparse.Execution`).
    training: the Keras training flag of the call.
    weights: a `streaming.LoopWeights` where units 2..L run as one graph,
      else None (a graph per unit).
    unrolled: the loop is a `tf.cond` per unit instead of a
      `tf.while_loop` (training-mode calls, which run a graph per unit).
  """

  def __init__(self, block, training, shared_graph, execution):
    self.units = block.units
    self.heads = block.halting_heads
    self.eps = block.eps
    self.spatial = block.spatial
    self.dense_fraction = execution.dense_fraction
    self.training = training
    self.num_units = len(self.units)
    self._heads_take_active = [protocols.head_takes_active(head)
                               for head in self.heads]
    self.weights = None
    if shared_graph and self.num_units > 1:
      self.weights = streaming.LoopWeights(self.units[1:], self.heads[1:])
    self.unrolled = bool(training) and self.weights is None

  def mask_shape(self, x):
    """The shape of the halting state of a state `x`: `[B]` or
    `[B, H, W]`."""
    shape = tf.shape(x)
    return shape[:3] if self.spatial else shape[:1]

  def call_head(self, head, takes_active, x, active):
    """`head`'s scores on `x` in the shape of `x`'s mask; `active` goes to
    heads that take it."""
    if takes_active:
      proba = head(x, active, training=self.training)
    else:
      proba = head(x, training=self.training)
    # The halting bookkeeping is float32 whatever the state's dtype.
    return tf.cast(tf.reshape(proba, self.mask_shape(x)), tf.float32)

  def head_after(self, index):
    """(head, takes_active) of unit `index` (a Python int, from 0)."""
    return self.heads[index], self._heads_take_active[index]

  def shared_head_takes_active(self):
    return self._heads_take_active[1]

  def first_unit(self, block, x):
    """Unit 1 and its head on the block input `x`: (state, halting scores,
    FLOPs `[B]`)."""
    unit = self.units[0]
    flops = protocols.unit_flops(unit, tf.shape(x), None)
    x = block.first_unit(x, self.training)
    return (x,) + self._head_scores(0, x, None, None, flops)

  def _head_scores(self, index, x, active, unit_active, flops):
    """(halting scores, FLOPs `[B]`) of head `index` on `x`, ones for the
    last unit; `flops`: the unit's, which the head's are added to."""
    if index < len(self.heads):
      head, takes_active = self.head_after(index)
      halting_proba = self.call_head(head, takes_active, x, unit_active)
      flops += protocols.head_flops(head, tf.shape(x), active)
    else:
      halting_proba = tf.ones(self.mask_shape(x), tf.float32)
    batch = tf.shape(x if active is None else active)[:1]
    return halting_proba, tf.broadcast_to(flops, batch)

  def next_unit(self, index, x, active, unit_active, step=None, output=None):
    """Unit `index` (a scalar tensor, from 1) and its head on `x`.

    Args:
      index: the unit, counted from 0 (1..L-1): a scalar tensor, or a
        Python int in an unrolled loop.
      x: the state the unit reads, `[B, H, W, C]` or a working subset.
      active: the block's mask before the unit; FLOPs are counted from it.
      unit_active: the mask the unit and the head are given (None: all).
      step: `step(unit, x, output)` evaluates the unit and returns (new
        state, new output); None: `plain_step`.
      output: what `step` updates besides the state.

    Returns:
      (new state, halting scores in the shape of `x`'s mask, FLOPs `[B]`,
      output).
    """
    step = step or plain_step(self.training, unit_active)
    if self.weights is None:
      new_x, halting_proba, flops, output = self._switch_units(
          index, x, active, unit_active, step, output)
    else:
      new_x, halting_proba, flops, output = self._shared_graph_unit(
          index, x, active, unit_active, step, output)
    new_x.set_shape(x.shape)
    return new_x, halting_proba, flops, output

  def _switch_units(self, index, x, active, unit_active, step, output):
    """One `tf.switch_case` branch per unit, each with its own graph (the
    unit's own graph where `index` is a Python int: an unrolled loop)."""
    def branch(k):
      # k is bound now: a closure over the loop variable would make every
      # branch call the last unit.
      def run():
        unit = self.units[k]
        flops = protocols.unit_flops(unit, tf.shape(x), active)
        new_x, new_output = step(unit, x, output)
        return (new_x,) + self._head_scores(
            k, new_x, active, unit_active, flops) + (new_output,)
      return run
    if isinstance(index, int):
      return branch(index)()
    return tf.switch_case(
        index - 1, [branch(k) for k in range(1, self.num_units)])

  def _shared_graph_unit(self, index, x, active, unit_active, step, output):
    """Unit `index` as the graph of unit 2 run with unit `index`'s weights
    (`streaming`)."""
    unit, head = self.weights.unit, self.weights.head
    with self.weights.at(index):
      flops = protocols.unit_flops(unit, tf.shape(x), active)
      new_x, output = step(unit, x, output)
      mask_shape = self.mask_shape(new_x)
      if head is None:
        halting_proba = tf.ones(mask_shape, tf.float32)
      else:
        def evaluate_head():
          return (self.call_head(head, self.shared_head_takes_active(),
                                 new_x, unit_active),
                  protocols.head_flops(head, tf.shape(new_x), active))

        halting_proba, head_flops = tf.cond(
            index < len(self.heads), evaluate_head,
            lambda: (tf.ones(mask_shape, tf.float32),
                     tf.zeros_like(flops)))
        flops += head_flops
    batch = tf.shape(x if active is None else active)[:1]
    return new_x, halting_proba, tf.broadcast_to(flops, batch), output
