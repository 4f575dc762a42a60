"""The block output of eq. 8, y = sum_n p_n x_n, as the halting loops build it.

A position (SACT) or image (ACT) that ran units 1..N has states
x_1 .. x_N, x_n = x_{n-1} + r_n (r_n: unit n's residual), and the halting
distribution p. The loops keep the sum in one of two forms:

  STATES: sum_{m <= n} p_m x_m after unit n. The definition; each unit adds
    its weighted state (a pass over the state, after the halting scores).
  RESIDUALS: x_1 + sum_{2 <= m <= n} R_{m-1} r_m, with R_{m-1} = 1 - c_{m-1}
    the remainder before unit m. Every term is known when unit m runs (its
    weight does not wait for its halting score), so a unit that computes
    its residual at a few positions adds it there, to the state and,
    scaled, to the output, without reading the new state again.

They are related by RESIDUALS(n) = STATES(n) + R_n x_n at a position still
running after unit n (R_n its remainder), and are equal once it has halted
(sum_{m >= n} p_m = R_{n-1}): both give y at the end. `to_residuals`
converts the first into the second.

`sact_tf.layers.executors.sact_table` keeps STATES one unit behind (the
weight of the newest state is added with the next unit's pass, see there).
"""

import tensorflow as tf

from sact_tf import sparse as sparse_lib
from sact_tf.layers import passes


class OutputSum:
  """The operations on the eq. 8 output in its two forms (see the module
  doc). `weight`, `remainder`: `[B]` (ACT) or `[B, H, W]` (SACT)."""

  STATES = 'weighted states'
  RESIDUALS = 'remainder-weighted residuals'

  @staticmethod
  def start(x1, p1, form):
    """The output after unit 1 (state `x1`, weight `p1`) in `form`."""
    if form == OutputSum.RESIDUALS:
      return x1
    return passes.expand_to_state(p1, x1.dtype) * x1

  @staticmethod
  def add_state(output, weight, x, fused=True):
    """STATES: output + weight * x; in one XLA pass
    (`passes.add_weighted`), or as TensorFlow's multiply and add where not
    `fused`."""
    if fused:
      return passes.add_weighted(output, weight, x)
    return output + passes.expand_to_state(weight, x.dtype) * x

  @staticmethod
  def add_residual(x, residual, output, remainder, active=None):
    """RESIDUALS: (x + residual, output + remainder * residual), where
    `active` (None: everywhere); `passes.residual_step`."""
    return passes.residual_step(x, residual, output, remainder, active)

  @staticmethod
  def add_residual_rows(x, output, centres, rows, remainder):
    """RESIDUALS with a residual computed at positions `centres` (int64
    `[n, 3]`) only: `rows` `[n, C]` added to x there, and scaled by the
    remainder to the output."""
    weights = tf.cast(tf.gather_nd(remainder, centres), rows.dtype)[
        :, tf.newaxis]
    return (sparse_lib.add_rows(x, centres, rows),
            sparse_lib.add_rows(output, centres, weights * rows))

  @staticmethod
  def to_residuals(output, x, weight, remainder, active):
    """STATES one unit behind, turned into RESIDUALS.

    Args:
      output: sum_{m < n} p_m x_m (unit n's weight p_n not yet added).
      x: x_n.
      weight: p_n.
      remainder: R_n, the remainder after unit n.
      active: where the computation goes on after unit n (elsewhere, p_n
        already holds what is left).

    Returns:
      output + (p_n + R_n) x_n, with R_n taken where `active` only.
    """
    return passes.add_weighted(
        output, weight + tf.where(active, remainder, tf.zeros_like(weight)),
        x)
