import numpy as np
import pytest

from sact_tf import saliency


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
