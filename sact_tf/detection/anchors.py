"""The first stage's anchor grid.

Feature position (i, j) of a stride-`stride` feature map is centred on
image pixel (stride * i, stride * j): the stem and the stride-2 units pad
symmetrically, so output position n of each stride-2 layer is centred on
input position 2n. Each position has one anchor per (scale, aspect ratio),
scales major: height = base * scale / sqrt(ratio), width = base * scale *
sqrt(ratio), so the ratio is width / height and the area is (base*scale)^2.
"""

import itertools
import math

import numpy as np
import tensorflow as tf

# The paper's configuration (TF Object Detection API
# faster_rcnn_resnet101_coco).
STRIDE = 16
BASE_SIZE = 256.0
SCALES = (0.25, 0.5, 1.0, 2.0)
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def validate(base_size, scales, aspect_ratios):
  """Raises ValueError unless base size, scales and ratios are positive."""
  if not base_size > 0:
    raise ValueError(f'The anchor base size must be > 0 pixels, got '
                     f'{base_size!r}.')
  for name, values in (('scales', scales), ('aspect ratios', aspect_ratios)):
    values = list(values)
    if not values or any(not v > 0 for v in values):
      raise ValueError(f'Anchor {name} must be a non-empty list of numbers '
                       f'> 0, got {values!r}.')


def anchor_sizes(base_size=BASE_SIZE, scales=SCALES,
                 aspect_ratios=ASPECT_RATIOS):
  """`[A, 2]` float32 (height, width) of the anchors at one position."""
  validate(base_size, scales, aspect_ratios)
  sizes = [(base_size * s / math.sqrt(r), base_size * s * math.sqrt(r))
           for s, r in itertools.product(scales, aspect_ratios)]
  return np.asarray(sizes, np.float32)


def grid_anchors(feature_height, feature_width, stride=STRIDE,
                 base_size=BASE_SIZE, scales=SCALES,
                 aspect_ratios=ASPECT_RATIOS):
  """Anchors of a feature map, `[feature_height * feature_width * A, 4]`.

  Args:
    feature_height, feature_width: the feature map's size (ints or int32
      scalars).
    stride: pixels between neighbouring feature positions.
    base_size, scales, aspect_ratios: see the module doc.

  Returns:
    float32 boxes `[ymin, xmin, ymax, xmax]` in image pixels, ordered
    (row, column, anchor): anchor k of position (i, j) is row
    `(i * feature_width + j) * A + k`, matching a `[H, W, A]` reshape of the
    RPN's outputs. Anchors may extend past the image.
  """
  sizes = tf.constant(anchor_sizes(base_size, scales, aspect_ratios))
  ys = tf.cast(tf.range(feature_height), tf.float32) * float(stride)
  xs = tf.cast(tf.range(feature_width), tf.float32) * float(stride)
  cy, cx = tf.meshgrid(ys, xs, indexing='ij')
  centres = tf.stack([cy, cx], axis=-1)[:, :, tf.newaxis, :]
  half = 0.5 * sizes[tf.newaxis, tf.newaxis]
  boxes = tf.concat([centres - half, centres + half], axis=-1)
  return tf.reshape(boxes, [-1, 4])
