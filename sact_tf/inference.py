"""Running a trained model on your own images.

Reading image files, resizing, the input normalisation of each recipe, and
per-image ponder maps. Used by serving (`sact_tf.export`), the ponder-map,
bulk-export and saliency tools.

Normalisation must match training: 'inception' (ImageNet recipe, and the
authors' ImageNet checkpoints) maps pixels to [-1, 1]; 'cifar' standardises
each image to zero mean and unit variance.
"""

import collections
import re

import numpy as np
import tensorflow as tf

from sact_tf import viz

PREPROCESSINGS = ('inception', 'cifar')

PonderResult = collections.namedtuple(
    'PonderResult', ['ponder_map', 'block_maps', 'probabilities', 'flops',
                     'ponder_cost', 'num_units'])
PonderResult.__doc__ = """Ponder maps and predictions of one image.

Attributes:
  ponder_map: `[H, W]` float32, the per-position ponder cost summed over
    blocks, nearest-upsampled to the input image's size.
  block_maps: list of `[h_k, w_k]` float32, each block's ponder map at its
    own resolution.
  probabilities: `[classes]` softmax of the logits.
  flops: FLOPs the model spent on the image (int).
  ponder_cost: the image's ponder cost (float).
  num_units: list of per-block `[h_k, w_k]` (SACT) or scalar (ACT) units.
"""


def validate_preprocessing(preprocessing):
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f'preprocessing must be one of {PREPROCESSINGS}, got '
                     f'{preprocessing!r}.')
  return preprocessing


def normalize(images, preprocessing):
  """Pixels in [0, 255] (`[..., H, W, 3]`, any dtype) -> the model's input."""
  validate_preprocessing(preprocessing)
  images = tf.cast(images, tf.float32)
  if preprocessing == 'inception':
    return images / 127.5 - 1.0
  return tf.image.per_image_standardization(images)


# Leading bytes of the formats `tf.io.decode_image` reads.
_SIGNATURES = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'),
               (b'GIF87a', 'GIF'), (b'GIF89a', 'GIF'), (b'BM', 'BMP'))


def image_format(data):
  """'JPEG', 'PNG', 'GIF', 'BMP' or 'WebP' from a file's first bytes, or
  None."""
  for signature, name in _SIGNATURES:
    if data.startswith(signature):
      return name
  if data[:4] == b'RIFF' and data[8:12] == b'WEBP':
    return 'WebP'
  return None


def _tf_message(error):
  """A TensorFlow error's message without the op and function names."""
  text = (error.message or str(error)).strip()
  text = re.sub(r'\{\{[^}]*\}\}', '', text)
  text = re.sub(r'\[Op:[^\]]*\].*$', '', text, flags=re.S)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0].rstrip('. ') if lines else type(error).__name__


def read_image(path):
  """An image file (JPEG, PNG, BMP or GIF) as uint8 `[H, W, 3]` NumPy.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file cannot be read, is empty, is not an image or
      cannot be decoded (corrupt or truncated); the message names the file
      and the reason.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'No such image file: {path}')
  if tf.io.gfile.isdir(path):
    raise ValueError(f'{path} is a directory, not an image file.')
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
  except (OSError, tf.errors.OpError) as e:
    reason = (_tf_message(e) if isinstance(e, tf.errors.OpError)
              else e.strerror or str(e))
    raise ValueError(f'{path} cannot be read: {reason}.') from None
  if not data:
    raise ValueError(f'{path} is empty (0 bytes), not an image.')
  kind = image_format(data)
  if kind is None:
    raise ValueError(f'{path} is not a JPEG, PNG, BMP or GIF image (its '
                     f'first bytes are {data[:8]!r}).')
  try:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    raise ValueError(f'{path} is a corrupt or truncated {kind} image that '
                     f'cannot be decoded: {_tf_message(e)}.') from None
  return image.numpy()


def resize_longer_side(image, size):
  """Resizes `[H, W, 3]` so that its longer side is `size` (aspect kept).

  Returns uint8 NumPy; `size=None` returns the image unchanged.
  """
  image = np.asarray(image)
  if size is None:
    return image
  if size < 1:
    raise ValueError(f'size must be a positive int, got {size}.')
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
  if new == (height, width):
    return image
  resized = tf.image.resize(image, new, method='bilinear', antialias=True)
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def make_predict_fn(model, preprocessing):
  """A `tf.function` from uint8 `[1, H, W, 3]` to the model's outputs.

  Retraces per distinct image size; reuse it across images of one size.
  """
  validate_preprocessing(preprocessing)

  @tf.function(reduce_retracing=True)
  def predict(images):
    return model(normalize(images, preprocessing), training=False)

  return predict


def ponder_maps(model, image, preprocessing, predict_fn=None):
  """Ponder maps and predictions of an ACT/SACT model on one image.

  Args:
    model: a built ACT or SACT `sact_tf.models.ResNet`.
    image: uint8 `[H, W, 3]` pixels (any H, W).
    preprocessing: 'inception' or 'cifar', as the model was trained.
    predict_fn: optional `make_predict_fn(model, preprocessing)` to reuse.

  Returns:
    A `PonderResult`.
  """
  if model.model_type == 'resnet':
    raise ValueError('A plain ResNet has no ponder maps: use an ACT or SACT '
                     'model.')
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image must be [height, width, 3], got shape '
                     f'{image.shape}.')
  predict = predict_fn or make_predict_fn(model, preprocessing)
  out = predict(tf.constant(image[np.newaxis], tf.uint8))
  total = viz.total_ponder_map(out, image.shape[:2])
  return PonderResult(
      ponder_map=total[0].numpy(),
      block_maps=[m[0].numpy() for m in viz.block_ponder_maps(out)],
      probabilities=tf.nn.softmax(out['logits'][0]).numpy(),
      flops=int(out['flops'][0]),
      ponder_cost=float(out['ponder_cost'][0]),
      num_units=[out[f'{name}/num_units'][0].numpy()
                 for name in model.block_names])
