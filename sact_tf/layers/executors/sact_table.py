"""Executor 'SACT row table': units 2..L on a table of the state's rows
around the active positions.

While at least `dense_fraction` of the positions are active, the units run
densely (`Step.DENSE_EVERYWHERE`, `Step.DENSE_MASKED`, `Step.DENSE_LAST`),
and the output is kept as STATES (`output_sum`), one unit behind: unit n's
pre-activation relu(BN(x_{n-1})) is one pass (`passes.preact`), made by
the step before as soon as x_{n-1} is (not after that step's halting
bookkeeping), and a second pass adds p_{n-1} x_{n-1} to the output
(`passes.accumulate`, a call of its own: one XLA call for both ran their
loops one after the other, each on one thread). Unit n then adds its
residual to x_{n-1} as the plain network does (Grappler fuses that add
into the last convolution, which writes into the state's buffer): two
elementwise passes over the state per unit in place of five (the
pre-activation's multiply, add and ReLU, the residual's add and the output
update of `passes.residual_step`). The last unit's weight p_L is known
before it runs (the remainder), so its step adds (p_{L-1} + p_L) x_{L-1}
and, through its last convolution, p_L r_L: the output is complete without
x_L. (When positions halt before unit L, the last state's term is added
after the loop.)

From the first unit below `dense_fraction` (`Step.TABLE`), the output turns
into RESIDUALS (`OutputSum.to_residuals`: one pass, none if no unit ran
densely, as it is then x_1), and the block keeps the state at the active
positions and at their 3x3 neighbours as rows (`Table`): the units read
their neighbourhoods from it (`residual_from_rows`) and add their residuals
to its active rows, and to the remainder-weighted output increments,
without gathering from or scattering into the `[B, H, W, C]` state. When
positions halt, the table's rows are written back and the table is rebuilt
for the smaller set; at the end its output increments are added to the
output. The halting heads read the same rows (`scores_from_rows`) and a
running per-image sum of the state for their global term.

Needs units 2..L and heads 2..L-1 that share one graph (`streaming`) and
have the row methods of `sact_tf.layers.protocols`.
"""

import collections
import enum

import tensorflow as tf

from sact_tf import sparse as sparse_lib
from sact_tf.layers import passes
from sact_tf.layers import protocols
from sact_tf.layers.executors import base
from sact_tf.layers.output_sum import OutputSum


class Step(enum.IntEnum):
  """What a step of the loop does (the branches of its `tf.switch_case`)."""
  DENSE_EVERYWHERE = 0  # Every position active: the plain network's step.
  DENSE_MASKED = 1  # At least dense_fraction active: dense, then masked.
  TABLE = 2  # Below dense_fraction, or once a table exists: on the rows.
  DENSE_LAST = 3  # Unit L run densely: completes the output without x_L.


class Finish(enum.IntEnum):
  """How the output is completed after the loop."""
  TABLE_INCREMENTS = 0  # A table exists: add its output increments.
  COMPLETE = 1  # Unit L ran densely and completed it.
  LAST_STATE = 2  # Add the last state's weighted term (x_1 if no unit ran).


Table = collections.namedtuple(
    'Table', ['active', 'centres', 'rows', 'increments', 'border',
              'neighbours', 'state_sum'])
Table.__doc__ = """The state around the active positions.

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


def _empty_table(state, x):
  channels = x.shape[-1]
  no_rows = tf.zeros([0, channels], x.dtype)
  table = Table(
      active=tf.zeros_like(state.active),
      centres=tf.zeros([0, 3], tf.int64), rows=no_rows, increments=no_rows,
      border=no_rows, neighbours=tf.zeros([0, 9], tf.int32),
      state_sum=tf.zeros([tf.shape(x)[0], channels], x.dtype))
  rows_shape = tf.TensorShape([None, channels])
  shapes = Table(
      active=state.active.shape, centres=tf.TensorShape([None, 3]),
      rows=rows_shape, increments=rows_shape, border=rows_shape,
      neighbours=tf.TensorShape([None, 9]),
      state_sum=tf.TensorShape([None, channels]))
  return table, shapes


def _to_residuals(output, x, weight, remainder, active, started):
  """`OutputSum.to_residuals`; x itself (x_1) before any dense step."""
  return tf.cond(
      started,
      lambda: OutputSum.to_residuals(output, x, weight, remainder, active),
      lambda: x)


def _write_back(x, output, table, had_table, to_residuals):
  """x and output with the table's rows added back; without a table, the
  output turned into RESIDUALS (`to_residuals()`)."""
  def add():
    new_x = sparse_lib.add_rows(
        x, table.centres, table.rows - tf.gather_nd(x, table.centres))
    return new_x, sparse_lib.add_rows(output, table.centres,
                                      table.increments)

  # Without a table there is nothing to write back (adding nothing would
  # still copy the state and the output, which may be one tensor).
  return tf.cond(had_table, add, lambda: (x, to_residuals()))


def _rebuild(x, output, table, active, to_residuals):
  """The table for `active`, after writing the old one back."""
  had_table = tf.reduce_any(table.active)
  x, output = _write_back(x, output, table, had_table, to_residuals)
  centres = sparse_lib.positions(active)
  dilated = sparse_lib.dilate(active)
  rows = tf.gather_nd(x, centres)
  return x, output, Table(
      active=active, centres=centres, rows=rows,
      increments=tf.zeros_like(rows),
      border=tf.gather_nd(x, sparse_lib.positions(
          tf.logical_and(dilated, tf.logical_not(active)))),
      neighbours=sparse_lib.neighbour_rows(centres, dilated, first=active),
      # The old table kept the sum up to date; a pass over the state only
      # when the table follows dense steps.
      state_sum=tf.cond(had_table, lambda: table.state_sum,
                        lambda: tf.reduce_sum(x, axis=[1, 2])))


def run(context, x, output, distribution, flops, state):
  """Units 2..L; see the module doc."""
  del output  # Rebuilt here (see the module doc).
  training = context.training
  weights = context.weights
  unit, head = weights.unit, weights.head
  takes_active = context.shared_head_takes_active() if head else False
  batch = tf.shape(x)[0]
  area = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
  mask_shape = context.mask_shape(x)
  last_index = context.num_units - 1
  num_heads = len(context.heads)
  empty, table_shapes = _empty_table(state, x)

  def last_weight(distribution, index):
    """p_{index-1}: the weight of the unit before unit `index`."""
    return tf.gather(distribution, index - 1, axis=-1)

  def runs_densely(active):
    """Whether a unit under `active` runs densely (it has positions to run,
    and at least `dense_fraction` of them)."""
    path = sparse_lib.choose_path(active, context.dense_fraction)
    return tf.logical_or(tf.equal(path, sparse_lib.ALL_ACTIVE),
                         tf.equal(path, sparse_lib.DENSE_MASKED))

  def preact_of(index, x):
    """Unit `index`'s pre-activation relu(BN(x)) (`passes.preact`)."""
    with weights.at(index):
      scale, offset = unit.preact_affine()
    # A static shape: see the Grappler note in `dense_step`.
    return tf.ensure_shape(passes.preact(x, scale, offset), x.shape)

  def step(index, carry, state, distribution):
    # `preact`: unit `index`'s pre-activation of x where the step before
    # was dense (or, at unit 2, will be); anything otherwise.
    x, output, preact, table = carry
    active = state.active
    started = index > 1
    pending = last_weight(distribution, index)
    has_head = index < num_heads
    ones = lambda: tf.ones(mask_shape, tf.float32)
    with weights.at(index):
      unit_flops = protocols.unit_flops(unit, tf.shape(x), active)
      if head is not None:
        unit_flops += tf.where(
            has_head, protocols.head_flops(head, tf.shape(x), active),
            tf.zeros_like(unit_flops))

      def dense_step(everywhere, last=False):
        # `output` holds sum_{m < n-1} p_m x_m (nothing if not started).
        weight, bias = pending, None
        if last:
          # The last unit's weight p_L is the remainder where it runs: the
          # output is complete after it, as sum_{m < L-1} p_m x_m +
          # (p_{L-1} + p_L) x_{L-1} + p_L r_L, and p_L r_L comes out of the
          # last convolution (`residual_after_preact` with a weight, whose
          # bias term the pass corrects). x_L is not needed, and no pass
          # over the state follows the loop.
          final = tf.where(active, state.remainder, tf.zeros_like(pending))
          weight, bias = pending + final, (final, unit.residual_bias())
        # The pre-activation came from the step before (see the doc).
        new_output = tf.cond(
            started, lambda: passes.accumulate(x, weight, output, bias),
            lambda: passes.accumulate(x, weight, bias=bias))
        # Grappler fuses the adds below into the last convolution only
        # where it can tell that the shapes are equal; inside the branch it
        # knows them from these static shapes alone.
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
            lambda: context.call_head(head, takes_active, new_x, active),
            ones)
        return new_x, new_output, next_preact, table, proba

      def table_step():
        new_x, new_output, new_table = tf.cond(
            tf.reduce_all(tf.equal(table.active, active)),
            lambda: (x, output, table),
            lambda: _rebuild(x, output, table, active, lambda: _to_residuals(
                output, x, pending, state.remainder, active, started)))
        residual = unit.residual_from_rows(
            [new_table.rows, new_table.border], new_table.neighbours)
        remainders = tf.cast(
            tf.gather_nd(state.remainder, new_table.centres), residual.dtype)
        new_table = new_table._replace(
            rows=new_table.rows + residual,
            increments=new_table.increments + remainders[:, tf.newaxis]
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
          return tf.scatter_nd(new_table.centres, tf.cast(rows, tf.float32),
                               tf.cast(mask_shape, tf.int64))

        return (new_x, new_output, preact, new_table,
                tf.cond(has_head, scores, ones))

      # Some position is active here (the loop's condition).
      dense = tf.logical_and(tf.logical_not(tf.reduce_any(table.active)),
                             runs_densely(active))
      kind = tf.where(
          dense,
          tf.where(index == last_index, int(Step.DENSE_LAST),
                   tf.where(tf.reduce_all(active), int(Step.DENSE_EVERYWHERE),
                            int(Step.DENSE_MASKED))),
          int(Step.TABLE))
      branches = {
          Step.DENSE_EVERYWHERE: lambda: dense_step(everywhere=True),
          Step.DENSE_MASKED: lambda: dense_step(everywhere=False),
          Step.TABLE: table_step,
          Step.DENSE_LAST: lambda: dense_step(everywhere=False, last=True),
      }
      new_x, output, preact, table, halting_proba = tf.switch_case(
          kind, [branches[k] for k in sorted(branches)])
    for tensor in (new_x, output, preact):
      tensor.set_shape(x.shape)
    return (new_x, output, preact, table), halting_proba, unit_flops

  # `output` holds no term yet: x stands in for it, and for unit 2's
  # pre-activation where the first step is a table step.
  preact = tf.cond(runs_densely(state.active), lambda: preact_of(1, x),
                   lambda: x)
  carry = (x, x, preact, empty)
  carry_shapes = (x.shape, x.shape, preact.shape, table_shapes)
  index, carry, distribution, flops, state = base.halting_loop(
      context, state, distribution, flops, carry, step,
      carry_shapes=carry_shapes)
  x, output, _, table = carry
  finish = tf.where(
      tf.reduce_any(table.active), int(Finish.TABLE_INCREMENTS),
      tf.where(index > last_index, int(Finish.COMPLETE),
               int(Finish.LAST_STATE)))
  # Without a table, the last state's term, unless the last unit ran
  # densely and added it; x_1 if no unit ran (every position halted at
  # unit 1, with weight 1).
  endings = {
      Finish.TABLE_INCREMENTS: lambda: sparse_lib.add_rows(
          output, table.centres, table.increments),
      Finish.COMPLETE: lambda: output,
      Finish.LAST_STATE: lambda: tf.cond(
          index > 1,
          lambda: OutputSum.add_state(output, last_weight(distribution,
                                                          index), x),
          lambda: x),
  }
  output = tf.switch_case(finish, [endings[k] for k in sorted(endings)])
  return output, distribution, flops, state
