"""Training targets of the two stages, for one image.

RPN: anchors with IoU >= 0.7 to a ground-truth box are positive, < 0.3
negative, and every ground-truth box claims its best anchor; 256 anchors
are sampled, at most half positive. Box classifier: proposals with IoU >=
0.5 take their box's class, the others are background; 64 are sampled, at
most a quarter positive. Regression targets are `box_coder` codes of the
matched box relative to the anchor or proposal.
"""

import collections

import tensorflow as tf

from sact_tf.detection import box_coder
from sact_tf.detection import box_ops
from sact_tf.detection import matching
from sact_tf.detection import sampling

RpnTargets = collections.namedtuple(
    'RpnTargets', ['labels', 'label_weights', 'box_targets', 'box_weights'])
RpnTargets.__doc__ = """First-stage targets for N anchors.

labels: float32 `[N]`, 1 for positive anchors, else 0.
label_weights: float32 `[N]`, 1 for the sampled anchors, else 0.
box_targets: float32 `[N, 4]` codes of the matched box (0 for unmatched).
box_weights: float32 `[N]`, 1 for the sampled positive anchors, else 0.
"""

ClassifierTargets = collections.namedtuple(
    'ClassifierTargets', ['boxes', 'classes', 'box_targets', 'box_weights'])
ClassifierTargets.__doc__ = """Second-stage targets of the sampled proposals.

boxes: float32 `[S, 4]` sampled proposals (pixels), S <= sample size.
classes: int32 `[S]`: 0 background, k + 1 for (0-based) class k.
box_targets: float32 `[S, 4]` codes of the matched box (0 for background).
box_weights: float32 `[S]`, 1 for foreground proposals, else 0.
"""


def _gather_matched(values, matches, fill):
  """`values[matches]` where matched, `fill` elsewhere (works for M = 0)."""
  padded = tf.concat([values, tf.fill([1] + values.shape[1:].as_list(),
                                      tf.cast(fill, values.dtype))], axis=0)
  return tf.gather(padded,
                   tf.where(matches >= 0, matches, tf.shape(values)[0]))


def _matched_codes(matches, gt_boxes, rows):
  gt = _gather_matched(gt_boxes, matches, 0.0)
  return tf.where((matches >= 0)[:, tf.newaxis],
                  box_coder.encode(gt, rows), 0.0)


def rpn_targets(anchors, anchor_valid, gt_boxes, seed, sample_size=256,
                positive_fraction=0.5, positive_iou=0.7, negative_iou=0.3):
  """First-stage targets.

  Args:
    anchors: `[N, 4]` anchors in pixels.
    anchor_valid: bool `[N]`; invalid anchors (e.g. clipped to nothing)
      take no part.
    gt_boxes: `[M, 4]` ground-truth boxes in pixels, M >= 0.
    seed: int32 `[2]` stateless seed of the sampling.
    sample_size, positive_fraction: the balanced sample.
    positive_iou, negative_iou: matching thresholds.

  Returns:
    `RpnTargets`.
  """
  gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, tf.float32), [-1, 4])
  matches = matching.match(box_ops.iou(anchors, gt_boxes), positive_iou,
                           negative_iou, force_match=True, valid=anchor_valid)
  positive, negative = sampling.balanced_sample(
      matches >= 0, matches == matching.NEGATIVE, sample_size,
      positive_fraction, seed)
  sampled = tf.logical_or(positive, negative)
  return RpnTargets(
      labels=tf.cast(matches >= 0, tf.float32),
      label_weights=tf.cast(sampled, tf.float32),
      box_targets=_matched_codes(matches, gt_boxes, anchors),
      box_weights=tf.cast(positive, tf.float32))


def classifier_targets(proposals, num_proposals, gt_boxes, gt_classes, seed,
                       sample_size=64, positive_fraction=0.25,
                       positive_iou=0.5, add_ground_truth=False):
  """Second-stage targets: a balanced sample of the proposals.

  Args:
    proposals: `[P, 4]` proposals in pixels, the first `num_proposals`
      valid.
    num_proposals: int32 scalar.
    gt_boxes: `[M, 4]` ground-truth boxes in pixels, M >= 0.
    gt_classes: int32 `[M]` 0-based classes.
    seed: int32 `[2]` stateless seed of the sampling.
    sample_size, positive_fraction: the balanced sample.
    positive_iou: proposals with IoU >= this are foreground, the rest
      background.
    add_ground_truth: also offer the ground-truth boxes as proposals (a
      common way to give the box classifier positives while the RPN is
      still poor; off in the paper's configuration).

  Returns:
    `ClassifierTargets` with S = min(sample_size, valid proposals) rows.
  """
  gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, tf.float32), [-1, 4])
  gt_classes = tf.reshape(tf.cast(gt_classes, tf.int32), [-1])
  proposals = proposals[:num_proposals]
  if add_ground_truth:
    proposals = tf.concat([proposals, gt_boxes], axis=0)
  matches = matching.match(box_ops.iou(proposals, gt_boxes), positive_iou,
                           positive_iou)
  positive, negative = sampling.balanced_sample(
      matches >= 0, matches == matching.NEGATIVE, sample_size,
      positive_fraction, seed)
  # Positives first: the order is irrelevant to the loss but easy to read.
  chosen = tf.concat([tf.where(positive)[:, 0], tf.where(negative)[:, 0]], 0)
  boxes = tf.gather(proposals, chosen)
  matches = tf.gather(matches, chosen)
  classes = _gather_matched(gt_classes + 1, matches, 0)
  return ClassifierTargets(
      boxes=boxes, classes=classes,
      box_targets=_matched_codes(matches, gt_boxes, boxes),
      box_weights=tf.cast(matches >= 0, tf.float32))
