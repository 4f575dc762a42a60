"""Ponder maps as saliency maps: post-processing, centre baseline, AUC-Judd.

Everything here is NumPy (and SciPy for the Gaussian filter) on single
`[H, W]` maps, as the MIT saliency benchmark defines its metrics.

`auc_judd` is the benchmark's AUC-Judd, computed exactly (the same values,
ties and thresholds as the straightforward implementation, only counted
faster). The post-processing that turns a ponder map into a saliency map
(`ponder_saliency`: blur, normalisation, centre Gaussian) is ours: the paper
names the steps but fixes neither the resolution they run at nor the filter.
`evaluate_protocol` runs it at a working resolution well below CAT2000's
1920x1080 (`MAP_RESOLUTION`) and lets AUC-Judd resize the result to the
fixation map, as the benchmark does with any saliency map; it chooses its
parameters with AUC-Judd against fixation maps pooled to `TUNE_RESOLUTION`
and reports exact AUC-Judd at the fixation maps' full resolution.
"""

import functools

import numpy as np
from scipy import ndimage

# The MIT benchmark's tie-breaking noise: uniform in [0, 1e-7).
JITTER_SCALE = 1e-7
# Longer side (pixels) of the grid `evaluate_protocol` computes saliency maps
# on: 320x180 for CAT2000's 1920x1080, the ImageNet model's input size (its
# finest ponder cells are 8 px there) and 6x below the fixation maps.
MAP_RESOLUTION = 320
# Longer side of the pooled fixation maps `evaluate_protocol` tunes on:
# 480x270 for CAT2000 (4x4 pixel cells).
TUNE_RESOLUTION = 480


def _as_2d(name, value):
  array = np.asarray(value, dtype=np.float64)
  if array.ndim != 2:
    raise ValueError(f'{name} must be a 2-D [height, width] map, got shape '
                     f'{array.shape}.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains NaN or infinite values.')
  return array


def working_shape(shape, resolution):
  """`shape` scaled so its longer side is `resolution` (never enlarged).

  Args:
    shape: `(height, width)`.
    resolution: the longer side in pixels; None or 0 keeps `shape`.

  Returns:
    `(height, width)`, each side rounded and at least 1; `shape` itself when
    its longer side is at most `resolution`.
  """
  shape = tuple(int(s) for s in shape)
  if not resolution or max(shape) <= resolution:
    return shape
  scale = resolution / max(shape)
  return tuple(max(1, int(round(s * scale))) for s in shape)


# Elements per block of rows in `resize` (512 KiB of float64).
_RESIZE_BLOCK = 65536


@functools.lru_cache(maxsize=32)
def _taps(size, out):
  """Bilinear taps along one axis: indices and weights, read-only."""
  coords = (np.arange(out) + 0.5) * size / out - 0.5
  start = np.floor(coords)
  fraction = coords - start
  start = start.astype(np.intp)
  taps = (np.clip(start, 0, size - 1), np.clip(start + 1, 0, size - 1),
          1.0 - fraction, fraction)
  for array in taps:
    array.flags.writeable = False
  return taps


def resize(saliency_map, shape):
  """Bilinear resize of a `[H, W]` map to `shape`, pixel centres aligned.

  Output pixel `i` samples input coordinate `(i + 0.5) * H / h - 0.5`
  (likewise for columns), edges clamped. The arithmetic is that of
  `scipy.ndimage.map_coordinates(order=1, mode='nearest')` on those
  coordinates (corner products `(value * row weight) * column weight`
  summed in the same order), so the result is bit-identical to it, but
  separable: about twice as fast at 1920x1080.
  """
  saliency_map = _as_2d('saliency_map', saliency_map)
  shape = tuple(int(s) for s in shape)
  if saliency_map.shape == shape:
    return saliency_map
  rows0, rows1, row_w0, row_w1 = _taps(saliency_map.shape[0], shape[0])
  cols0, cols1, col_w0, col_w1 = _taps(saliency_map.shape[1], shape[1])
  upper = saliency_map[rows0] * row_w0[:, None]
  lower = saliency_map[rows1] * row_w1[:, None]
  out = np.empty(shape)
  # Large maps go in blocks of rows that stay in the cache through the
  # seven passes.
  step = (shape[0] if shape[0] * shape[1] <= 4 * _RESIZE_BLOCK
          else max(1, _RESIZE_BLOCK // shape[1]))
  term = np.empty((min(step, shape[0]), shape[1]))
  for start in range(0, shape[0], step):
    stop = min(start + step, shape[0])
    block, part = out[start:stop], term[:stop - start]
    np.take(upper[start:stop], cols0, axis=1, out=block)
    block *= col_w0
    np.take(upper[start:stop], cols1, axis=1, out=part)
    part *= col_w1
    block += part
    np.take(lower[start:stop], cols0, axis=1, out=part)
    part *= col_w0
    block += part
    np.take(lower[start:stop], cols1, axis=1, out=part)
    part *= col_w1
    block += part
  return out


def normalize(saliency_map):
  """Min-max normalises a map to [0, 1] (a constant map becomes zeros)."""
  saliency_map = _as_2d('saliency_map', saliency_map)
  low, high = saliency_map.min(), saliency_map.max()
  if high - low <= 0:
    return np.zeros_like(saliency_map)
  return (saliency_map - low) / (high - low)


def _normalize_in_place(array):
  """`normalize` on a float64 array of our own, without copies."""
  low, high = array.min(), array.max()
  if high - low <= 0:
    array[...] = 0.0
  else:
    array -= low
    array /= high - low
  return array


@functools.lru_cache(maxsize=4)
def _jitter(shape, seed):
  """The benchmark's tie-breaking noise for one map size (read-only)."""
  noise = np.random.default_rng(seed).uniform(size=shape) * JITTER_SCALE
  noise.flags.writeable = False
  return noise


class _Fixations:
  """A fixation map as its shape and sorted flat indices of fixated pixels."""

  def __init__(self, shape, indices):
    self.shape = tuple(int(s) for s in shape)
    self.indices = indices
    self.size = int(np.prod(self.shape))

  @classmethod
  def of(cls, fixation_map):
    """From a dense map (nonzero = fixated) or a sparse one.

    A sparse map is any non-array object with a 2-D `shape` and the flat
    `indices` of its fixated pixels (e.g. `sact_tf.saliency.SparseFixations`):
    it is used without building the dense map.
    """
    if isinstance(fixation_map, cls):
      return fixation_map
    if (not isinstance(fixation_map, np.ndarray)
        and hasattr(fixation_map, 'indices')
        and hasattr(fixation_map, 'shape')):
      shape = tuple(int(s) for s in fixation_map.shape)
      indices = np.asarray(fixation_map.indices).ravel()
      if len(shape) != 2:
        raise ValueError(f'fixation_map must be a 2-D [height, width] map, '
                         f'got shape {shape}.')
      if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError('fixation_map.indices must be integer flat indices.')
      indices = indices.astype(np.int64)
      if indices.size and (indices.min() < 0
                           or indices.max() >= shape[0] * shape[1]):
        raise ValueError(f'fixation_map.indices fall outside a map of shape '
                         f'{shape}.')
      if np.any(np.diff(indices) <= 0):
        indices = np.unique(indices)
      return cls(shape, indices)
    array = np.asarray(fixation_map)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
      if array.ndim != 2:
        raise ValueError(f'fixation_map must be a 2-D [height, width] map, '
                         f'got shape {array.shape}.')
    else:
      array = _as_2d('fixation_map', array)
    return cls(array.shape, np.flatnonzero(array > 0))

  def pooled(self, resolution):
    """The map on a coarser grid: a cell is fixated if any of its pixels is.

    The grid is `working_shape(self.shape, resolution)`; pixel row `r` falls
    in cell row `r * h // H` (likewise for columns).
    """
    shape = working_shape(self.shape, resolution)
    if shape == self.shape:
      return self
    rows, cols = np.divmod(self.indices, self.shape[1])
    cells = (rows * shape[0] // self.shape[0] * shape[1]
             + cols * shape[1] // self.shape[1])
    return _Fixations(shape, np.unique(cells))


def _prepare(saliency_map, shape, jitter, seed):
  """AUC-Judd's map: resized, jittered, normalised, flat (a new array)."""
  saliency = resize(saliency_map, shape)
  if jitter:
    saliency = saliency + _jitter(shape, seed)
  elif saliency is saliency_map or not saliency.flags.writeable:
    saliency = saliency.copy()
  return _normalize_in_place(saliency).ravel()


def _count_at_or_above(values, thresholds):
  """`above[j]` = how many `values` are >= `thresholds[j]`, exactly.

  `values` lie in [0, 1] and `thresholds` are ascending. Instead of sorting
  the map or binary-searching every pixel, the pixels go to 2^b equal
  buckets of [0, 1] (`floor(v * 2^b)`, exact since the scale is a power of
  two): a bucket without a threshold lies wholly between two consecutive
  thresholds, and only the pixels of the (few) buckets holding a threshold
  are compared with the thresholds themselves.
  """
  num_thresholds = thresholds.size
  if values.size <= 4096:
    bins = np.searchsorted(thresholds, values, side='right')
    counts = np.bincount(bins, minlength=num_thresholds + 1)
  else:
    num_buckets = 1 << int(np.clip(np.ceil(np.log2(values.size / 16)), 10,
                                   20))
    buckets = np.multiply(values, num_buckets).astype(np.int32)
    pixels = np.bincount(buckets, minlength=num_buckets + 1)
    threshold_buckets = (thresholds * num_buckets).astype(np.int64)
    per_bucket = np.bincount(threshold_buckets, minlength=num_buckets + 1)
    # Thresholds in lower buckets, i.e. below every value of the bucket.
    below = np.concatenate([[0], np.cumsum(per_bucket)[:-1]])
    mixed = per_bucket > 0
    clear = ~mixed
    counts = np.bincount(below[clear], weights=pixels[clear],
                         minlength=num_thresholds + 1)
    counts = np.rint(counts).astype(np.int64)
    close = values[mixed[buckets]]
    counts += np.bincount(np.searchsorted(thresholds, close, side='right'),
                          minlength=num_thresholds + 1)
  # bins[v] = number of thresholds <= v, so v >= thresholds[j] iff
  # bins[v] > j.
  return np.cumsum(counts[::-1])[::-1][1:]


def _auc_from_values(values, indices, sorted_values=None):
  """AUC-Judd of prepared flat `values` against fixated flat `indices`."""
  num_fixations = indices.size
  num_pixels = values.size
  ascending = np.sort(values[indices])
  if sorted_values is not None:
    above = num_pixels - np.searchsorted(sorted_values, ascending[::-1],
                                         side='left')
  else:
    above = _count_at_or_above(values, ascending)[::-1]
  hits = np.arange(1, num_fixations + 1)
  tpr = np.concatenate([[0.0], hits / num_fixations, [1.0]])
  fpr = np.concatenate([[0.0], (above - hits) / (num_pixels - num_fixations),
                        [1.0]])
  return float(np.trapezoid(tpr, fpr))


def _check_fixations(fixations):
  """NaN for a map without fixations; an error for an all-fixated one."""
  if fixations.indices.size == 0:
    return float('nan')
  if fixations.indices.size == fixations.size:
    raise ValueError('Every pixel is fixated: the false positive rate is '
                     'undefined.')
  return None


def auc_judd(saliency_map, fixation_map, jitter=True, seed=0):
  """AUC-Judd of a saliency map against a binary fixation map.

  The MIT saliency benchmark's definition: the saliency map is resized to the
  fixation map's size, tiny uniform noise (scale 1e-7, seeded) breaks ties,
  the map is min-max normalised; the thresholds are the map's values at the
  fixated pixels, sorted in descending order; at the i-th threshold the true
  positive rate is i / Nfix and the false positive rate is (number of pixels
  at or above the threshold - i) / (Npix - Nfix); with the (0, 0) and (1, 1)
  ends added, the score is the trapezoid area under that curve.

  The computation is exact: the resize is bit-identical to
  `scipy.ndimage.map_coordinates`, the noise is the same float64 draw for a
  given shape and seed (cached), and the pixel counts are exact integers;
  only the counting is organised to avoid sorting the whole map.

  Args:
    saliency_map: `[h, w]` array, any scale.
    fixation_map: `[H, W]` array, nonzero at fixated pixels, or a sparse map
      (an object with `shape` and the flat `indices` of fixated pixels).
    jitter: add the tie-breaking noise.
    seed: seed of the noise, for reproducible scores.

  Returns:
    The score in [0, 1], or NaN when the fixation map has no fixation (such
    images have no score and are left out of averages: use `np.nanmean`).
  """
  fixations = _Fixations.of(fixation_map)
  saliency_map = _as_2d('saliency_map', saliency_map)
  empty = _check_fixations(fixations)
  if empty is not None:
    return empty
  values = _prepare(saliency_map, fixations.shape, jitter, seed)
  return _auc_from_values(values, fixations.indices)


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


def _check_weight(center_weight):
  if not 0.0 <= center_weight <= 1.0:
    raise ValueError(f'center_weight must be in [0, 1], got {center_weight}.')


def _mix(saliency, center_weight, center):
  if center_weight == 0:
    return saliency
  return (1 - center_weight) * saliency + center_weight * center


def ponder_saliency(ponder_map, shape, blur_sigma, center_weight,
                    center_sigma=0.25):
  """The paper's saliency map from a ponder map (section 4.3).

  Bilinear resize to `shape`, Gaussian blur (sigma a fraction of the larger
  side, edges replicated), normalise to [0, 1], then mix linearly with the
  centre baseline: (1 - w) * map + w * centre. These choices are ours (the
  paper fixes neither the resolution nor the filter); `evaluate_protocol`
  uses `shape = working_shape(fixation shape, MAP_RESOLUTION)`.
  """
  _check_weight(center_weight)
  saliency = normalize(blur(resize(ponder_map, shape), blur_sigma))
  center = (center_baseline(shape[0], shape[1], center_sigma)
            if center_weight else None)
  return _mix(saliency, center_weight, center)


BLUR_GRID = (0.0, 0.01, 0.02, 0.04, 0.08)
CENTER_SIGMA_GRID = (0.15, 0.2, 0.25, 0.3, 0.4)
CENTER_WEIGHT_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8)


def _has_fixations(fixations):
  """False for a map without fixations; an error for an all-fixated one."""
  return _check_fixations(fixations) is None


def _auc(saliency_map, fixations):
  """`auc_judd(saliency_map, fixations)` for a checked `_Fixations`."""
  return _auc_from_values(_prepare(saliency_map, fixations.shape, True, 0),
                          fixations.indices)


class _Maps:
  """The protocol's saliency maps at the working resolution, with caches.

  The centre Gaussian of a shape and width is shared by every image of that
  size, and so is its AUC-Judd form for a fixation map size (resized,
  jittered, normalised and sorted once): an image's centre score is then a
  binary search of its thresholds, with the same counts as `auc_judd`.
  """

  def __init__(self, resolution):
    self.resolution = resolution
    self._centers = {}
    self._prepared_centers = {}

  def shape(self, fixations):
    return working_shape(fixations.shape, self.resolution)

  def center(self, shape, sigma):
    key = (shape, sigma)
    if key not in self._centers:
      self._centers[key] = center_baseline(shape[0], shape[1], sigma)
    return self._centers[key]

  def center_auc(self, shape, sigma, fixations):
    key = (shape, sigma, fixations.shape)
    if key not in self._prepared_centers:
      values = _prepare(self.center(shape, sigma), fixations.shape, True, 0)
      self._prepared_centers[key] = values, np.sort(values)
    values, ascending = self._prepared_centers[key]
    return _auc_from_values(values, fixations.indices, ascending)

  def clear_auc_cache(self):
    self._prepared_centers.clear()

  @staticmethod
  def ponder(ponder_map, shape, blurs):
    """{blur: normalised blurred map}, the ponder map resized once."""
    resized = resize(ponder_map, shape)
    return {b: normalize(blur(resized, b)) for b in blurs}


def _select(grid, scores):
  """The first grid entry with the best mean score over the images.

  `scores` is `[images, entries]`, NaN for images without fixations; an
  entry without any score counts as -1.
  """
  best, best_mean = None, None
  for j, entry in enumerate(grid):
    column = scores[:, j]
    mean = (-1.0 if np.all(np.isnan(column))
            else float(np.nanmean(column)))
    if best is None or mean > best_mean:
      best, best_mean = entry, mean
  return best


def _nanmean(values):
  values = np.asarray(values, np.float64)
  return (float(np.nanmean(values)) if values.size and
          not np.all(np.isnan(values)) else float('nan'))


def evaluate_protocol(tune, test, blur_grid=BLUR_GRID,
                      center_sigma_grid=CENTER_SIGMA_GRID,
                      center_weight_grid=CENTER_WEIGHT_GRID,
                      map_resolution=MAP_RESOLUTION,
                      tune_resolution=TUNE_RESOLUTION, on_image=None):
  """The paper's saliency protocol (section 4.3) on ponder maps.

  Parameters are chosen by mean AUC-Judd on `tune` (the first half of each
  category) and scores reported on `test` (the second half), for three rows:

  * `center_baseline`: the centre Gaussian alone (its width tuned);
  * `ponder`: the blurred, normalised ponder map alone (blur tuned);
  * `ponder_center`: the ponder map mixed with the tuned centre Gaussian
    (blur and mixing weight tuned).

  The saliency maps (all three rows) are computed on a working grid,
  `working_shape(fixation shape, map_resolution)`: the ponder map is
  bilinearly resized to it, blurred there (sigma a fraction of the grid's
  larger side), normalised and mixed with the centre Gaussian of that grid,
  i.e. `ponder_saliency(ponder_map, working shape, ...)`. AUC-Judd then
  resizes the map to the fixation map as the benchmark does for any
  saliency map. Blurring on a 320-pixel grid instead of at 1920x1080 changes
  the map only by interpolation error (the ponder maps are much coarser than
  either grid) and costs ~400x less.

  Tuning scores AUC-Judd against fixation maps pooled to
  `working_shape(fixation shape, tune_resolution)` (a cell is fixated if any
  of its pixels is; `_Fixations.pooled`), exact AUC-Judd at that size; this
  only chooses the parameters. The reported test scores are exact AUC-Judd
  (the MIT definition) at the fixation maps' full resolution.

  Args:
    tune, test: lists of `(ponder_map [h, w], fixation_map [H, W],
      category)` triples; a fixation map may be sparse (an object with
      `shape` and flat `indices`, see `auc_judd`).
    blur_grid: blur widths, fractions of the larger side.
    center_sigma_grid: centre Gaussian widths, fractions of each axis.
    center_weight_grid: weights of the centre Gaussian in the mix.
    map_resolution: longer side of the working grid (None or 0: the
      fixation map's own size, the slow original set-up).
    tune_resolution: longer side of the pooled tuning fixation maps (None
      or 0: tune at full resolution too).
    on_image: called with no arguments after each image of each pass (two
      over `tune`, one over `test`: `2 * len(tune) + len(test)` calls), e.g.
      a `sact_tf.progress.Progress`'s `update`.

  Returns:
    A dict keyed by row name, each with `auc` (mean over the test images
    that have fixations), `per_category` and `params`.
  """
  if not tune or not test:
    raise ValueError('Both the tuning and the test set need images.')
  on_image = on_image or (lambda: None)
  for weight in center_weight_grid:
    _check_weight(weight)
  maps = _Maps(map_resolution)
  items = []
  for ponder_map, fixation_map, _ in tune:
    fixations = _Fixations.of(fixation_map)
    items.append((ponder_map, maps.shape(fixations),
                  fixations.pooled(tune_resolution)))
  present = [_has_fixations(fixations) for _, _, fixations in items]

  center_scores = np.full((len(items), len(center_sigma_grid)), np.nan)
  for i, (_, shape, fixations) in enumerate(items):
    if present[i]:
      center_scores[i] = [maps.center_auc(shape, sigma, fixations)
                          for sigma in center_sigma_grid]
    on_image()
  center = dict(center_sigma=_select(center_sigma_grid, center_scores))

  mixed_grid = [(b, w) for b in blur_grid for w in center_weight_grid]
  ponder_scores = np.full((len(items), len(blur_grid)), np.nan)
  mixed_scores = np.full((len(items), len(mixed_grid)), np.nan)
  for i, (ponder_map, shape, fixations) in enumerate(items):
    if not present[i]:
      on_image()
      continue
    blurred = maps.ponder(ponder_map, shape, blur_grid)
    by_blur = {b: _auc(blurred[b], fixations) for b in blurred}
    ponder_scores[i] = [by_blur[b] for b in blur_grid]
    center_map = maps.center(shape, center['center_sigma'])
    mixed_scores[i] = [
        by_blur[b] if w == 0 else
        _auc(_mix(blurred[b], w, center_map), fixations)
        for b, w in mixed_grid]
    on_image()
  ponder = dict(blur=_select(blur_grid, ponder_scores))
  blur_choice, weight = _select(mixed_grid, mixed_scores)
  mixed = dict(blur=blur_choice, center_weight=weight,
               center_sigma=center['center_sigma'])
  maps.clear_auc_cache()
  del items

  names = ('center_baseline', 'ponder', 'ponder_center')
  scores = {name: [] for name in names}
  for ponder_map, fixation_map, _ in test:
    fixations = _Fixations.of(fixation_map)
    if not _has_fixations(fixations):
      for name in names:
        scores[name].append(float('nan'))
      on_image()
      continue
    shape = maps.shape(fixations)
    scores['center_baseline'].append(
        maps.center_auc(shape, center['center_sigma'], fixations))
    blurred = maps.ponder(ponder_map, shape, {ponder['blur'], mixed['blur']})
    ponder_score = _auc(blurred[ponder['blur']], fixations)
    scores['ponder'].append(ponder_score)
    if mixed['center_weight'] == 0 and mixed['blur'] == ponder['blur']:
      scores['ponder_center'].append(ponder_score)  # The same map.
    else:
      scores['ponder_center'].append(_auc(
          _mix(blurred[mixed['blur']], mixed['center_weight'],
               maps.center(shape, mixed['center_sigma'])), fixations))
    on_image()

  categories = sorted({c for _, _, c in test})
  results = {}
  for name, params in zip(names, (center, ponder, mixed)):
    per_category = {
        category: _nanmean([s for s, (_, _, c) in zip(scores[name], test)
                            if c == category])
        for category in categories}
    results[name] = dict(auc=_nanmean(scores[name]),
                         per_category=per_category, params=params)
  return results
