"""Plain NumPy versions of the paper's algorithms, written from the paper.

They are deliberately naive (explicit loops over images and positions) so
that they read like Algorithms 1 and 2 and share nothing with sact_tf.
"""

import numpy as np


def halting_distribution(h, eps):
  """Eqs. (7)-(11) for one sequence of halting scores h_1..h_{L-1}."""
  h = list(h) + [1.0]
  total = 0.0
  for n, value in enumerate(h, start=1):
    total += value
    if total >= 1 - eps:
      break
  remainder = 1.0 - sum(h[:n - 1])
  p = list(h[:n - 1]) + [remainder] + [0.0] * (len(h) - n)
  return n + remainder, n, np.array(p)


def conv3x3(x, kernel, bias):
  """'same' 3x3 convolution of one image `[H, W, C]` with zero padding."""
  height, width, _ = x.shape
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  out = np.zeros((height, width, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += padded[i:i + height, j:j + width, :] @ kernel[i, j]
  return out + bias


def sact_block(x, units, heads, eps):
  """Algorithm 2 for one image `[H, W, C]`.

  `units[l](x)` gives F^l(x) everywhere; `heads[l](x)` the halting scores
  `[H, W]`. Returns (output, per-position ponder cost, num_units).
  """
  height, width, _ = x.shape
  num_units = len(units)
  x_hat = x
  active = np.ones((height, width), bool)
  cumsum = np.zeros((height, width))
  remainder = np.ones((height, width))
  output = None
  rho = np.zeros((height, width))
  count = np.zeros((height, width), int)
  for l in range(num_units):
    if not active.any():
      break
    full = units[l](x_hat)
    if output is None:
      output = np.zeros_like(full)
      x_new = full
    else:
      x_new = x_hat.copy()
      x_new[active] = full[active]
    scores = heads[l](x_new) if l < num_units - 1 else None
    for i in range(height):
      for j in range(width):
        if not active[i, j]:
          continue
        h = scores[i, j] if scores is not None else 1.0
        cumsum[i, j] += h
        rho[i, j] += 1
        count[i, j] += 1
        if cumsum[i, j] < 1 - eps:
          output[i, j] += h * x_new[i, j]
          remainder[i, j] -= h
        else:
          output[i, j] += remainder[i, j] * x_new[i, j]
          rho[i, j] += remainder[i, j]
          active[i, j] = False
    x_hat = x_new
  return output, rho, count


def act_block(x, units, heads, eps):
  """Algorithm 1 for one image; `heads[l](x)` gives a scalar score."""
  output = 0.0
  cumsum, remainder, rho = 0.0, 1.0, 0.0
  for l, unit in enumerate(units):
    x = unit(x)
    h = heads[l](x) if l < len(units) - 1 else 1.0
    cumsum += h
    rho += 1
    if cumsum < 1 - eps:
      output = output + h * x
      remainder -= h
    else:
      output = output + remainder * x
      rho += remainder
      return output, rho, l + 1
  raise AssertionError('unreachable: the last unit always halts')
