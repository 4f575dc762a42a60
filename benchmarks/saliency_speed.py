r"""Cost of the CAT2000 saliency protocol (`sact_tf.saliency`), extrapolated.

  python -m benchmarks.saliency_speed             # about 30 s on 2 cores
  python -m benchmarks.saliency_speed --images=2 --runs=1 --noreference

Synthetic data of CAT2000's real size: fixation maps of 1080x1920 with
400-1500 fixated pixels (clustered, as real fixations are), ponder maps of
23x40 cells (block 1 at the paper's 320x180 input) nearest-upsampled to
180x320, which is what `experiments.cat2000` passes. Times each stage of
the old code (`reference_*`: the implementation before this benchmark,
kept here verbatim as the reference the tests compare against) and of the
current one, and extrapolates the full protocol: 1000 tuning images x
(5 centre widths + 5 blurs + 30 blur x weight mixes) and 1000 test images
x 3 rows. Times are medians over `--runs` repeats of `--images` images;
the machine may be shared. `--protocol_images` also times
`evaluate_protocol` itself end to end and extrapolates it linearly.
"""
# pylint: disable=protected-access

import time

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage

from sact_tf.saliency import metrics as saliency

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags; only when run, so that tests can import this module
  beside other modules that define flags."""
  flags.DEFINE_integer('images', 3, 'Synthetic images per timing.',
                       lower_bound=1)
  flags.DEFINE_integer('runs', 3, 'Repeats per timing (median).', lower_bound=1)
  flags.DEFINE_integer('protocol_images', 10, 'Also time the whole '
                       'evaluate_protocol on this many tuning and as many test '
                       'images (0: skip).', lower_bound=0)
  flags.DEFINE_bool('reference', True, 'Also time the old implementation '
                    '(about 2 s per full-resolution score).')


FIXATION_SHAPE = (1080, 1920)
PONDER_CELLS = (23, 40)
INPUT_SHAPE = (180, 320)
NUM_TUNE = NUM_TEST = 1000
# Grid sizes of the protocol (sact_tf.saliency defaults).
NUM_SIGMAS = len(saliency.CENTER_SIGMA_GRID)
NUM_BLURS = len(saliency.BLUR_GRID)
NUM_MIXES = NUM_BLURS * len(saliency.CENTER_WEIGHT_GRID)


# The implementation before the speed-up, verbatim (tests compare to it).

def reference_resize(saliency_map, shape):
  saliency_map = saliency._as_2d('saliency_map', saliency_map)
  shape = tuple(int(s) for s in shape)
  if saliency_map.shape == shape:
    return saliency_map
  coords = [(np.arange(out) + 0.5) * size / out - 0.5
            for out, size in zip(shape, saliency_map.shape)]
  grid = np.meshgrid(*coords, indexing='ij')
  return ndimage.map_coordinates(saliency_map, grid, order=1, mode='nearest')


def reference_auc_judd(saliency_map, fixation_map, jitter=True, seed=0):
  fixations = saliency._as_2d('fixation_map', fixation_map) > 0
  resized = reference_resize(saliency_map, fixations.shape)
  if jitter:
    resized = resized + np.random.default_rng(seed).uniform(
        size=resized.shape) * 1e-7
  resized = saliency.normalize(resized).ravel()
  fixations = fixations.ravel()
  num_fixations = int(fixations.sum())
  num_pixels = resized.size
  if num_fixations == 0:
    return float('nan')
  if num_fixations == num_pixels:
    raise ValueError('Every pixel is fixated: the false positive rate is '
                     'undefined.')
  thresholds = np.sort(resized[fixations])[::-1]
  ascending = np.sort(resized)
  above = num_pixels - np.searchsorted(ascending, thresholds, side='left')
  hits = np.arange(1, num_fixations + 1)
  tpr = np.concatenate([[0.0], hits / num_fixations, [1.0]])
  fpr = np.concatenate([[0.0], (above - hits) / (num_pixels - num_fixations),
                        [1.0]])
  return float(np.trapezoid(tpr, fpr))


def reference_ponder_saliency(ponder_map, shape, blur_sigma, center_weight,
                              center_sigma=0.25):
  """The old post-processing: everything at the fixation map's size."""
  result = saliency.normalize(saliency.blur(
      reference_resize(ponder_map, shape), blur_sigma))
  if center_weight == 0:
    return result
  return ((1 - center_weight) * result + center_weight
          * saliency.center_baseline(shape[0], shape[1], center_sigma))


def synthetic_image(rng, fixation_shape=FIXATION_SHAPE,
                    ponder_cells=PONDER_CELLS, input_shape=INPUT_SHAPE):
  """(ponder map [input_shape], SparseFixations-like map [fixation_shape])."""
  cells = rng.integers(1, 4, ponder_cells).astype(np.float64)
  cells += rng.uniform(0, 1, ponder_cells)  # ponder cost N + R
  rows = np.arange(input_shape[0]) * ponder_cells[0] // input_shape[0]
  cols = np.arange(input_shape[1]) * ponder_cells[1] // input_shape[1]
  ponder = cells[rows][:, cols]
  height, width = fixation_shape
  num = int(rng.integers(400, 1501))
  centres = rng.uniform([0.2 * height, 0.2 * width],
                        [0.8 * height, 0.8 * width], (8, 2))
  points = (centres[rng.integers(0, 8, num)]
            + rng.normal(0, 0.06 * height, (num, 2)))
  points = np.clip(np.round(points), 0, [height - 1, width - 1]).astype(int)
  indices = np.unique(points[:, 0] * width + points[:, 1])
  return ponder, _Sparse(fixation_shape, indices)


class _Sparse:
  """Stand-in for `sact_tf.saliency.SparseFixations`."""

  ndim = 2

  def __init__(self, shape, indices):
    self.shape = tuple(shape)
    self.indices = indices

  def __array__(self, dtype=None, copy=None):
    del copy
    dense = np.zeros(self.shape, dtype=dtype or np.uint8)
    dense.flat[self.indices] = 1
    return dense


def _median_time(function, items, runs):
  times = []
  for _ in range(runs):
    started = time.perf_counter()
    for item in items:
      function(item)
    times.append((time.perf_counter() - started) / len(items))
  return float(np.median(times))


def measure(num_images=3, runs=3, reference=True, seed=0):
  """Per-stage seconds per call: {stage: seconds}."""
  rng = np.random.default_rng(seed)
  images = [synthetic_image(rng) for _ in range(num_images)]
  fixations = [saliency._Fixations.of(f) for _, f in images]
  shape = saliency.working_shape(FIXATION_SHAPE, saliency.MAP_RESOLUTION)
  pooled = [f.pooled(saliency.TUNE_RESOLUTION) for f in fixations]
  blurred = [saliency.normalize(saliency.blur(saliency.resize(p, shape),
                                              0.04)) for p, _ in images]
  center = saliency.center_baseline(shape[0], shape[1], 0.25)
  mixes = [0.5 * b + 0.5 * center for b in blurred]
  saliency.auc_judd(mixes[0], fixations[0])  # Warm the caches.
  saliency.auc_judd(mixes[0], pooled[0])
  maps = saliency._Maps(saliency.MAP_RESOLUTION)
  maps.center_auc(shape, 0.25, fixations[0])
  maps.center_auc(shape, 0.25, pooled[0])
  idx = list(range(num_images))
  stages = {
      'new: blur+normalise at 180x320 (x5 blurs)': lambda i: maps.ponder(
          images[i][0], shape, saliency.BLUR_GRID),
      'new: mix at 180x320': lambda i: 0.5 * blurred[i] + 0.5 * center,
      'new: pool fixations to 270x480': lambda i: fixations[i].pooled(
          saliency.TUNE_RESOLUTION),
      'new: auc_judd at 270x480 (tuning)': lambda i: saliency.auc_judd(
          mixes[i], pooled[i]),
      'new: auc_judd at 1080x1920 (test)': lambda i: saliency.auc_judd(
          mixes[i], fixations[i]),
      'new: shared centre map score (cached)': lambda i: maps.center_auc(
          shape, 0.25, fixations[i]),
  }
  if reference:
    dense = [np.asarray(f) for _, f in images]
    old_stages = {
        # Once per blur of the grid (the cost grows with the blur width).
        'old: ponder_saliency at 1080x1920 (grid mean)': (
            lambda b: reference_ponder_saliency(images[0][0], FIXATION_SHAPE,
                                                b, 0.5),
            saliency.BLUR_GRID, 1),
        'old: auc_judd at 1080x1920': (
            lambda i: reference_auc_judd(mixes[i], dense[i]), idx, runs),
    }
  else:
    old_stages = {}
  times = {name: _median_time(function, idx, runs)
           for name, function in stages.items()}
  times.update({name: _median_time(function, items, repeats)
                for name, (function, items, repeats) in old_stages.items()})
  return times


def extrapolate(stages):
  """Seconds of the full CAT2000 protocol, old and new, from `stages`."""
  new_tune = NUM_TUNE * (
      stages['new: pool fixations to 270x480']
      + stages['new: blur+normalise at 180x320 (x5 blurs)']
      + NUM_SIGMAS * stages['new: shared centre map score (cached)']
      + (NUM_MIXES - len(saliency.CENTER_WEIGHT_GRID))
      * stages['new: mix at 180x320']
      # The weight-0 mixes are the blur-only maps: 5 + 25 scores per image.
      + (NUM_BLURS + NUM_MIXES - NUM_BLURS)
      * stages['new: auc_judd at 270x480 (tuning)'])
  new_test = NUM_TEST * (
      stages['new: shared centre map score (cached)']
      + stages['new: blur+normalise at 180x320 (x5 blurs)'] * 2 / NUM_BLURS
      + stages['new: mix at 180x320']
      + 2 * stages['new: auc_judd at 1080x1920 (test)'])
  result = dict(new_tune=new_tune, new_test=new_test,
                new_total=new_tune + new_test)
  if 'old: auc_judd at 1080x1920' in stages:
    # Every score: a map at full resolution (the centre ones need no blur)
    # and a full-resolution AUC-Judd.
    maps = NUM_TUNE * (NUM_BLURS + NUM_MIXES) + 2 * NUM_TEST
    scores = maps + NUM_TUNE * NUM_SIGMAS + NUM_TEST
    result['old_total'] = (
        maps * stages['old: ponder_saliency at 1080x1920 (grid mean)']
        + scores * stages['old: auc_judd at 1080x1920'])
  return result


def measure_protocol(num_images, seed=1):
  """Seconds of `evaluate_protocol` on `num_images` tuning + test images.

  Also returns the mean and max |AUC-Judd at the tuning resolution - at
  full resolution| over those images' maps (blur 0.02, centre weight 0.4),
  the error of scoring the tuning set on pooled fixation maps.
  """
  rng = np.random.default_rng(seed)
  data = [synthetic_image(rng) + ('AB'[i % 2],)
          for i in range(2 * num_images)]
  started = time.perf_counter()
  saliency.evaluate_protocol(data[:num_images], data[num_images:])
  seconds = time.perf_counter() - started
  shape = saliency.working_shape(FIXATION_SHAPE, saliency.MAP_RESOLUTION)
  differences = []
  for ponder, fixations in ((p, f) for p, f, _ in data[:num_images]):
    saliency_map = saliency.ponder_saliency(ponder, shape, 0.02, 0.4)
    pooled = saliency._Fixations.of(fixations).pooled(
        saliency.TUNE_RESOLUTION)
    differences.append(abs(saliency.auc_judd(saliency_map, pooled)
                           - saliency.auc_judd(saliency_map, fixations)))
  return seconds, float(np.mean(differences)), float(np.max(differences))


def main(argv):
  del argv
  stages = measure(FLAGS.images, FLAGS.runs, FLAGS.reference)
  print(f'{"Stage (per call, median)":<48}{"ms":>10}')
  for name, seconds in stages.items():
    print(f'{name:<48}{seconds * 1e3:>10.2f}')
  totals = extrapolate(stages)
  print()
  print(f'Full CAT2000 protocol ({NUM_TUNE} tuning x '
        f'{NUM_SIGMAS + NUM_BLURS + NUM_MIXES} grid entries, {NUM_TEST} '
        f'test x 3 rows), extrapolated:')
  for name in ('new_tune', 'new_test', 'new_total', 'old_total'):
    if name in totals:
      print(f'  {name:<12}{totals[name] / 60:>9.1f} min')
  if FLAGS.protocol_images:
    seconds, mean_diff, max_diff = measure_protocol(FLAGS.protocol_images)
    print()
    print(f'evaluate_protocol on {FLAGS.protocol_images} + '
          f'{FLAGS.protocol_images} images: {seconds:.1f} s, i.e. '
          f'{seconds * NUM_TUNE / FLAGS.protocol_images / 60:.1f} min for '
          f'{NUM_TUNE} + {NUM_TEST}.')
    print(f'|AUC-Judd at {saliency.TUNE_RESOLUTION} px - at full '
          f'resolution| on the tuning maps: mean {mean_diff:.2e}, max '
          f'{max_diff:.2e}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
