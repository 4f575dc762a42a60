"""NMS, ROI cropping and the two stages' losses on hand-made inputs."""

import numpy as np
import tensorflow as tf

from sact_tf.detection import losses
from sact_tf.detection import nms
from sact_tf.detection import roi
from sact_tf.detection import targets

BOXES = tf.constant([[0., 0., 10., 10.],
                     [0., 1., 10., 11.],    # IoU 9/11 = 0.82 with box 0
                     [20., 20., 30., 30.],
                     [0., 4., 10., 14.]])   # IoU 6/14 = 0.43 with box 0


def test_single_class_nms_keeps_by_score_and_pads():
  scores = tf.constant([0.9, 0.8, 0.7, 0.6])
  boxes, kept_scores, count = nms.single_class_nms(BOXES, scores, 5, 0.7)
  assert int(count) == 3
  np.testing.assert_allclose(kept_scores.numpy(), [0.9, 0.7, 0.6, 0, 0])
  np.testing.assert_allclose(boxes.numpy()[:3], BOXES.numpy()[[0, 2, 3]])
  np.testing.assert_array_equal(boxes.numpy()[3:], 0)
  # A lower threshold also removes box 3 (IoU 0.43 with box 0).
  assert int(nms.single_class_nms(BOXES, scores, 5, 0.4)[2]) == 2
  # Only the best box enters NMS with pre_nms_top_k=1.
  assert int(nms.single_class_nms(BOXES, scores, 5, 0.7,
                                  pre_nms_top_k=1)[2]) == 1


def test_multiclass_nms_is_per_class_then_global():
  boxes = tf.tile(BOXES[tf.newaxis, :, tf.newaxis] / 30.0, [1, 1, 2, 1])
  scores = tf.constant([[[0.9, 0.0], [0.8, 0.85], [0.0, 0.1], [0.0, 0.0]]])
  out_boxes, out_scores, classes, count = nms.multiclass_nms(
      boxes, scores, iou_threshold=0.6, max_per_class=10, max_total=3)
  # Class 0 keeps box 0 only (box 1 overlaps it); class 1 keeps boxes 1 and
  # 2; zero scores are no detections; the best 3 overall remain.
  assert int(count[0]) == 3
  np.testing.assert_allclose(out_scores.numpy()[0], [0.9, 0.85, 0.1])
  np.testing.assert_array_equal(classes.numpy()[0], [0, 1, 1])
  np.testing.assert_allclose(out_boxes.numpy()[0, 1], BOXES.numpy()[1] / 30,
                             rtol=1e-6)


def test_roi_crop_samples_feature_coordinates():
  # f(y, x) = 10 y + x on an 8 x 8 map of stride 16.
  y, x = np.mgrid[0:8, 0:8].astype(np.float32)
  features = tf.constant((10 * y + x)[np.newaxis, ..., np.newaxis])
  # Pixels (16, 32)-(80, 112) are feature rows 1..5 and columns 2..7.
  box = tf.constant([[16., 32., 80., 112.]])
  crops = roi.crop_features(features, box, [0], stride=16, crop_size=5,
                            pool=False)
  rows = 1 + np.arange(5)[:, None]
  cols = 2 + np.arange(5)[None, :] * 5 / 4
  np.testing.assert_allclose(crops.numpy()[0, ..., 0], 10 * rows + cols,
                             rtol=1e-5)


def test_roi_crop_shapes():
  features = tf.random.uniform([2, 9, 13, 6])
  boxes = tf.constant([[0., 0., 50., 60.], [10., 10., 100., 200.],
                       [0., 0., 0., 0.]])
  crops = roi.crop_features(features, boxes, [0, 1, 1], stride=16)
  assert crops.shape == (3, 7, 7, 6)
  assert roi.crop_features(features, boxes, [0, 1, 1], 16,
                           pool=False).shape == (3, 14, 14, 6)


def test_smooth_l1_hand_computed():
  # |d| < 1: d^2 / 2; else |d| - 1/2.
  value = losses.smooth_l1(tf.constant([[0.5, 2.0, 0.0, -3.0]]),
                           tf.zeros([1, 4]))
  np.testing.assert_allclose(value.numpy(), [0.125 + 1.5 + 0 + 2.5])


def test_rpn_losses_normalise_by_the_sample():
  logits = tf.constant([0.0, 2.0, -1.0])
  codes = tf.constant([[1., 0., 0., 0.], [3., 0., 0., 0.], [0., 0., 0., 0.]])
  t = targets.RpnTargets(
      labels=tf.constant([1., 0., 0.]), label_weights=tf.constant([1., 1., 0.]),
      box_targets=tf.zeros([3, 4]), box_weights=tf.constant([1., 0., 0.]))
  result = losses.rpn_losses(logits, codes, t)
  # Two sampled anchors: log 2 (logit 0, label 1) + log(1 + e^2) (label 0).
  np.testing.assert_allclose(
      result.classification.numpy(), (np.log(2) + np.log1p(np.e**2)) / 2,
      rtol=1e-6)
  np.testing.assert_allclose(result.localization.numpy(), 0.5 / 2)


def test_classifier_losses_use_the_code_of_the_own_class():
  logits = tf.constant([[0., 0., 0.], [0., 0., 0.]])
  codes = tf.constant([[[9., 9., 9., 9.], [0.5, 0., 0., 0.]],
                       [[9., 9., 9., 9.], [9., 9., 9., 9.]]])
  t = targets.ClassifierTargets(
      boxes=tf.zeros([2, 4]), classes=tf.constant([2, 0]),
      box_targets=tf.zeros([2, 4]), box_weights=tf.constant([1., 0.]))
  result = losses.classifier_losses(logits, codes, t)
  np.testing.assert_allclose(result.classification.numpy(), np.log(3),
                             rtol=1e-6)
  np.testing.assert_allclose(result.localization.numpy(), 0.125 / 2)
