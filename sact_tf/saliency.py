"""Ponder maps as saliency maps: post-processing, centre baseline, AUC-Judd.

Everything here is NumPy (and SciPy for the Gaussian filter) on single
`[H, W]` maps, as the MIT saliency benchmark defines its metrics.
"""

import numpy as np
from scipy import ndimage


def _as_2d(name, value):
  array = np.asarray(value, dtype=np.float64)
  if array.ndim != 2:
    raise ValueError(f'{name} must be a 2-D [height, width] map, got shape '
                     f'{array.shape}.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains NaN or infinite values.')
  return array


def resize(saliency_map, shape):
  """Bilinear resize of a `[H, W]` map to `shape`, pixel centres aligned."""
  saliency_map = _as_2d('saliency_map', saliency_map)
  shape = tuple(int(s) for s in shape)
  if saliency_map.shape == shape:
    return saliency_map
  coords = [(np.arange(out) + 0.5) * size / out - 0.5
            for out, size in zip(shape, saliency_map.shape)]
  grid = np.meshgrid(*coords, indexing='ij')
  return ndimage.map_coordinates(saliency_map, grid, order=1, mode='nearest')


def normalize(saliency_map):
  """Min-max normalises a map to [0, 1] (a constant map becomes zeros)."""
  saliency_map = _as_2d('saliency_map', saliency_map)
  low, high = saliency_map.min(), saliency_map.max()
  if high - low <= 0:
    return np.zeros_like(saliency_map)
  return (saliency_map - low) / (high - low)


def auc_judd(saliency_map, fixation_map, jitter=True, seed=0):
  """AUC-Judd of a saliency map against a binary fixation map.

  The MIT saliency benchmark's definition: the saliency map is resized to the
  fixation map's size, tiny uniform noise (scale 1e-7, seeded) breaks ties,
  the map is min-max normalised; the thresholds are the map's values at the
  fixated pixels, sorted in descending order; at the i-th threshold the true
  positive rate is i / Nfix and the false positive rate is (number of pixels
  at or above the threshold - i) / (Npix - Nfix); with the (0, 0) and (1, 1)
  ends added, the score is the trapezoid area under that curve.

  Args:
    saliency_map: `[h, w]` array, any scale.
    fixation_map: `[H, W]` array, nonzero at fixated pixels.
    jitter: add the tie-breaking noise.
    seed: seed of the noise, for reproducible scores.

  Returns:
    The score in [0, 1], or NaN when the fixation map has no fixation (such
    images have no score and are left out of averages: use `np.nanmean`).
  """
  fixations = _as_2d('fixation_map', fixation_map) > 0
  saliency = resize(saliency_map, fixations.shape)
  if jitter:
    saliency = saliency + np.random.default_rng(seed).uniform(
        size=saliency.shape) * 1e-7
  saliency = normalize(saliency).ravel()
  fixations = fixations.ravel()
  num_fixations = int(fixations.sum())
  num_pixels = saliency.size
  if num_fixations == 0:
    return float('nan')
  if num_fixations == num_pixels:
    raise ValueError('Every pixel is fixated: the false positive rate is '
                     'undefined.')
  thresholds = np.sort(saliency[fixations])[::-1]
  ascending = np.sort(saliency)
  above = num_pixels - np.searchsorted(ascending, thresholds, side='left')
  hits = np.arange(1, num_fixations + 1)
  tpr = np.concatenate([[0.0], hits / num_fixations, [1.0]])
  fpr = np.concatenate([[0.0], (above - hits) / (num_pixels - num_fixations),
                        [1.0]])
  return float(np.trapezoid(tpr, fpr))


def center_baseline(height, width, sigma=0.25):
  """A Gaussian centred on the image, its width relative to each axis.

  sigma is a fraction of the height (vertically) and of the width
  (horizontally), so the blob stretches with the aspect ratio. Peak 1.
  """
  if sigma <= 0:
    raise ValueError(f'sigma must be > 0, got {sigma}.')
  rows = (np.arange(height) + 0.5) / height - 0.5
  cols = (np.arange(width) + 0.5) / width - 0.5
  return np.exp(-(rows[:, None]**2 + cols[None, :]**2) / (2 * sigma**2))


def blur(saliency_map, sigma):
  """Gaussian blur; sigma is a fraction of the map's larger side (0: none)."""
  saliency_map = _as_2d('saliency_map', saliency_map)
  if sigma < 0:
    raise ValueError(f'sigma must be >= 0, got {sigma}.')
  if sigma == 0:
    return saliency_map
  return ndimage.gaussian_filter(saliency_map,
                                 sigma * max(saliency_map.shape),
                                 mode='nearest')


def ponder_saliency(ponder_map, shape, blur_sigma, center_weight,
                    center_sigma=0.25):
  """The paper's saliency map from a ponder map (section 4.3).

  Resize to `shape`, blur, normalise to [0, 1], then mix linearly with the
  centre baseline: (1 - w) * map + w * centre.
  """
  if not 0.0 <= center_weight <= 1.0:
    raise ValueError(f'center_weight must be in [0, 1], got {center_weight}.')
  saliency = normalize(blur(resize(ponder_map, shape), blur_sigma))
  if center_weight == 0:
    return saliency
  return ((1 - center_weight) * saliency
          + center_weight * center_baseline(shape[0], shape[1], center_sigma))


BLUR_GRID = (0.0, 0.01, 0.02, 0.04, 0.08)
CENTER_SIGMA_GRID = (0.15, 0.2, 0.25, 0.3, 0.4)
CENTER_WEIGHT_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8)


def _mean_auc(saliency_maps, data):
  scores = [auc_judd(s, f) for s, (_, f, _) in zip(saliency_maps, data)]
  return (float(np.nanmean(scores)) if not np.all(np.isnan(scores))
          else float('nan')), scores


def _center(ponder_map, fixations, center_sigma):
  del ponder_map
  return center_baseline(fixations.shape[0], fixations.shape[1],
                         center_sigma)


def _ponder(ponder_map, fixations, blur, center_weight=0.0,
            center_sigma=0.25):
  return ponder_saliency(ponder_map, fixations.shape, blur, center_weight,
                         center_sigma)


def _tune(data, make, grid):
  """The grid entry with the best mean AUC-Judd on `data`."""
  def score(params):
    mean, _ = _mean_auc([make(p, f, **params) for p, f, _ in data], data)
    return -1.0 if np.isnan(mean) else mean
  return max(grid, key=score)


def evaluate_protocol(tune, test, blur_grid=BLUR_GRID,
                      center_sigma_grid=CENTER_SIGMA_GRID,
                      center_weight_grid=CENTER_WEIGHT_GRID):
  """The paper's saliency protocol (section 4.3) on ponder maps.

  Parameters are chosen by mean AUC-Judd on `tune` (the first half of each
  category) and scores reported on `test` (the second half), for three rows:

  * `center_baseline`: the centre Gaussian alone (its width tuned);
  * `ponder`: the blurred, normalised ponder map alone (blur tuned);
  * `ponder_center`: the ponder map mixed with the tuned centre Gaussian
    (blur and mixing weight tuned).

  Every AUC-Judd is computed at the fixation maps' resolution, as the
  benchmark defines it, so the cost grows with the grid size times the
  number of images times the fixation map size.

  Args:
    tune, test: lists of `(ponder_map [h, w], fixation_map [H, W],
      category)` triples.
    blur_grid: blur widths, fractions of the larger side.
    center_sigma_grid: centre Gaussian widths, fractions of each axis.
    center_weight_grid: weights of the centre Gaussian in the mix.

  Returns:
    A dict keyed by row name, each with `auc` (mean over the test images
    that have fixations), `per_category` and `params`.
  """
  if not tune or not test:
    raise ValueError('Both the tuning and the test set need images.')
  center = _tune(tune, _center, [dict(center_sigma=s)
                                 for s in center_sigma_grid])
  ponder = _tune(tune, _ponder, [dict(blur=b) for b in blur_grid])
  mixed = _tune(tune, _ponder, [
      dict(blur=b, center_weight=w, center_sigma=center['center_sigma'])
      for b in blur_grid for w in center_weight_grid])
  categories = sorted({c for _, _, c in test})
  results = {}
  for name, make, params in (('center_baseline', _center, center),
                             ('ponder', _ponder, ponder),
                             ('ponder_center', _ponder, mixed)):
    mean, scores = _mean_auc([make(p, f, **params) for p, f, _ in test],
                             test)
    per_category = {}
    for category in categories:
      values = [s for s, (_, _, c) in zip(scores, test) if c == category]
      per_category[category] = (float(np.nanmean(values))
                                if not np.all(np.isnan(values))
                                else float('nan'))
    results[name] = dict(auc=mean, per_category=per_category, params=params)
  return results
