"""Cropping proposals' features for the box classifier (ROI pooling).

`crop_and_resize` samples a box of a feature map on a regular grid with
bilinear interpolation, then a 2x2 max pool halves the grid (the paper's
14x14 -> 7x7). Boxes are given in image pixels; feature position i of a
stride-s map sits at image pixel s * i (see `sact_tf.detection.anchors`),
so a box edge at pixel y lies at feature coordinate y / s.
"""

import tensorflow as tf

CROP_SIZE = 14


def to_feature_coordinates(boxes, feature_height, feature_width, stride):
  """Pixel boxes `[K, 4]` -> `crop_and_resize`'s normalised coordinates.

  `crop_and_resize` maps a normalised y to feature coordinate
  y * (feature_height - 1).
  """
  y_scale = 1.0 / (float(stride) * tf.cast(
      tf.maximum(feature_height - 1, 1), tf.float32))
  x_scale = 1.0 / (float(stride) * tf.cast(
      tf.maximum(feature_width - 1, 1), tf.float32))
  return boxes * tf.stack([y_scale, x_scale, y_scale, x_scale])


def crop_features(features, boxes, box_indices, stride, crop_size=CROP_SIZE,
                  pool=True):
  """Features of each box, `[K, crop_size / 2, crop_size / 2, C]`.

  Args:
    features: `[B, h, w, C]` feature maps.
    boxes: `[K, 4]` boxes `[ymin, xmin, ymax, xmax]` in image pixels.
    box_indices: int32 `[K]`, the image of each box.
    stride: the feature map's stride in pixels.
    crop_size: side of the bilinear crop.
    pool: follow the crop by a 2x2 stride-2 max pool.

  Returns:
    `[K, crop_size // 2, crop_size // 2, C]` (`[K, crop_size, crop_size, C]`
    without `pool`).
  """
  shape = tf.shape(features)
  normalised = to_feature_coordinates(boxes, shape[1], shape[2], stride)
  crops = tf.image.crop_and_resize(features, normalised, box_indices,
                                   [crop_size, crop_size])
  if pool:
    crops = tf.nn.max_pool2d(crops, 2, 2, 'VALID')
  return crops
