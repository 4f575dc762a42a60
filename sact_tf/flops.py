"""The paper's FLOPs convention, in the graph and static.

Only convolutions count: 2 * output_positions * C_out * k_h * k_w * C_in per
image (a multiply-add is two FLOPs). Biases, batch norm, activations, pooling,
additions and halting bookkeeping are free. A masked ("perforated")
convolution counts only the output positions it evaluates.

In-graph counts are int64 tensors `[B]`, one value per image.
"""

import tensorflow as tf

from sact_tf import architectures


def conv_flops(positions, kernel_size, in_channels, out_channels):
  """FLOPs of a convolution evaluated at `positions` output positions.

  `positions` may be a Python int or an int64 tensor (e.g. `[B]`).
  """
  per_position = 2 * kernel_size * kernel_size * in_channels * out_channels
  if isinstance(positions, int):
    return positions * per_position
  return tf.cast(positions, tf.int64) * per_position


def dilate(active):
  """Dilates a `[B, H, W]` bool mask with a 3x3 window (False outside).

  OR-ing shifted slices: several times faster on CPU than a one-channel max
  pool, which oneDNN runs slowly (this runs once per unit).
  """
  padded = tf.pad(active, [[0, 0], [1, 1], [1, 1]])
  rows = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
  return rows[:, :, :-2] | rows[:, :, 1:-1] | rows[:, :, 2:]


def position_counts(active, height, width):
  """Evaluated output positions per image of a unit run under `active`.

  Args:
    active: bool mask, `[B]` (ACT: whole images) or `[B, H, W]` (SACT).
    height, width: the spatial size of the state (int32 scalars).

  Returns:
    `(num_active, num_dilated)`, int64 `[B]`: the positions where the unit is
    evaluated, and the same set dilated by a 3x3 window (where a 1x1 conv
    feeding a 3x3 conv must be evaluated).
  """
  if active.shape.rank == 1:
    area = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    count = tf.cast(active, tf.int64) * area
    return count, count
  num_active = tf.reduce_sum(tf.cast(active, tf.int64), axis=[1, 2])
  num_dilated = tf.reduce_sum(tf.cast(dilate(active), tf.int64), axis=[1, 2])
  return num_active, num_dilated


def any_active(active):
  """1 for images with at least one active position, else 0 (int64 `[B]`)."""
  if active.shape.rank > 1:
    active = tf.reduce_any(active, axis=list(range(1, active.shape.rank)))
  return tf.cast(active, tf.int64)


def _same_size(size, stride):
  return -(-size // stride)


def imagenet_stem_flops(height, width):
  """FLOPs of the ImageNet stem (7x7 stride-2 conv, 64 channels) on a
  `height` x `width` image; the same for every model type and width."""
  return conv_flops(_same_size(height, 2) * _same_size(width, 2), 7, 3,
                    architectures.IMAGENET_STEM_CHANNELS)


def imagenet_feature_flops(units, height, width, base_channels=64,
                           num_blocks=4):
  """FLOPs per image of a plain ImageNet ResNet's stem and first
  `num_blocks` blocks (no classifier), without building it.

  Args:
    units: the number of units per block, a list of four ints.
    height, width: input image size.
    base_channels: bottleneck width of block 1.
    num_blocks: how many blocks to count (the detector's feature extractor
      is the stem and blocks 1-3).

  Returns:
    (FLOPs, channels of the last block counted) as Python ints.
  """
  units = architectures.imagenet_units(units=units)
  total = imagenet_stem_flops(height, width)
  h, w = _same_size(_same_size(height, 2), 2), _same_size(
      _same_size(width, 2), 2)
  channels = architectures.IMAGENET_STEM_CHANNELS
  for block, num_units in enumerate(units[:num_blocks]):
    depth_out, bottleneck, stride = architectures.imagenet_block(
        block, base_channels)
    for unit in range(num_units):
      unit_stride = stride if unit == 0 else 1
      out_h, out_w = _same_size(h, unit_stride), _same_size(w, unit_stride)
      total += conv_flops(h * w, 1, channels, bottleneck)
      total += conv_flops(out_h * out_w, 3, bottleneck, bottleneck)
      total += conv_flops(out_h * out_w, 1, bottleneck, depth_out)
      if channels != depth_out:
        total += conv_flops(out_h * out_w, 1, channels, depth_out)
      h, w, channels = out_h, out_w, depth_out
  return total, channels


def imagenet_resnet_flops(depth=None, units=None, height=224, width=224,
                          num_classes=1001, base_channels=64):
  """FLOPs per image of a plain ImageNet ResNet (no halting), without building it.

  Args:
    depth: 50, 101, 152 or 200; or
    units: the number of units per block, a list of four ints.
    height, width: input image size.
    num_classes: classifier outputs (1001 for the authors' models).
    base_channels: bottleneck width of block 1 (64 for the real models).

  Returns:
    The FLOPs as a Python int (e.g. 15,602,814,976 for ResNet-101 at 224x224).
  """
  units = architectures.imagenet_units(depth, units)
  total, channels = imagenet_feature_flops(units, height, width,
                                           base_channels)
  return total + conv_flops(1, 1, channels, num_classes)


def cifar_resnet_flops(units=5, height=32, width=32, num_classes=10,
                       base_channels=16):
  """FLOPs per image of a plain CIFAR ResNet (no halting), without building it.

  Args:
    units: units per block, an int n (ResNet-(6n+2)) or a list of three ints.
    height, width: input image size.
    num_classes: classifier outputs.
    base_channels: width of block 1.

  Returns:
    The FLOPs as a Python int (e.g. 505,775,360 for ResNet-110 at 32x32).
  """
  units = architectures.cifar_units(units)
  h, w = height, width
  total = conv_flops(h * w, 3, 3, base_channels)
  channels = base_channels
  for block, num_units in enumerate(units):
    depth_out, stride = architectures.cifar_block(block, base_channels)
    for unit in range(num_units):
      unit_stride = stride if unit == 0 else 1
      h, w = _same_size(h, unit_stride), _same_size(w, unit_stride)
      total += conv_flops(h * w, 3, channels, depth_out)
      total += conv_flops(h * w, 3, depth_out, depth_out)
      channels = depth_out
  return total + conv_flops(1, 1, channels, num_classes)
