"""Matching anchors or proposals (rows) to ground-truth boxes (columns).

A match is an int32 per row: the index of its ground-truth box (>= 0), or
`NEGATIVE` (background), or `IGNORED` (neither: no loss at all).
"""

import tensorflow as tf

NEGATIVE = -1
IGNORED = -2


def match(iou, positive_threshold, negative_threshold, force_match=False,
          valid=None):
  """Argmax matching with thresholds.

  Each row goes to its highest-IoU column when that IoU is at least
  `positive_threshold`, is `NEGATIVE` below `negative_threshold` and
  `IGNORED` in between. With `force_match`, each column also claims the row
  that overlaps it most (if they overlap at all), whatever the thresholds:
  every ground-truth box then gets at least one anchor, however small or
  oddly shaped it is (Faster R-CNN's RPN rule).

  Args:
    iou: `[N, M]` IoU of N rows (anchors, proposals) with M ground-truth
      boxes; M may be 0 (every row is then negative).
    positive_threshold: rows with max IoU >= this are positive.
    negative_threshold: rows with max IoU < this are negative;
      <= positive_threshold.
    force_match: see above.
    valid: optional bool `[N]`; invalid rows are `IGNORED` and never forced.

  Returns:
    int32 `[N]` matches.
  """
  if negative_threshold > positive_threshold:
    raise ValueError(f'negative_threshold ({negative_threshold}) must not '
                     f'exceed positive_threshold ({positive_threshold}).')
  iou = tf.convert_to_tensor(iou, tf.float32)
  num_rows = tf.shape(iou)[0]
  num_cols = tf.shape(iou)[1]
  if valid is not None:
    # Invalid rows lose every argmax, including the forced ones.
    iou = tf.where(valid[:, tf.newaxis], iou, -1.0)

  def with_boxes():
    best = tf.argmax(iou, axis=1, output_type=tf.int32)
    best_iou = tf.reduce_max(iou, axis=1)
    matches = tf.where(best_iou >= positive_threshold, best,
                       tf.where(best_iou < negative_threshold, NEGATIVE,
                                IGNORED))
    if force_match:
      best_row = tf.argmax(iou, axis=0, output_type=tf.int32)
      overlaps = tf.reduce_max(iou, axis=0) > 0.0
      rows = tf.boolean_mask(best_row, overlaps)
      cols = tf.boolean_mask(tf.range(num_cols), overlaps)
      matches = tf.tensor_scatter_nd_update(matches, rows[:, tf.newaxis],
                                            cols)
    return matches

  matches = tf.cond(num_cols > 0, with_boxes,
                    lambda: tf.fill([num_rows], NEGATIVE))
  if valid is not None:
    matches = tf.where(valid, matches, IGNORED)
  return matches
