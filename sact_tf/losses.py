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


def ponder_cost_mean(outputs, global_batch_size=None):
  """The batch mean of the per-image ponder cost (0 for a plain ResNet).

  Args:
    outputs: a model's output dict (uses `ponder_cost`, `[B]`, the block
      ponder costs summed per image; a dict without it, from a plain ResNet,
      gives 0), or a `[B]` tensor of it.
    global_batch_size: under a `tf.distribute` strategy, the global batch:
      each replica then returns its share (sum / global batch), so that
      the replicas' values add up to the mean.
  """
  if isinstance(outputs, dict):
    if 'ponder_cost' not in outputs:
      return tf.constant(0.0)
    outputs = outputs['ponder_cost']
  ponder_cost = tf.cast(outputs, tf.float32)
  if global_batch_size is None:
    return tf.reduce_mean(ponder_cost)
  return tf.nn.compute_average_loss(ponder_cost,
                                    global_batch_size=global_batch_size)


def ponder_loss(outputs, tau, global_batch_size=None):
  """tau * sum over blocks of the batch-mean block ponder cost (eq. 13).

  Args:
    outputs, global_batch_size: as for `ponder_cost_mean`.
    tau: the ponder cost weight, >= 0.
  """
  return validate_tau(tau) * ponder_cost_mean(outputs, global_batch_size)
