"""IoU, box arithmetic and the Faster R-CNN box coding on hand-made boxes."""

import math

import numpy as np
import pytest
import tensorflow as tf

from sact_tf.detection import box_coder
from sact_tf.detection import box_ops


def test_iou_of_hand_made_boxes():
  boxes1 = [[0., 0., 2., 2.], [0., 0., 1., 1.]]
  boxes2 = [[1., 1., 3., 3.], [0., 0., 2., 2.], [5., 5., 6., 6.]]
  # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
  expected = [[1 / 7, 1.0, 0.0], [0.0, 1 / 4, 0.0]]
  np.testing.assert_allclose(box_ops.iou(boxes1, boxes2).numpy(), expected,
                             rtol=1e-6)


def test_iou_is_invariant_to_scaling_each_axis():
  rng = np.random.default_rng(0)
  corners = rng.uniform(0, 1, (6, 2, 2))
  boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
  boxes = boxes[:, [0, 1, 2, 3]].astype(np.float32)
  scaled = box_ops.scale(tf.constant(boxes), 480.0, 640.0)
  np.testing.assert_allclose(box_ops.iou(scaled, scaled[:3]).numpy(),
                             box_ops.iou(boxes, boxes[:3]).numpy(), rtol=1e-5)


def test_zero_area_boxes_give_zero_iou_not_nan():
  points = [[1., 1., 1., 1.]]
  assert box_ops.iou(points, points).numpy()[0, 0] == 0.0
  assert box_ops.iou(np.zeros([0, 4]), points).shape == (0, 1)


def test_area_validity_clip_flip_and_coco_conversion():
  boxes = tf.constant([[1., 2., 3., 6.], [2., 2., 2., 5.], [3., 1., 1., 2.]])
  np.testing.assert_allclose(box_ops.area(boxes).numpy(), [8., 0., 0.])
  np.testing.assert_array_equal(box_ops.is_valid(boxes).numpy(),
                                [True, False, False])
  np.testing.assert_allclose(
      box_ops.clip(tf.constant([[-5., 2., 30., 70.]]), 20, 50).numpy(),
      [[0., 2., 20., 50.]])
  np.testing.assert_allclose(
      box_ops.flip_left_right(tf.constant([[.1, .2, .3, .5]])).numpy(),
      [[.1, .5, .3, .8]], rtol=1e-6)
  np.testing.assert_allclose(
      box_ops.to_coco(tf.constant([[.25, .5, .75, 1.]]), 100, 200).numpy(),
      [[100., 25., 100., 50.]])


def test_encode_hand_computed():
  # Anchor centre (5, 5), size 10 x 10; box centre (7, 14), size 10 x 20.
  codes = box_coder.encode([[2., 4., 12., 24.]], [[0., 0., 10., 10.]])
  np.testing.assert_allclose(codes.numpy(),
                             [[2.0, 9.0, 0.0, 5 * math.log(2.0)]], atol=1e-5)


def test_decode_inverts_encode():
  rng = np.random.default_rng(1)
  def random_boxes(n):
    y, x = rng.uniform(0, 500, (2, n))
    h, w = rng.uniform(4, 300, (2, n))
    return np.stack([y, x, y + h, x + w], 1).astype(np.float32)
  boxes, anchors = random_boxes(50), random_boxes(50)
  decoded = box_coder.decode(box_coder.encode(boxes, anchors), anchors)
  np.testing.assert_allclose(decoded.numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_decode_keeps_wild_codes_finite():
  boxes = box_coder.decode([[0., 0., 1e4, 1e4]], [[0., 0., 16., 16.]])
  assert np.all(np.isfinite(boxes.numpy()))
  height = boxes.numpy()[0, 2] - boxes.numpy()[0, 0]
  assert height == pytest.approx(1000.0, rel=1e-3)
