# pylint: disable=protected-access
import numpy as np
import pytest

from benchmarks import saliency_speed
from sact_tf import saliency
from sact_tf.data import cat2000 as cat2000_data
from sact_tf.saliency import metrics
from tests import test_data_cat2000


def test_perfect_map_scores_near_one_and_inverted_near_zero():
  fixations = np.random.default_rng(1).uniform(size=(20, 30)) > 0.95
  perfect = saliency.blur(fixations.astype(float), 0.02)
  assert saliency.auc_judd(perfect, fixations) > 0.99
  # The first threshold of an inverted map already passes every pixel: the
  # curve jumps to FPR 1 at TPR 1 / Nfix, so the area is 1 / (2 Nfix).
  inverted = saliency.auc_judd(-perfect, fixations)
  assert inverted == pytest.approx(1 / (2 * fixations.sum()), abs=1e-3)


def test_hand_computed_case():
  # Four pixels; fixations on the pixels valued 0.9 and 0.2.
  s = np.array([[0.9, 0.5], [0.2, 0.1]])
  f = np.array([[1, 0], [1, 0]])
  # Normalised: 1.0, 0.5, 0.125, 0. Thresholds 1.0 then 0.125.
  # t=1.0: TP 1/2, above 1 -> FP 0/2. t=0.125: TP 2/2, above 3 -> FP 1/2.
  # Curve (0,0) (0,.5) (.5,1) (1,1): area = 0.5*0.75 + 0.5 = 0.875.
  assert saliency.auc_judd(s, f, jitter=False) == pytest.approx(0.875)
  assert saliency.auc_judd(s, f) == pytest.approx(0.875, abs=1e-6)


def test_constant_map_is_chance_with_jitter_and_reproducible():
  rng = np.random.default_rng(0)
  fixations = rng.uniform(size=(60, 80)) > 0.9
  flat = np.ones((60, 80))
  score = saliency.auc_judd(flat, fixations, seed=3)
  assert abs(score - 0.5) < 0.05
  assert score == saliency.auc_judd(flat, fixations, seed=3)


def test_saliency_map_is_resized_to_the_fixation_map():
  fixations = np.zeros((40, 60))
  fixations[30:34, 45:50] = 1
  small = np.zeros((4, 6))
  small[3, 4] = 1.0  # the cell covering rows 30-39, cols 40-49
  assert saliency.auc_judd(small, fixations) > 0.9
  resized = saliency.resize(small, (40, 60))
  assert resized.shape == (40, 60)
  assert np.unravel_index(resized.argmax(), resized.shape)[0] >= 30


def test_no_fixations_gives_nan():
  assert np.isnan(saliency.auc_judd(np.ones((5, 5)), np.zeros((5, 5))))


def test_bad_maps_are_rejected():
  with pytest.raises(ValueError, match='2-D'):
    saliency.auc_judd(np.ones((2, 3, 3)), np.ones((3, 3)))
  with pytest.raises(ValueError, match='NaN'):
    saliency.auc_judd(np.full((3, 3), np.nan), np.eye(3))
  with pytest.raises(ValueError, match='center_weight'):
    saliency.ponder_saliency(np.ones((3, 3)), (6, 6), 0.0, 1.5)


def test_center_baseline_is_centred_and_stretched():
  center = saliency.center_baseline(90, 160)
  assert center.shape == (90, 160)
  assert center.max() == pytest.approx(center[44:46, 79:81].max())
  # Relative width: the value a quarter of the way across equals the value a
  # quarter of the way down.
  assert center[45, 40] == pytest.approx(center[22, 80], rel=0.05)
  fixations = np.zeros((90, 160))
  fixations[40:50, 70:90] = 1
  assert saliency.auc_judd(center, fixations) > 0.9


def test_ponder_saliency_mixes_with_the_center():
  ponder = np.zeros((5, 8))
  ponder[0, 0] = 3.0
  mixed = saliency.ponder_saliency(ponder, (50, 80), 0.05, 0.5)
  assert mixed.shape == (50, 80)
  assert 0.0 <= mixed.min() and mixed.max() <= 1.0
  only_map = saliency.ponder_saliency(ponder, (50, 80), 0.05, 0.0)
  assert only_map.argmax() == 0


def test_protocol_tunes_on_one_half_and_reports_the_other():
  rng = np.random.default_rng(0)

  def example(category):
    fixations = np.zeros((36, 64))
    # Fixations off-centre, where the "ponder map" is high.
    row, col = rng.integers(4, 12), rng.integers(40, 58)
    fixations[row - 2:row + 2, col - 2:col + 2] = 1
    ponder = rng.uniform(0, 0.2, (9, 16))
    ponder[row // 4, col // 4] += 3.0
    return ponder, fixations, category

  tune = [example(c) for c in ('A', 'B') for _ in range(3)]
  test = [example(c) for c in ('A', 'B') for _ in range(3)]
  test.append((np.ones((9, 16)), np.zeros((36, 64)), 'B'))  # no fixations
  results = saliency.evaluate_protocol(tune, test, blur_grid=(0.0, 0.05),
                                       center_sigma_grid=(0.2, 0.3),
                                       center_weight_grid=(0.0, 0.5))
  assert set(results) == {'center_baseline', 'ponder', 'ponder_center'}
  assert results['ponder']['auc'] > 0.9 > results['center_baseline']['auc']
  assert results['ponder_center']['auc'] >= results['ponder']['auc'] - 0.02
  assert set(results['ponder']['per_category']) == {'A', 'B'}
  assert results['ponder_center']['params']['center_sigma'] in (0.2, 0.3)
  with pytest.raises(ValueError, match='need images'):
    saliency.evaluate_protocol([], test)


# The implementation before the speed-up (benchmarks.saliency_speed keeps it
# verbatim) is the reference for the exact parts.

def _random_case(rng, fixation_shape, map_shape, kind):
  saliency_map = rng.normal(size=map_shape)
  if kind == 'ties':
    saliency_map = np.round(saliency_map)
  elif kind == 'flat':
    saliency_map[:map_shape[0] // 2] = 0.5
  density = rng.choice([0.5, 0.98, 0.9995])
  fixations = rng.uniform(size=fixation_shape) > density
  fixations.flat[rng.integers(fixations.size)] = True
  return saliency_map, fixations


@pytest.mark.parametrize('map_shape, shape', [
    ((180, 320), (1080, 1920)), ((23, 40), (270, 480)), ((40, 60), (4, 6)),
    ((7, 7), (7, 13)), ((1, 5), (3, 9)), ((5, 1), (2, 4)),
    ((180, 320), (270, 480))])
def test_resize_is_bit_identical_to_map_coordinates(map_shape, shape):
  saliency_map = np.random.default_rng(0).normal(size=map_shape)
  saliency_map[:2, :2] = 0.3
  np.testing.assert_array_equal(
      saliency.resize(saliency_map, shape),
      saliency_speed.reference_resize(saliency_map, shape))


def test_auc_judd_matches_the_reference_on_random_cases():
  rng = np.random.default_rng(0)
  shapes = [(270, 480), (64, 100), (36, 64), (100, 7), (5, 5), (1, 9)]
  for trial in range(54):
    fixation_shape = shapes[trial % len(shapes)]
    map_shape = tuple(rng.integers(1, 50, 2))
    if trial % 9 == 0:
      map_shape = fixation_shape  # no resize
    kind = ('smooth', 'ties', 'flat')[trial % 3]
    saliency_map, fixations = _random_case(rng, fixation_shape, map_shape,
                                           kind)
    for jitter in (True, False):
      seed = int(rng.integers(3))
      expected = saliency_speed.reference_auc_judd(saliency_map, fixations,
                                                   jitter, seed)
      got = saliency.auc_judd(saliency_map, fixations, jitter, seed)
      assert abs(got - expected) <= 1e-6, (trial, kind, jitter)


def test_auc_judd_matches_the_reference_at_cat2000_size():
  rng = np.random.default_rng(1)
  ponder, sparse = saliency_speed.synthetic_image(rng)
  dense = np.asarray(sparse)
  reference = saliency_speed.reference_auc_judd
  for saliency_map in (saliency.ponder_saliency(ponder, (180, 320), 0.02,
                                                0.4),
                       np.round(ponder)):  # many ties
    expected = reference(saliency_map, dense)
    assert abs(saliency.auc_judd(saliency_map, dense) - expected) <= 1e-6
    # Sparse fixation maps give the same score without a dense copy.
    assert saliency.auc_judd(saliency_map, sparse) == saliency.auc_judd(
        saliency_map, dense)


def test_count_at_or_above_is_exact_with_ties_and_bucket_edges():
  rng = np.random.default_rng(2)
  for size in (50, 5000, 300000):
    values = np.concatenate([
        rng.uniform(size=size), rng.integers(0, 17, size) / 16.0,
        np.full(size // 10, 0.5), [0.0, 1.0]])
    values = values[rng.permutation(values.size)]
    thresholds = np.sort(values[rng.integers(0, values.size, 300)])
    expected = (values[None, :] >= thresholds[:, None]).sum(axis=1)
    np.testing.assert_array_equal(
        metrics._count_at_or_above(values, thresholds), expected)


def test_sparse_fixation_maps_are_checked():
  class Sparse:
    def __init__(self, shape, indices):
      self.shape, self.indices = shape, np.asarray(indices)

  s = np.array([[0.9, 0.5], [0.2, 0.1]])
  assert saliency.auc_judd(s, Sparse((2, 2), [2, 0]), jitter=False) == (
      pytest.approx(0.875))
  assert np.isnan(saliency.auc_judd(s, Sparse((2, 2), [])))
  with pytest.raises(ValueError, match='outside'):
    saliency.auc_judd(s, Sparse((2, 2), [4]))
  with pytest.raises(ValueError, match='2-D'):
    saliency.auc_judd(s, Sparse((2, 2, 1), [0]))


def test_working_shape_and_pooled_fixations():
  assert saliency.working_shape((1080, 1920), 320) == (180, 320)
  assert saliency.working_shape((1080, 1920), 480) == (270, 480)
  assert saliency.working_shape((36, 64), 480) == (36, 64)
  assert saliency.working_shape((1080, 1920), None) == (1080, 1920)
  rng = np.random.default_rng(3)
  fixations = rng.uniform(size=(90, 160)) > 0.995
  pooled = metrics._Fixations.of(fixations).pooled(40)
  assert pooled.shape == (22, 40)  # 22.5 rounds to even
  dense = np.zeros(pooled.shape, bool)
  dense.flat[pooled.indices] = True
  # A cell is fixated iff one of its pixels is: cell row r * 22 // 90.
  rows = np.arange(90) * 22 // 90
  cols = np.arange(160) * 40 // 160
  expected = np.zeros((22, 40), bool)
  np.logical_or.at(expected, (rows[:, None], cols[None, :]), fixations)
  np.testing.assert_array_equal(dense, expected)


def _brute_force_protocol(tune, test, blur_grid, center_sigma_grid,
                          center_weight_grid):
  """The old protocol: every score from scratch at the fixation size."""
  auc = saliency_speed.reference_auc_judd

  def make(ponder, fixations, blur=None, center_weight=0.0,
           center_sigma=0.25):
    shape = np.shape(fixations)
    if blur is None:
      return saliency.center_baseline(shape[0], shape[1], center_sigma)
    return saliency_speed.reference_ponder_saliency(
        ponder, shape, blur, center_weight, center_sigma)

  def mean(data, params):
    scores = [auc(make(p, f, **params), f) for p, f, _ in data]
    return scores, (-1.0 if np.all(np.isnan(scores))
                    else float(np.nanmean(scores)))

  center = max([dict(center_sigma=s) for s in center_sigma_grid],
               key=lambda params: mean(tune, params)[1])
  ponder = max([dict(blur=b) for b in blur_grid],
               key=lambda params: mean(tune, params)[1])
  mixed = max([dict(blur=b, center_weight=w,
                    center_sigma=center['center_sigma'])
               for b in blur_grid for w in center_weight_grid],
              key=lambda params: mean(tune, params)[1])
  return {name: (params, mean(test, params)[1]) for name, params in
          (('center_baseline', center), ('ponder', ponder),
           ('ponder_center', mixed))}


def _protocol_data(rng, shape, cells, count):
  data = []
  for index in range(count):
    fixations = np.zeros(shape)
    row = rng.integers(shape[0] // 8, shape[0] // 2)
    col = rng.integers(shape[1] // 2, shape[1] - shape[1] // 8)
    fixations[row - 3:row + 3, col - 3:col + 3] = (
        rng.uniform(size=(6, 6)) > 0.5)
    fixations[rng.integers(shape[0]), rng.integers(shape[1])] = 1
    ponder = rng.uniform(0, 1.0, cells)
    ponder[row * cells[0] // shape[0], col * cells[1] // shape[1]] += 2.0
    data.append((ponder, fixations, 'AB'[index % 2]))
  return data


def test_protocol_at_full_resolution_is_the_brute_force_protocol():
  rng = np.random.default_rng(4)
  tune = _protocol_data(rng, (36, 64), (9, 16), 6)
  test = _protocol_data(rng, (36, 64), (9, 16), 6)
  grids = dict(blur_grid=(0.0, 0.05, 0.1), center_sigma_grid=(0.2, 0.3),
               center_weight_grid=(0.0, 0.3, 0.6))
  results = saliency.evaluate_protocol(tune, test, map_resolution=None,
                                       tune_resolution=None, **grids)
  expected = _brute_force_protocol(tune, test, **grids)
  for name, (params, auc) in expected.items():
    assert results[name]['params'] == params
    assert results[name]['auc'] == pytest.approx(auc, abs=1e-6)


def test_protocol_reports_exact_scores_of_its_working_maps():
  rng = np.random.default_rng(5)
  tune = _protocol_data(rng, (108, 192), (12, 20), 6)
  test = _protocol_data(rng, (108, 192), (12, 20), 6)
  results = saliency.evaluate_protocol(
      tune, test, blur_grid=(0.0, 0.05), center_sigma_grid=(0.2, 0.3),
      center_weight_grid=(0.0, 0.5), map_resolution=64, tune_resolution=96)
  assert results['ponder']['auc'] > results['center_baseline']['auc']
  shape = saliency.working_shape((108, 192), 64)
  assert shape == (36, 64)
  for name, params in ((n, r['params']) for n, r in results.items()):
    maps = [saliency.center_baseline(*shape, params['center_sigma'])
            if name == 'center_baseline' else
            saliency.ponder_saliency(p, shape, params['blur'],
                                     params.get('center_weight', 0.0),
                                     params.get('center_sigma', 0.25))
            for p, _, _ in test]
    # Exact AUC-Judd of these maps against the full 108x192 fixation maps.
    expected = [saliency_speed.reference_auc_judd(m, f)
                for m, (_, f, _) in zip(maps, test)]
    assert results[name]['auc'] == pytest.approx(np.mean(expected),
                                                 abs=1e-6)
    for category in 'AB':
      assert results[name]['per_category'][category] == pytest.approx(
          np.mean([e for e, (_, _, c) in zip(expected, test)
                   if c == category]), abs=1e-6)


def test_split_halves_cuts_each_category_in_order():
  groups = {'b': [1, 2, 3, 4, 5], 'a': ['x', 'y']}
  assert saliency.split_halves(groups) == (
      [('a', 'x'), ('b', 1), ('b', 2)],
      [('a', 'y'), ('b', 3), ('b', 4), ('b', 5)])
  assert saliency.split_halves(groups, max_per_category=1) == (
      [('a', 'x'), ('b', 1)], [('a', 'y'), ('b', 3)])


def test_read_cat2000_gives_sorted_halves_of_sparse_maps(tmp_path):
  expected = test_data_cat2000.write_fake_train_set(str(tmp_path / 'manual'))
  builder = cat2000_data.prepare(str(tmp_path / 'data'),
                                 str(tmp_path / 'manual'))
  seen = []

  def ponder_map(image):
    seen.append(image.shape)
    return np.full((2, 3), float(len(seen)))

  tune, test = saliency.read_cat2000(builder, ponder_map, max_per_category=1)
  assert len(seen) == 4 and set(seen) == {(18, 32, 3)}
  assert [c for _, _, c in tune] == [c for _, _, c in test] == list(
      test_data_cat2000.CATEGORIES)
  for (ponder, fixations, category), name in zip(
      tune + test, ['001', '001', '003', '003']):
    assert ponder.shape == (2, 3)
    assert isinstance(fixations, saliency.SparseFixations)
    np.testing.assert_array_equal(np.asarray(fixations, bool),
                                  expected[f'{category}/{name}'])


def _summary(ponder_auc):
  per_category = {'Action': 0.75, 'Sketch': None}
  results = {name: dict(auc=auc, per_category=per_category, params=params)
             for name, auc, params in (
                 ('center_baseline', 0.8, dict(center_sigma=0.25)),
                 ('ponder', ponder_auc, dict(blur=0.02)),
                 ('ponder_center', 0.85, dict(blur=0.04, center_weight=0.5,
                                              center_sigma=0.25)))}
  return dict(dataset='cat2000', num_test=4, num_tune=4,
              categories=['Action', 'Sketch'], checkpoint='run/ckpt-1',
              model=dict(model_type='sact', family='imagenet',
                         units=[1, 1, 1, 1]),
              image_size=[64, 36], saliency_map='total ponder map',
              map_resolution=16, tune_resolution=0, results=results)


def test_format_table_lists_rows_parameters_and_categories():
  lines = saliency.format_table(_summary(0.7)).splitlines()
  assert lines[0] == ('Saliency on cat2000: AUC-Judd on the second half (4 '
                      'images, 2 categories), parameters tuned on the first '
                      'half (4 images).')
  assert 'images resized to 64x36' in lines[1]
  assert lines[2].startswith('Maps blurred and mixed at longer side 16; '
                             'parameters chosen against fixations pooled to '
                             'the fixation map size;')
  assert lines[5].split() == ['Centre', 'baseline', '0.800',
                              'center_sigma=0.25']
  assert lines[6].split() == ['SACT', 'ponder', 'map', '0.700', 'blur=0.02']
  assert lines[7].split() == ['SACT', '+', 'centre', 'baseline', '0.850',
                              'blur=0.04,', 'center_sigma=0.25,',
                              'center_weight=0.5']
  assert lines[-2].split() == ['Action', '0.750', '0.750', '0.750']
  assert lines[-1].split() == ['Sketch', 'n/a', 'n/a', 'n/a']
  nan_row = saliency.format_table(_summary(float('nan'))).splitlines()[6]
  assert nan_row.split() == ['SACT', 'ponder', 'map', 'n/a', 'blur=0.02']


def test_evaluate_run_rejects_an_unknown_dataset(tmp_path):
  with pytest.raises(ValueError, match='clutter_digits'):
    saliency.evaluate_run(str(tmp_path), 'mit1003')
