"""The XLA elementwise passes of the halting blocks' loops.

Each is one fused pass over a `[B, H, W, C]` state (an XLA call writes new
buffers; TensorFlow's add writes into a buffer it no longer needs, which is
why `residual_step` keeps the unmasked state update in TensorFlow). XLA is
kept to these fixed-shape state tensors: on row tensors it would recompile
for every new number of active positions.
"""

import tensorflow as tf


def expand_to_state(weight, dtype=None):
  """`weight` (`[B]` or `[B, H, W]`, float32: the halting bookkeeping's
  dtype) broadcastable to a `[B, H, W, C]` state, cast to `dtype` (the
  state's, which a mixed-precision policy makes float16 or bfloat16)."""
  if dtype is not None:
    weight = tf.cast(weight, dtype)
  while weight.shape.rank < 4:
    weight = weight[..., tf.newaxis]
  return weight


@tf.function(jit_compile=True)
def add_weighted(output, weight, state):
  """output + weight * state, with `weight` `[B]` or `[B, H, W]`.

  XLA fuses this into one pass over the state instead of a multiply and an
  add. The sparse loops use it for units without `dense_residual`, and
  `residual_step` for the output update where every position is active.
  """
  return output + expand_to_state(weight, state.dtype) * state


def residual_step(x, residual, output, remainder, active=None):
  """A unit's residual added to the state and, weighted, to the output.

  Returns (x + residual, output + remainder * residual), with `remainder`
  `[B]` (ACT) or `[B, H, W]` (SACT), and only where `active` (`[B, H, W]`,
  None: everywhere): the state and output update of the units that
  `ACTBlock` evaluates densely at inference, and `SACTBlock` where it
  cannot keep a table. (See `sact_tf.layers.output_sum` for why this sum is
  the block output.)

  Where every position is active, the state update is TensorFlow's add,
  which writes into a buffer it no longer needs (an XLA call writes a new
  one), and only the output update is XLA's (`add_weighted`, one pass
  instead of a multiply and an add). With a mask, both updates are one XLA
  pass (`masked_residual_step`).
  """
  def everywhere():
    return x + residual, add_weighted(output, remainder, residual)

  if active is None:
    return everywhere()
  return tf.cond(
      tf.reduce_all(active), everywhere,
      lambda: masked_residual_step(x, residual, output, remainder, active))


@tf.function(jit_compile=True)
def masked_add(x, residual, active):
  """x + residual where `active` (`[B, H, W]`), x elsewhere, in one pass."""
  return tf.where(active[..., tf.newaxis], x + residual, x)


@tf.function(jit_compile=True)
def preact(x, scale, offset):
  """relu(x * scale + offset), a unit's pre-activation, in one pass."""
  return tf.nn.relu(x * scale + offset)


@tf.function(jit_compile=True)
def accumulate(x, weight, output=None, bias=None):
  """output + weight * x (weight * x where `output` is None), in one pass.

  With `bias` = (w `[B, H, W]`, b `[C]`), (w - 1) * b is added too.
  """
  weighted = expand_to_state(weight, x.dtype) * x
  if bias is not None:
    weighted += (expand_to_state(bias[0], x.dtype) - 1.0) * bias[1]
  return weighted if output is None else output + weighted


@tf.function(jit_compile=True)
def masked_residual_step(x, residual, output, remainder, active):
  """`residual_step` where not every position is active, in one pass."""
  mask = active[..., tf.newaxis]
  return (tf.where(mask, x + residual, x),
          output + tf.where(mask, expand_to_state(remainder, x.dtype),
                            tf.zeros([], x.dtype)) * residual)
