"""Image preprocessing for training and evaluation.

Two recipes:

* inception (ImageNet models): training takes a random crop covering part of
  the object box with a random area and aspect ratio, resizes it, flips it
  and jitters its colours; evaluation keeps a central crop. Output in [-1, 1].
* cifar (CIFAR models): training pads, takes a random crop of the original
  size and flips; evaluation keeps the image. Each image is standardised to
  zero mean and unit variance.

Every function takes one example's encoded image (JPEG or PNG bytes, as TFDS
stores it) so that JPEG crops decode only the pixels they keep. Training
functions take a `[2]` int seed: the random choices are stateless, so an
example gets the same augmentation whatever the parallelism, and a resumed
run sees the data it would have seen.

Boxes are `[ymin, xmin, ymax, xmax]` normalised to [0, 1].
"""

import tensorflow as tf

# Inception-style colour jitter, as in the authors' ImageNet training.
_BRIGHTNESS_DELTA = 32.0 / 255.0
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 0.2
_CONTRAST_RANGE = (0.5, 1.5)
_ASPECT_RATIO_RANGE = (0.75, 1.33)


def _image_shape(image_bytes, image_format):
  if image_format == 'jpeg':
    return tf.image.extract_jpeg_shape(image_bytes)
  return tf.shape(tf.io.decode_png(image_bytes, channels=3))


def _decode_crop(image_bytes, offset, size, image_format):
  """Decodes the `size` window at `offset` ([y, x]) of the image, uint8."""
  if image_format == 'jpeg':
    window = tf.stack([offset[0], offset[1], size[0], size[1]])
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = tf.io.decode_png(image_bytes, channels=3)
  return tf.image.crop_to_bounding_box(image, offset[0], offset[1], size[0],
                                       size[1])


def _check_format(image_format):
  if image_format not in ('jpeg', 'png'):
    raise ValueError(f"image_format must be 'jpeg' or 'png', got "
                     f'{image_format!r}.')


def _resize(image, size):
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size],
                          method='bilinear', antialias=False)
  return tf.ensure_shape(image, [size, size, 3])


def _distort_colour(image, seed):
  """Random brightness, saturation, hue and contrast in a random order.

  `image` is float in [0, 1]; the result is clipped back to [0, 1].
  """
  seeds = tf.random.experimental.stateless_split(seed, 5)

  def jitter(order):
    out = image
    ops = {
        'brightness': lambda x: tf.image.stateless_random_brightness(
            x, _BRIGHTNESS_DELTA, seeds[0]),
        'saturation': lambda x: tf.image.stateless_random_saturation(
            x, *_SATURATION_RANGE, seeds[1]),
        'hue': lambda x: tf.image.stateless_random_hue(x, _HUE_DELTA,
                                                       seeds[2]),
        'contrast': lambda x: tf.image.stateless_random_contrast(
            x, *_CONTRAST_RANGE, seeds[3]),
    }
    for name in order:
      out = ops[name](out)
    return out

  first = tf.random.stateless_uniform([], seeds[4]) < 0.5
  image = tf.cond(first,
                  lambda: jitter(('brightness', 'saturation', 'hue',
                                  'contrast')),
                  lambda: jitter(('brightness', 'contrast', 'saturation',
                                  'hue')))
  return tf.clip_by_value(image, 0.0, 1.0)


def inception_train(image_bytes, seed, image_size, image_format='jpeg',
                    bbox=None, area_range=(0.05, 1.0), min_object_covered=0.1,
                    flip=True, color_distortion=True):
  """Inception-style training crop, `[image_size, image_size, 3]` in [-1, 1].

  Args:
    image_bytes: encoded image, a string scalar.
    seed: `[2]` int seed of this example's random choices.
    image_size: output height and width.
    image_format: 'jpeg' or 'png'.
    bbox: `[4]` object box; None for the whole image.
    area_range: range of the crop's area, as fractions of the image.
    min_object_covered: fraction of the box the crop must cover.
    flip: random horizontal flip.
    color_distortion: random colour jitter.
  """
  _check_format(image_format)
  crop_seed, flip_seed, colour_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  shape = _image_shape(image_bytes, image_format)
  if bbox is None:
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0])
  offset, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.reshape(tf.cast(bbox, tf.float32), [1, 1, 4]), crop_seed,
      min_object_covered=min_object_covered,
      aspect_ratio_range=_ASPECT_RATIO_RANGE, area_range=area_range,
      max_attempts=100, use_image_if_no_bounding_boxes=True)
  image = _decode_crop(image_bytes, offset[:2], size[:2], image_format)
  image = _resize(image, image_size) / 255.0
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if color_distortion:
    image = _distort_colour(image, colour_seed)
  return image * 2.0 - 1.0


def central_crop_eval(image_bytes, image_size, image_format='jpeg',
                      crop_fraction=0.875, bbox=None):
  """Central crop resized to `image_size`, in [-1, 1].

  Returns:
    `(image, bbox)`: the image, and `bbox` mapped into the crop (clipped to
    it), or None when no box was given.
  """
  _check_format(image_format)
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f'crop_fraction must be in (0, 1], got {crop_fraction}.')
  shape = _image_shape(image_bytes, image_format)
  height = tf.cast(shape[0], tf.float64)
  width = tf.cast(shape[1], tf.float64)
  crop_h = tf.cast(tf.round(height * crop_fraction), tf.int32)
  crop_w = tf.cast(tf.round(width * crop_fraction), tf.int32)
  top = (shape[0] - crop_h) // 2
  left = (shape[1] - crop_w) // 2
  image = _decode_crop(image_bytes, tf.stack([top, left]),
                       tf.stack([crop_h, crop_w]), image_format)
  image = _resize(image, image_size) / 127.5 - 1.0
  if bbox is not None:
    bbox = crop_box(bbox, top, left, crop_h, crop_w, shape[0], shape[1])
  return image, bbox


def crop_box(bbox, top, left, crop_h, crop_w, height, width):
  """Maps a normalised box into a crop's frame, clipped to the crop."""
  f = lambda v: tf.cast(v, tf.float32)
  scale = tf.stack([f(height) / f(crop_h), f(width) / f(crop_w)] * 2)
  shift = tf.stack([f(top) / f(height), f(left) / f(width)] * 2)
  return tf.clip_by_value((tf.cast(bbox, tf.float32) - shift) * scale, 0.0,
                          1.0)


def cifar_train(image_bytes, seed, image_size, image_format='png', pad=None,
                flip=True):
  """Pad, random crop, flip and standardise: `[image_size, image_size, 3]`.

  `pad` defaults to image_size / 8 (4 pixels for CIFAR's 32).
  """
  _check_format(image_format)
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  image = _decode(image_bytes, image_format)
  image = _resize_if_needed(image, image_size)
  pad = image_size // 8 if pad is None else pad
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.image.stateless_random_crop(image, [image_size, image_size, 3],
                                         crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.image.per_image_standardization(image)


def cifar_eval(image_bytes, image_size, image_format='png'):
  """The whole image (resized if needed), standardised."""
  _check_format(image_format)
  image = _resize_if_needed(_decode(image_bytes, image_format), image_size)
  return tf.image.per_image_standardization(image)


def _decode(image_bytes, image_format):
  if image_format == 'jpeg':
    return tf.io.decode_jpeg(image_bytes, channels=3)
  return tf.io.decode_png(image_bytes, channels=3)


def _resize_if_needed(image, image_size):
  shape = tf.shape(image)
  return tf.cond(
      tf.logical_and(shape[0] == image_size, shape[1] == image_size),
      lambda: tf.ensure_shape(tf.cast(image, tf.float32),
                              [image_size, image_size, 3]),
      lambda: _resize(image, image_size))
