"""Executor 'dense-masked': units 2..L on the whole batch, masking.

Every unit runs on the whole `[B, H, W, C]` state and keeps its result
where the computation goes on only; the output gains the weighted states
(eq. 8's definition). Training-mode calls always run here, as the authors'
code did: batch-norm statistics over gathered images or positions would
differ. So do inference calls with `sparse=False`.
"""

from sact_tf.layers.executors import base
from sact_tf.layers.output_sum import OutputSum


def masked_loop(context, x, output, distribution, flops, state,
                accumulate=None, make_step=None):
  """The halting loop over units 2..L on the whole batch.

  Args:
    context: the block's `base.LoopContext`.
    x: the state after unit 1, `[B, H, W, C]`.
    output: the block output after unit 1.
    distribution, flops, state: as `base.halting_loop`.
    accumulate: `accumulate(output, weight, new_x, active)` adds a unit's
      weighted state to the output (`active`: the mask the unit ran
      under); None: the output is left to `make_step`.
    make_step: `make_step(state)` gives the `step` of
      `base.LoopContext.next_unit` for the halting state before the unit;
      None: `unit(x, active)`.

  Returns:
    (output, distribution, flops, state); so do the other executors.
  """

  def step(index, carry, state, distribution):
    del distribution
    x, output = carry
    new_x, halting_proba, unit_flops, output = context.next_unit(
        index, x, state.active, state.active,
        make_step(state) if make_step else None, output)
    return (new_x, output), halting_proba, unit_flops

  def after_update(carry, weight, state):
    new_x, output = carry
    if accumulate is not None:
      output = accumulate(output, weight, new_x, state.active)
    return new_x, output

  _, (_, output), distribution, flops, state = base.halting_loop(
      context, state, distribution, flops, (x, output), step, after_update)
  return output, distribution, flops, state


def run(context, x, output, distribution, flops, state):
  """Units 2..L on the whole batch; the output gains the weighted states
  (TensorFlow's multiply and add: training graphs keep to them)."""
  return masked_loop(
      context, x, output, distribution, flops, state,
      lambda output, weight, new_x, active: OutputSum.add_state(
          output, weight, new_x, fused=False))
