"""SACT executors for units without the row-table methods.

'SACT gathered residuals' (units with `gathered_residual` and
`dense_residual`): the output is kept as RESIDUALS (`output_sum`); below
`dense_fraction` a unit computes its residual at the active positions'
neighbourhoods and adds it there, above it densely with a mask.

'SACT masked units' (units with `call(x, active)` alone): each unit is
called with the mask and evaluates where it chooses; the output gains the
weighted states at the active positions (gathered below
`dense_fraction`).
"""

import tensorflow as tf

from sact_tf import sparse as sparse_lib
from sact_tf.layers.executors import dense
from sact_tf.layers.output_sum import OutputSum


def _gathers(active, dense_fraction):
  """Whether a unit under `active` computes at gathered positions."""
  return tf.equal(sparse_lib.choose_path(active, dense_fraction),
                  sparse_lib.GATHERED)


def run_gathered(context, x, output, distribution, flops, state):
  """Units 2..L adding their remainder-weighted residuals to the output."""
  training = context.training

  def make_step(state):
    active, remainder = state.active, state.remainder

    def step(unit, x, output):
      def gathered():
        centres, rows = unit.gathered_residual(x, active)
        return OutputSum.add_residual_rows(x, output, centres, rows,
                                           remainder)

      def dense_residual():
        return OutputSum.add_residual(
            x, unit.dense_residual(x, training), output, remainder, active)

      return tf.cond(_gathers(active, context.dense_fraction), gathered,
                     dense_residual)

    return step

  del output  # RESIDUALS start at x_1.
  return dense.masked_loop(
      context, x, OutputSum.start(x, None, OutputSum.RESIDUALS),
      distribution, flops, state, None, make_step)


def run_masked_units(context, x, output, distribution, flops, state):
  """Units 2..L called with the mask; the output gets the weighted states
  at the active positions."""

  def accumulate(output, weight, new_x, active):
    def gathered():
      # The weights are zero where the unit did not run.
      centres = sparse_lib.positions(active)
      return sparse_lib.add_rows(
          output, centres, tf.gather_nd(weight, centres)[:, tf.newaxis]
          * tf.gather_nd(new_x, centres))

    return tf.cond(_gathers(active, context.dense_fraction), gathered,
                   lambda: OutputSum.add_state(output, weight, new_x))

  return dense.masked_loop(context, x, output, distribution, flops, state,
                           accumulate)
