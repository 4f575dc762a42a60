"""Halting algebra of ACT and SACT (paper eqs. 7-11, Algorithms 1 and 2).

Everything here works on tensors of any leading shape: `[B]` for ACT (one
halting score per image), `[B, H, W]` for SACT (one per spatial position).

A block of L units produces halting scores h_1 .. h_{L-1}; h_L = 1 by
definition. With the cumulative sum c_n = h_1 + ... + h_n:

  N   = min{n : c_n >= 1 - eps}             number of units evaluated
  R   = 1 - c_{N-1}                         remainder
  p_l = h_l (l < N), R (l = N), 0 (l > N)   halting distribution
  rho = N + R                               ponder cost

N is piecewise constant, so d rho / d h_l = -1 for l < N and 0 for l >= N.
"""

import collections

import tensorflow as tf

from sact_tf import architectures

HaltingState = collections.namedtuple(
    'HaltingState',
    ['cumsum', 'remainder', 'ponder_cost', 'num_units', 'active'])
HaltingState.__doc__ = """Per-image (ACT) or per-position (SACT) halting state.

Fields (all of the same shape, `[B]` or `[B, H, W]`):
  cumsum: float, cumulative halting score c of the units evaluated so far.
  remainder: float, R = 1 - (sum of the halting scores used so far).
  ponder_cost: float, rho accumulated so far (N + R once halted).
  num_units: int32, number of units evaluated so far.
  active: bool, whether the next unit must be evaluated here.
"""


def validate_eps(eps):
  """Returns `eps` as a float, or raises unless it is a number in (0, 1)
  (not a bool or a string)."""
  eps = architectures.finite_float('eps', eps,
                                   ' in the open interval (0, 1)')
  if not 0.0 < eps < 1.0:
    raise ValueError(f'eps must be in the open interval (0, 1), got {eps}.')
  return eps


def initial_state(shape, dtype=tf.float32):
  """The halting state before the first unit: everything active."""
  return HaltingState(
      cumsum=tf.zeros(shape, dtype),
      remainder=tf.ones(shape, dtype),
      ponder_cost=tf.zeros(shape, dtype),
      num_units=tf.zeros(shape, tf.int32),
      active=tf.ones(shape, tf.bool))


def update(state, halting_proba, eps):
  """Accounts for one evaluated unit with halting scores `halting_proba`.

  Args:
    state: `HaltingState` before the unit.
    halting_proba: halting scores h of the unit, same shape as the state
      (ones for the last unit of a block). Values at positions that were not
      active are ignored.
    eps: the halting threshold is 1 - eps.

  Returns:
    `(new_state, weight)`: the state after the unit and the unit's weight p in
    the block output (h where the computation goes on, the remainder where it
    halts at this unit, 0 where it had already halted).
  """
  cumsum = state.cumsum + halting_proba
  halted = cumsum >= 1.0 - eps
  just_halted = tf.logical_and(state.active, halted)
  zeros = tf.zeros_like(halting_proba)
  # N is treated as a constant: where the computation halts, h does not enter
  # the remainder, so d rho / d h = 0 from unit N on.
  used_proba = tf.where(halted, zeros, halting_proba)
  weight = tf.where(just_halted, state.remainder, used_proba)
  active = tf.cast(state.active, halting_proba.dtype)
  ponder_cost = (state.ponder_cost + active
                 + tf.where(just_halted, state.remainder, zeros))
  new_state = HaltingState(
      cumsum=cumsum,
      remainder=state.remainder - used_proba,
      ponder_cost=ponder_cost,
      num_units=state.num_units + tf.cast(state.active, tf.int32),
      active=tf.logical_not(halted))
  return new_state, weight


def halting_distribution(halting_proba, eps=0.01):
  """Ponder cost, number of units and halting distribution of a block.

  Args:
    halting_proba: float tensor `[..., L-1]`, halting scores h_1 .. h_{L-1} of
      units 1 .. L-1 (unit L halts by definition), values in [0, 1].
    eps: float in (0, 1); the computation halts once the cumulative score
      reaches 1 - eps.

  Returns:
    ponder_cost: float `[...]`, rho = N + R.
    num_units: int32 `[...]`, N.
    distribution: float `[..., L]`, the halting distribution p.
  """
  eps = validate_eps(eps)
  halting_proba = tf.convert_to_tensor(halting_proba)
  if not halting_proba.dtype.is_floating:
    raise ValueError('halting_proba must be a float tensor, got dtype '
                     f'{halting_proba.dtype.name}.')
  if halting_proba.shape.rank is None or halting_proba.shape.rank < 1:
    raise ValueError('halting_proba must have shape [..., L-1] with rank >= 1, '
                     f'got shape {halting_proba.shape}.')
  num_heads = halting_proba.shape[-1]
  if num_heads is None:
    raise ValueError('The last dimension of halting_proba (L-1) must be known '
                     'statically.')
  state = initial_state(tf.shape(halting_proba)[:-1], halting_proba.dtype)
  weights = []
  for l in range(num_heads + 1):
    h = (halting_proba[..., l] if l < num_heads else
         tf.ones_like(state.cumsum))
    state, weight = update(state, h, eps)
    weights.append(weight)
  return state.ponder_cost, state.num_units, tf.stack(weights, axis=-1)
