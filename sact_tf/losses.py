"""The ponder loss (paper eq. 13)."""

import tensorflow as tf

from sact_tf import architectures


def validate_tau(tau):
  """Returns `tau` as a float, or raises unless it is a finite number >= 0
  (not a bool or a string)."""
  tau = architectures.finite_float('tau', tau,
                                   ' >= 0 (the ponder cost weight)')
  if not tau >= 0.0:
    raise ValueError(f'tau must be >= 0 (the ponder cost weight), got {tau}.')
  return tau


def ponder_loss(outputs, tau):
  """tau * sum over blocks of the batch-mean block ponder cost.

  Args:
    outputs: a model's output dict (uses `ponder_cost`, `[B]`, the block
      ponder costs summed per image), or a `[B]` tensor of it.
    tau: the ponder cost weight, >= 0.
  """
  tau = validate_tau(tau)
  ponder_cost = outputs['ponder_cost'] if isinstance(outputs, dict) else outputs
  return tau * tf.reduce_mean(ponder_cost)
