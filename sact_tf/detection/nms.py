"""Non-maximum suppression for the two stages.

Both return fixed-size, zero-padded outputs with a count of the valid
entries, so that the graph keeps static shapes.
"""

import tensorflow as tf


def single_class_nms(boxes, scores, max_output_size, iou_threshold,
                     pre_nms_top_k=None):
  """Greedy NMS of one class (the RPN's proposals).

  Args:
    boxes: `[N, 4]` `[ymin, xmin, ymax, xmax]`.
    scores: `[N]` (higher is better).
    max_output_size: boxes kept at most (Python int).
    iou_threshold: a box overlapping a kept, higher-scoring box by more than
      this is dropped.
    pre_nms_top_k: only the best `pre_nms_top_k` boxes enter NMS (None: all);
      bounds the cost on large images.

  Returns:
    (boxes `[max_output_size, 4]`, scores `[max_output_size]`, count int32):
    the kept boxes by decreasing score, then zeros.
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  scores = tf.convert_to_tensor(scores, tf.float32)
  if pre_nms_top_k is not None:
    k = tf.minimum(tf.shape(scores)[0], pre_nms_top_k)
    scores, top = tf.math.top_k(scores, k=k)
    boxes = tf.gather(boxes, top)
  keep = tf.image.non_max_suppression(boxes, scores, max_output_size,
                                      iou_threshold=iou_threshold)
  count = tf.shape(keep)[0]
  pad = max_output_size - count
  kept_boxes = tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]])
  kept_scores = tf.pad(tf.gather(scores, keep), [[0, pad]])
  kept_boxes.set_shape([max_output_size, 4])
  kept_scores.set_shape([max_output_size])
  return kept_boxes, kept_scores, count


def multiclass_nms(boxes, scores, iou_threshold, max_per_class, max_total,
                   score_threshold=0.0):
  """Per-class NMS, then the best `max_total` detections over all classes.

  Args:
    boxes: `[B, N, C, 4]` one box per class (normalised coordinates).
    scores: `[B, N, C]` class scores (background excluded).
    iou_threshold: per-class NMS threshold.
    max_per_class: detections kept per class at most.
    max_total: detections kept per image at most.
    score_threshold: detections scoring below this are dropped.

  Returns:
    (boxes `[B, max_total, 4]`, scores `[B, max_total]`, classes int32
    `[B, max_total]` (0-based, among the C), num_detections int32 `[B]`).
  """
  result = tf.image.combined_non_max_suppression(
      boxes, scores, max_output_size_per_class=max_per_class,
      max_total_size=max_total, iou_threshold=iou_threshold,
      score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
  return (result.nmsed_boxes, result.nmsed_scores,
          tf.cast(result.nmsed_classes, tf.int32), result.valid_detections)
