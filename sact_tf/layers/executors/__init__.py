"""How a halting block runs units 2..L: the executors.

A halting block (`sact_tf.layers.blocks`) evaluates unit 1 everywhere,
then picks one executor per call (`Executor`, the block's `executor()`) and
hands it the state, the halting state and the output after unit 1. Every
executor runs the same halting loop (`base.halting_loop`: the bookkeeping of
eqs. 7-11, written once, with `sact_tf.halting.update` as the halting rule)
and differs in how a unit runs on its representation of the state:

  DENSE_MASKED ('dense-masked', `dense`): the whole batch, each unit
    masking its result. Training-mode calls and `sparse=False`.
  ACT_RESIDUALS / ACT_STATES (`act_batch`): a working batch of the images
    still active; the output gains remainder-weighted residuals (units with
    `dense_residual`) or weighted states.
  SACT_ROW_TABLE (`sact_table`): dense steps while at least `dense_fraction`
    of the positions are active, then a table of the rows around the active
    positions (units and heads with the row methods, sharing one graph).
  SACT_GATHERED / SACT_MASKED_UNITS (`sact_masked`): units that compute
    their residual at gathered positions, or that are called with the mask.

The output of eq. 8 is accumulated in the forms of `output_sum`; units 2..L
share one graph where they can (`streaming`).
"""

import collections

from sact_tf.layers.executors import act_batch
from sact_tf.layers.executors import base
from sact_tf.layers.executors import dense
from sact_tf.layers.executors import sact_masked
from sact_tf.layers.executors import sact_table

DENSE_MASKED = 'dense-masked'
ACT_RESIDUALS = 'ACT working batch, residuals'
ACT_STATES = 'ACT working batch, weighted states'
SACT_ROW_TABLE = 'SACT row table'
SACT_GATHERED = 'SACT gathered residuals'
SACT_MASKED_UNITS = 'SACT masked units'

Executor = collections.namedtuple('Executor', ['loop', 'shared_graph'])
Executor.__doc__ = """How a halting block runs units 2..L (its `executor()`).

  loop: one of the executor names of this module (DENSE_MASKED, ...).
  shared_graph: True where the loop runs unit 2's graph with each unit's
    variables (`sact_tf.layers.streaming`), False for a `tf.switch_case`
    with a graph per unit.
"""

# run(context, x, output, distribution, flops, state) -> (output,
# distribution, flops, state), by executor name.
RUNNERS = {
    DENSE_MASKED: dense.run,
    ACT_RESIDUALS: act_batch.run_residuals,
    ACT_STATES: act_batch.run_states,
    SACT_ROW_TABLE: sact_table.run,
    SACT_GATHERED: sact_masked.run_gathered,
    SACT_MASKED_UNITS: sact_masked.run_masked_units,
}

LoopContext = base.LoopContext

__all__ = ['ACT_RESIDUALS', 'ACT_STATES', 'DENSE_MASKED', 'Executor',
           'LoopContext', 'RUNNERS', 'SACT_GATHERED', 'SACT_MASKED_UNITS',
           'SACT_ROW_TABLE']
