"""Box arithmetic on `[..., 4]` tensors laid out `[ymin, xmin, ymax, xmax]`.

Coordinates are continuous: a box covers [ymin, ymax) x [xmin, xmax), in
pixels of some image or normalised to [0, 1] by its height and width. IoU and
the box coding are invariant under scaling each axis, so they work on either.
"""

import tensorflow as tf


def area(boxes):
  """Areas `[...]` of boxes `[..., 4]`; inverted boxes have area 0."""
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def intersection(boxes1, boxes2):
  """Pairwise intersection areas `[N, M]` of boxes `[N, 4]` and `[M, 4]`."""
  ymin1, xmin1, ymax1, xmax1 = tf.split(boxes1, 4, axis=-1)
  ymin2, xmin2, ymax2, xmax2 = tf.unstack(boxes2, axis=-1)
  height = tf.minimum(ymax1, ymax2) - tf.maximum(ymin1, ymin2)
  width = tf.minimum(xmax1, xmax2) - tf.maximum(xmin1, xmin2)
  return tf.maximum(height, 0.0) * tf.maximum(width, 0.0)


def iou(boxes1, boxes2):
  """Pairwise intersection over union `[N, M]` of `[N, 4]` and `[M, 4]` boxes.

  Pairs whose union is empty (two zero-area boxes) have IoU 0, not NaN.
  """
  boxes1 = tf.convert_to_tensor(boxes1, tf.float32)
  boxes2 = tf.convert_to_tensor(boxes2, tf.float32)
  inter = intersection(boxes1, boxes2)
  union = area(boxes1)[:, tf.newaxis] + area(boxes2)[tf.newaxis, :] - inter
  return tf.math.divide_no_nan(inter, union)


def is_valid(boxes):
  """Bool `[...]`: the box has positive height and width."""
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  return tf.logical_and(ymax > ymin, xmax > xmin)


def clip(boxes, height, width):
  """Clips boxes `[..., 4]` to the window [0, height] x [0, width]."""
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  height = tf.cast(height, boxes.dtype)
  width = tf.cast(width, boxes.dtype)
  ymin = tf.clip_by_value(ymin, 0.0, height)
  ymax = tf.clip_by_value(ymax, 0.0, height)
  xmin = tf.clip_by_value(xmin, 0.0, width)
  xmax = tf.clip_by_value(xmax, 0.0, width)
  return tf.stack([ymin, xmin, ymax, xmax], axis=-1)


def scale(boxes, y_scale, x_scale):
  """Multiplies the y coordinates by `y_scale` and the x ones by `x_scale`.

  Turns normalised boxes into pixels (scales = height, width) and back
  (scales = 1 / height, 1 / width).
  """
  y_scale = tf.cast(y_scale, boxes.dtype)
  x_scale = tf.cast(x_scale, boxes.dtype)
  return boxes * tf.stack([y_scale, x_scale, y_scale, x_scale])


def flip_left_right(boxes):
  """Normalised boxes of the horizontally mirrored image."""
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def to_coco(boxes, height, width):
  """Normalised `[..., 4]` boxes -> COCO's `[x, y, width, height]` in pixels."""
  ymin, xmin, ymax, xmax = tf.unstack(
      scale(tf.convert_to_tensor(boxes, tf.float32), height, width), axis=-1)
  return tf.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)
