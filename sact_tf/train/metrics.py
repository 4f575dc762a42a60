"""Per-image evaluation quantities computed in the graph."""

import tensorflow as tf


def _overlap(edges_lo, edges_hi, lo, hi):
  """`[B, N]` overlap of cells [edges_lo, edges_hi) with [lo, hi), in cells."""
  size = edges_hi - edges_lo
  inter = (tf.minimum(edges_hi[tf.newaxis], hi[:, tf.newaxis]) -
           tf.maximum(edges_lo[tf.newaxis], lo[:, tf.newaxis]))
  return tf.maximum(inter, 0.0) / size


def ponder_mass_in_box(ponder_map, bbox):
  """Ponder mass inside a box and in total, for maps at any resolution.

  The map is read as piecewise constant over the image (nearest-neighbour
  upsampling, as the paper draws it), so a cell the box cuts contributes in
  proportion to the area inside. Both masses are integrals over the unit
  square: summing them over blocks of different resolutions weights each
  block's map like its upsampled image would be.

  Args:
    ponder_map: `[B, H, W]` per-position ponder cost.
    bbox: `[B, 4]` boxes `[ymin, xmin, ymax, xmax]` normalised to [0, 1].

  Returns:
    `(inside, total)`, float32 `[B]`.
  """
  ponder_map = tf.cast(ponder_map, tf.float32)
  bbox = tf.cast(bbox, tf.float32)
  height = tf.shape(ponder_map)[1]
  width = tf.shape(ponder_map)[2]
  rows = tf.cast(tf.range(height + 1), tf.float32) / tf.cast(height,
                                                              tf.float32)
  cols = tf.cast(tf.range(width + 1), tf.float32) / tf.cast(width, tf.float32)
  over_y = _overlap(rows[:-1], rows[1:], bbox[:, 0], bbox[:, 2])
  over_x = _overlap(cols[:-1], cols[1:], bbox[:, 1], bbox[:, 3])
  cell_area = 1.0 / tf.cast(height * width, tf.float32)
  inside = tf.einsum('bhw,bh,bw->b', ponder_map, over_y, over_x) * cell_area
  total = tf.reduce_sum(ponder_map, axis=[1, 2]) * cell_area
  return inside, total


def box_area(bbox):
  bbox = tf.cast(bbox, tf.float32)
  return (tf.maximum(bbox[:, 2] - bbox[:, 0], 0.0) *
          tf.maximum(bbox[:, 3] - bbox[:, 1], 0.0))


def ponder_on_object(inside, total, bbox):
  """Share of ponder mass in the box over the box's share of the image.

  1 means computation is spread evenly; above 1 it concentrates on the
  object (paper fig. 1). NaN for an empty box or an all-zero map.
  """
  area = box_area(bbox)
  nan = tf.fill(tf.shape(area), float('nan'))
  valid = tf.logical_and(area > 0.0, total > 0.0)
  ratio = tf.math.divide_no_nan(tf.math.divide_no_nan(inside, total), area)
  return tf.where(valid, ratio, nan)
