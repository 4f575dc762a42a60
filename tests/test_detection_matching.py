"""Matching, balanced sampling and both stages' targets on hand-made cases."""

import numpy as np
import pytest
import tensorflow as tf

from sact_tf.detection import box_coder
from sact_tf.detection import matching
from sact_tf.detection import sampling
from sact_tf.detection import targets

NEG, IGN = matching.NEGATIVE, matching.IGNORED
IOU = [[0.8, 0.1],
       [0.5, 0.25],
       [0.1, 0.2],
       [0.0, 0.0]]


def test_thresholds_without_forcing():
  np.testing.assert_array_equal(
      matching.match(IOU, 0.7, 0.3).numpy(), [0, IGN, NEG, NEG])


def test_every_box_claims_its_best_anchor():
  # Box 1 overlaps at most 0.25 (row 1), below both thresholds.
  np.testing.assert_array_equal(
      matching.match(IOU, 0.7, 0.3, force_match=True).numpy(),
      [0, 1, NEG, NEG])


def test_invalid_rows_are_ignored_and_never_forced():
  valid = tf.constant([True, False, True, True])
  np.testing.assert_array_equal(
      matching.match(IOU, 0.7, 0.3, force_match=True, valid=valid).numpy(),
      [0, IGN, 1, NEG])


def test_a_box_overlapping_nothing_claims_nothing():
  iou = [[0.1, 0.0], [0.0, 0.0]]
  np.testing.assert_array_equal(
      matching.match(iou, 0.7, 0.3, force_match=True).numpy(), [0, NEG])


def test_no_ground_truth_makes_every_row_negative():
  matches = matching.match(tf.zeros([3, 0]), 0.7, 0.3, force_match=True)
  np.testing.assert_array_equal(matches.numpy(), [NEG] * 3)


def test_thresholds_must_be_ordered():
  with pytest.raises(ValueError, match='must not exceed'):
    matching.match(IOU, 0.3, 0.7)


def _sample(num_positive, num_negative, size=16, fraction=0.5, seed=(1, 2)):
  positive = tf.constant([True] * num_positive + [False] * num_negative,
                         tf.bool)
  return sampling.balanced_sample(positive, tf.logical_not(positive), size,
                                  fraction, seed)


@pytest.mark.parametrize('num_positive, num_negative, expected', [
    (10, 100, (8, 8)),   # positives capped at half
    (3, 100, (3, 13)),   # negatives fill the rest
    (10, 2, (8, 2)),     # too few negatives: a smaller sample
    (0, 0, (0, 0)),
])
def test_balanced_sample_counts(num_positive, num_negative, expected):
  pos, neg = _sample(num_positive, num_negative)
  assert (int(tf.reduce_sum(tf.cast(pos, tf.int32))),
          int(tf.reduce_sum(tf.cast(neg, tf.int32)))) == expected
  assert not np.any(pos.numpy()[num_positive:])
  assert not np.any(neg.numpy()[:num_positive])


def test_balanced_sample_is_seeded():
  first = _sample(30, 100)[1].numpy()
  np.testing.assert_array_equal(first, _sample(30, 100)[1].numpy())
  assert not np.array_equal(first, _sample(30, 100, seed=(3, 4))[1].numpy())


def test_rpn_targets_of_one_box():
  anchors = tf.constant([[0., 0., 10., 10.],    # the box itself
                         [0., 2., 10., 12.],    # IoU 8/12 = 0.67: ignored
                         [50., 50., 60., 60.],  # negative
                         [0., 0., 10., 10.]])   # invalid
  valid = tf.constant([True, True, True, False])
  result = targets.rpn_targets(anchors, valid, [[0., 0., 10., 10.]],
                               seed=[0, 0], sample_size=4)
  np.testing.assert_array_equal(result.labels.numpy(), [1, 0, 0, 0])
  np.testing.assert_array_equal(result.label_weights.numpy(), [1, 0, 1, 0])
  np.testing.assert_array_equal(result.box_weights.numpy(), [1, 0, 0, 0])
  np.testing.assert_allclose(result.box_targets.numpy()[0], [0, 0, 0, 0],
                             atol=1e-5)


def test_rpn_targets_without_objects_are_all_negative_and_finite():
  anchors = tf.constant([[0., 0., 10., 10.], [5., 5., 20., 20.]])
  result = targets.rpn_targets(anchors, tf.constant([True, True]),
                               tf.zeros([0, 4]), seed=[0, 0])
  np.testing.assert_array_equal(result.labels.numpy(), [0, 0])
  np.testing.assert_array_equal(result.label_weights.numpy(), [1, 1])
  np.testing.assert_array_equal(result.box_weights.numpy(), [0, 0])
  assert np.all(np.isfinite(result.box_targets.numpy()))


def test_classifier_targets():
  proposals = tf.constant([[0., 0., 10., 10.],     # class 2 box, IoU 1
                           [0., 0., 10., 12.],     # IoU 10/12 with it
                           [30., 30., 40., 40.],   # background
                           [0., 0., 0., 0.]])      # padding
  gt = tf.constant([[0., 0., 10., 10.], [100., 100., 120., 120.]])
  result = targets.classifier_targets(
      proposals, 3, gt, tf.constant([2, 5]), seed=[0, 0], sample_size=8,
      positive_fraction=0.5)
  # Positives first, then background; the padding row never appears.
  np.testing.assert_array_equal(result.classes.numpy(), [3, 3, 0])
  np.testing.assert_array_equal(result.box_weights.numpy(), [1, 1, 0])
  expected = box_coder.encode(gt[:1], result.boxes[:2]).numpy()
  np.testing.assert_allclose(result.box_targets.numpy()[:2], expected,
                             atol=1e-5)
  np.testing.assert_array_equal(result.box_targets.numpy()[2], [0, 0, 0, 0])


def test_ground_truth_proposals_give_every_object_a_positive():
  proposals = tf.constant([[30., 30., 40., 40.]])
  gt = tf.constant([[0., 0., 10., 10.], [100., 100., 120., 120.]])
  result = targets.classifier_targets(
      proposals, 1, gt, tf.constant([0, 1]), seed=[0, 0], sample_size=8,
      positive_fraction=0.5, add_ground_truth=True)
  assert sorted(result.classes.numpy().tolist()) == [0, 1, 2]


def test_classifier_targets_without_objects():
  proposals = tf.constant([[0., 0., 10., 10.], [5., 5., 9., 9.]])
  result = targets.classifier_targets(
      proposals, 2, tf.zeros([0, 4]), tf.zeros([0], tf.int32), seed=[0, 0],
      add_ground_truth=True)
  np.testing.assert_array_equal(result.classes.numpy(), [0, 0])
