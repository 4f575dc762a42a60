"""Faster R-CNN box coding: a box relative to an anchor (or proposal).

For a box with centre (y, x) and size (h, w) and an anchor (ya, xa, ha, wa):

    t = [sy (y - ya) / ha, sx (x - xa) / wa, sh log(h / ha), sw log(w / wa)]

with scale factors (sy, sx, sh, sw) = (10, 10, 5, 5), as in the TF Object
Detection API configuration the paper used. The scale factors only rescale
the regression targets so that their magnitudes suit a smooth-L1 loss.
"""

import math

import tensorflow as tf

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
# Keeps exp() of a wild early prediction finite: a box at most 1000/16 times
# its anchor's size (the bound Detectron uses).
MAX_LOG_RATIO = math.log(1000.0 / 16.0)
_EPS = 1e-8


def _centre_size(boxes):
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  height = ymax - ymin
  width = xmax - xmin
  return ymin + 0.5 * height, xmin + 0.5 * width, height, width


def encode(boxes, anchors, scale_factors=SCALE_FACTORS):
  """Regression targets `[..., 4]` of `boxes` relative to `anchors`.

  Args:
    boxes, anchors: `[..., 4]` boxes `[ymin, xmin, ymax, xmax]` in the same
      frame (pixels or normalised); anchors must have positive size.
    scale_factors: (sy, sx, sh, sw).

  Returns:
    `[..., 4]` codes `[ty, tx, th, tw]`.
  """
  y, x, h, w = _centre_size(tf.convert_to_tensor(boxes, tf.float32))
  ya, xa, ha, wa = _centre_size(tf.convert_to_tensor(anchors, tf.float32))
  # Zero-size boxes (e.g. padding) give finite codes; their weights are 0.
  h, w = h + _EPS, w + _EPS
  ha, wa = ha + _EPS, wa + _EPS
  sy, sx, sh, sw = scale_factors
  return tf.stack([sy * (y - ya) / ha, sx * (x - xa) / wa,
                   sh * tf.math.log(h / ha), sw * tf.math.log(w / wa)],
                  axis=-1)


def decode(codes, anchors, scale_factors=SCALE_FACTORS):
  """Boxes `[..., 4]` `[ymin, xmin, ymax, xmax]` from codes and anchors.

  The inverse of `encode`; size codes beyond `MAX_LOG_RATIO` are clipped so
  that untrained predictions stay finite.
  """
  codes = tf.convert_to_tensor(codes, tf.float32)
  ya, xa, ha, wa = _centre_size(tf.convert_to_tensor(anchors, tf.float32))
  ha, wa = ha + _EPS, wa + _EPS
  sy, sx, sh, sw = scale_factors
  ty, tx, th, tw = tf.unstack(codes, axis=-1)
  y = ty / sy * ha + ya
  x = tx / sx * wa + xa
  h = tf.exp(tf.minimum(th / sh, MAX_LOG_RATIO)) * ha
  w = tf.exp(tf.minimum(tw / sw, MAX_LOG_RATIO)) * wa
  return tf.stack([y - 0.5 * h, x - 0.5 * w, y + 0.5 * h, x + 0.5 * w],
                  axis=-1)
