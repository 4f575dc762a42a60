"""ACT executors: units 2..L on a shrinking working batch of the images
still active ('ACT working batch, residuals' / '..., weighted states').

The block keeps the states of the active images as a working batch,
evaluates each unit and halting head on it with `active=None`, and drops
images from it as they halt. This lives in the block rather than in the
units because the working batch carries over from unit to unit: an image
leaves it once, when it halts, instead of every unit gathering and
scattering the active images.

`done` starts as the block output after the first unit, final for the
images that halt there, which never enter the working batch. The working
batch carries the states of the active images and their output increments
over `done`, added to it when images halt and at the end. With units that
have `dense_residual` the output is kept as RESIDUALS (it starts at x_1,
the increments are remainder-weighted residuals); otherwise as STATES
(`output_sum`).
"""

import tensorflow as tf

from sact_tf import sparse as sparse_lib
from sact_tf.layers.executors import base
from sact_tf.layers.output_sum import OutputSum


def run(context, x, output, distribution, flops, state, form):
  """Units 2..L on the working batch; `form`: `OutputSum.RESIDUALS` or
  `OutputSum.STATES`."""
  batch = tf.shape(x)[0]
  training = context.training
  residual_form = form == OutputSum.RESIDUALS
  if residual_form:
    output = OutputSum.start(x, None, form)

  def leave(done, images, increments, halted):
    return sparse_lib.add_rows(
        done, tf.boolean_mask(images, halted)[:, tf.newaxis],
        tf.boolean_mask(increments, halted))

  def step(index, carry, state, distribution):
    del distribution
    x, increments, images, done = carry
    keep = tf.gather(state.active, images)

    def drop_halted():
      return (tf.boolean_mask(x, keep), tf.boolean_mask(increments, keep),
              tf.boolean_mask(images, keep),
              leave(done, images, increments, tf.logical_not(keep)))

    x, increments, images, done = tf.cond(
        tf.reduce_all(keep), lambda: (x, increments, images, done),
        drop_halted)
    unit_step = None
    if residual_form:
      remainder = tf.gather(state.remainder, images)
      unit_step = lambda unit, x, increments: OutputSum.add_residual(
          x, unit.dense_residual(x, training), increments, remainder)
    new_x, halting_proba, unit_flops, increments = context.next_unit(
        index, x, state.active, None, unit_step, increments)
    # The halting state stays batch-sized; scores of halted images are
    # ignored by halting.update.
    halting_proba = tf.scatter_nd(images[:, tf.newaxis], halting_proba,
                                  [batch])
    increments.set_shape(x.shape)
    return (new_x, increments, images, done), halting_proba, unit_flops

  def after_update(carry, weight, state):
    del state
    new_x, increments, images, done = carry
    if not residual_form:
      increments = OutputSum.add_state(increments, tf.gather(weight, images),
                                       new_x)
      increments.set_shape(new_x.shape)
    return new_x, increments, images, done

  images = tf.cast(tf.where(state.active)[:, 0], tf.int32)
  working = tf.gather(x, images)
  rows = tf.TensorShape([None, *x.shape[1:]])
  _, carry, distribution, flops, state = base.halting_loop(
      context, state, distribution, flops,
      (working, tf.zeros_like(working), images, output), step, after_update,
      carry_shapes=(rows, rows, tf.TensorShape([None]), output.shape))
  _, increments, images, done = carry
  output = sparse_lib.add_rows(done, images[:, tf.newaxis], increments)
  return output, distribution, flops, state


def run_residuals(context, x, output, distribution, flops, state):
  return run(context, x, output, distribution, flops, state,
             OutputSum.RESIDUALS)


def run_states(context, x, output, distribution, flops, state):
  return run(context, x, output, distribution, flops, state,
             OutputSum.STATES)
