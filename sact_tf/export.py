"""SavedModel export of plain, ACT and SACT classifiers for serving.

`export_saved_model(model, export_dir)` writes a SavedModel with three
signatures:

* `serving_default` (`serve_images`): `images`, uint8 `[B, H, W, 3]` pixels
  in [0, 255], any H and W; the model runs fully convolutionally at that
  resolution.
* `serve_float`: `images`, float32 `[B, H, W, 3]` pixels in [0, 1]; the
  same computation as `serving_default` on `images * 255`.
* `serve_encoded`: `encoded`, string `[B]` of JPEG, PNG, GIF, BMP or WebP
  bytes; each image gets the evaluation preprocessing of its recipe
  (inception: central crop, resize to `image_size` x `image_size`; cifar:
  resize).

Pixels are normalised as in training (`sact_tf.inference.normalize`): to
[-1, 1] for the inception recipe, per-image standardisation for cifar.

All return `probabilities` `[B, classes]`, `top_classes` / `top_scores`
`[B, 5]`, `flops` int64 `[B]`, `ponder_cost` `[B]`, `ponder_map` `[B, h, w]`
(summed over blocks at the first block's resolution) and
`ponder_map_resized` `[B, H, W]` (the same, nearest-upsampled to the input).
Every float output is float32 and `top_classes` int32, whatever the model's
precision (a `mixed_bfloat16` / `mixed_float16` model computes in 16 bits
and its outputs are cast at the end).

A plain ResNet (model_type='resnet') exports with the same signatures and
outputs, so that it can be served next to an ACT or SACT model: it is an
ACT model whose halting scores are 0 before each block's last unit, so
every block has ponder cost N + R = L + 1 (L units, remainder 1) at every
position. Its `ponder_cost` is the constant sum over blocks of L + 1
(`sact_tf.viz.max_ponder_value`, the most an ACT/SACT model of the same
layout can spend), its ponder maps hold that value everywhere, and its
`flops` are those of every unit (they depend on the image size only).

Requests are checked in the graph, before any work, and refused with an
`InvalidArgumentError` that says what is wrong and what to send instead:

* Size: `serving_default` and `serve_float` run the model at the images'
  resolution, so images larger than `max_image_size` pixels on the longer
  side (default `MAX_IMAGE_SIZE`, 2048) are refused. `serve_encoded` only
  decodes at full size (then resizes), so its limit, `max_encoded_size`
  (default `MAX_ENCODED_SIZE`, 8192), is larger; it is read from each
  file's header, before decoding.
* Pixel range: a float array in [0, 1] fed to `serving_default` is cast to
  uint8 on the way in (NumPy inputs in Python, `.npy` files through
  `saved_model_cli`), which makes it black. `serving_default` therefore
  refuses an image with no pixel above 1, naming its index and pointing at
  `serve_float` (which also serves a truly black image). `serve_float`
  refuses values outside [0, 1] (and NaN).
* Encoded bytes (`check_encoded`): an item that is empty, not a JPEG, PNG,
  GIF, BMP or WebP file by its first bytes, or truncated (a JPEG not ending
  with the end-of-image marker FF D9, a PNG not ending with its IEND chunk,
  a GIF not ending with its trailer byte, a BMP or WebP shorter than its
  header says) is refused with a message naming `encoded[i]`. Damage inside
  a file that passes these checks still fails in the decoder, whose error
  cannot name the item.

The export folder (`check_export_dir`, `write_archive`):
`export_saved_model` writes exactly into `export_dir`. An export is written
to a temporary folder next to `export_dir` and swapped in (the old folder
renamed aside, the new one renamed in, the old one deleted), so an
interrupted export never leaves a half-written model nor loses the old one.
Every export holds a marker, `sact_export.json` next to `saved_model.pb`,
naming its source run directory, checkpoint, model and precision, and the
limits above. `export_dir` may be new, empty, or an earlier export of the
same run (replaced). Anything else non-empty is replaced only with
`overwrite=True` (the binaries' `--overwrite`); the run directory, a folder
containing it, and anything that looks like a run directory (holds
`config.json`, `checkpoint`, `ckpt-*` or TensorBoard event files) never
are.

Versions (`export_versioned`, `version_dir`, `check_version_dir`): the
binaries write to `BASE/<version>/`, the layout TF Serving watches
(`--model_base_path=BASE`), where the version is the checkpoint's global
step (`checkpoint_step`) unless one is given. The rules above apply to the
version folder; other versions in BASE are left alone. BASE itself must be
a folder (or new), must not be or hold a run directory, and must not hold
a SavedModel of its own (`check_export_base`).

Every file operation goes through `tf.io.gfile`, so `export_dir` may be a
local path or a URL of any filesystem TensorFlow has (`gs://...`,
`ram://...`). Where the filesystem cannot rename a folder with its contents
(`tf.io.gfile.rename` raises `tf.errors.UnimplementedError`, as on some
object stores, or moves the folder's entry only, as TensorFlow's in-memory
`ram://` does; probed once per export with a small `.export-probe-*`
folder), the export is written in place instead, with a logged warning: the
version it replaces is deleted first, and an interrupted export leaves a
partial folder without `sact_export.json`, which the next export replaces
only with `overwrite=True`. Local folders are always swapped in.
"""

import datetime
import json
import os
import re
import uuid

from absl import logging
import keras
import tensorflow as tf

from sact_tf import architectures
from sact_tf import fileio
from sact_tf import inference
from sact_tf import viz
from sact_tf.layers import common as common_layers
from sact_tf.train import checkpointing

TOP_K = 5
# Longest side, in pixels, of an image the model runs on at its resolution.
MAX_IMAGE_SIZE = 2048
# Longest side of an encoded image (decoded at full size, then resized).
MAX_ENCODED_SIZE = 8192
MARKER_FILENAME = 'sact_export.json'
# What an export folder holds: Keras' SavedModel and the marker.
EXPORT_ENTRIES = frozenset({'saved_model.pb', 'fingerprint.pb', 'variables',
                            'assets', MARKER_FILENAME})

_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'WebP')
_JPEG = 0
_HEAD = 32  # Header bytes read from each encoded item.
_TAIL = 12  # Trailing bytes read from each encoded item.
_REASONS = (
    '',
    ' is empty: send the bytes of an image file.',
    ': Unknown image format: its first bytes are not those of a JPEG, PNG, '
    'GIF, BMP or WebP file. Send the raw bytes of the file (not its path, '
    'nor base64 text).',
    ' is a JPEG that does not end with the end-of-image marker FF D9: the '
    'file is truncated (or has data appended after the image). Send the '
    'whole file, or re-encode it.',
    ' is a PNG that does not end with its IEND chunk: the file is truncated. '
    'Send the whole file.',
    ' is a GIF that does not end with its trailer byte 3B: the file is '
    'truncated. Send the whole file.',
    ' is a BMP shorter than the file size in its header: the file is '
    'truncated. Send the whole file.',
    ' is a WebP shorter than the file size in its RIFF header: the file is '
    'truncated. Send the whole file.',
)


class ExportDirError(FileExistsError, ValueError):
  """`export_dir` holds something only `overwrite=True` may replace.

  A `FileExistsError`, and a `ValueError` so that the binaries report it as
  the bad flag value it is.
  """


def central_crop_and_resize(image, image_size, crop_fraction=0.875):
  """Evaluation preprocessing: central crop, bilinear resize, [-1, 1]."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.central_crop(image, crop_fraction)
  image = tf.image.resize(image, [image_size, image_size])
  return image * 2.0 - 1.0


def eval_preprocess(image, image_size, preprocessing, crop_fraction=0.875):
  """uint8 `[H, W, 3]` -> the model input of the recipe's evaluation."""
  if preprocessing == 'inception':
    return central_crop_and_resize(image, image_size, crop_fraction)
  image = tf.image.resize(tf.cast(image, tf.float32),
                          [image_size, image_size])
  return inference.normalize(image, preprocessing)


def validate_size_limit(value, name):
  """`value` as a positive int, or a ValueError naming `name`."""
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name} must be a positive number of pixels (the '
                     f'longer side of the largest image served), got '
                     f'{value!r}.')
  return int(value)


def _assert_items(ok, message_of):
  """A tensor that fails, with `message_of(i)`, for the first `i` not `ok`.

  `ok` is bool `[B]`; `message_of` maps an int32 scalar index to a string
  scalar and runs only when an item fails. Use the returned tensor as a
  control dependency.
  """
  def fail():
    index = tf.argmin(tf.cast(ok, tf.int32), output_type=tf.int32)
    check = tf.debugging.Assert(tf.reduce_all(ok), [message_of(index)])
    with tf.control_dependencies([check]):
      return tf.constant(False)
  return tf.cond(tf.reduce_all(ok), lambda: tf.constant(True), fail)


def _text(value):
  if value.dtype.is_floating:
    return tf.strings.as_string(value, shortest=True)
  return tf.strings.as_string(value)


def _check_image_shape(images, max_image_size):
  """The RGB, non-empty and size checks of pixel signatures, in order."""
  shape = tf.shape(images)
  rgb = tf.debugging.assert_equal(
      shape[-1], 3,
      message='images must be RGB: shape [batch, height, width, 3].')
  with tf.control_dependencies([rgb]):
    height, width = shape[1], shape[2]
    fits = ((tf.maximum(height, width) <= max_image_size)
            & (tf.minimum(height, width) >= 1))
    return _assert_items(
        fits[tf.newaxis],
        lambda _: tf.strings.join([
            'images are ', _text(height), 'x', _text(width),
            ' pixels (height x width); this export serves images of 1 to '
            f'{max_image_size} pixels a side (max_image_size). Resize '
            f'them to at most {max_image_size} pixels on the longer side '
            '(keeping the aspect ratio), or re-export with a larger '
            '--max_image_size.']))


def check_uint8_images(images, max_image_size=MAX_IMAGE_SIZE):
  """uint8 `[B, H, W, C]` in [0, 255] -> `[B, H, W, 3]`, once checked.

  Fails (InvalidArgumentError) unless C is 3 and the images fit
  `max_image_size`, and for the first image with no pixel above 1: the
  uint8 cast of a float image in [0, 1], sent to the wrong signature.
  """
  shape_ok = _check_image_shape(images, max_image_size)
  with tf.control_dependencies([shape_ok]):
    brightest = tf.reduce_max(images, axis=[1, 2, 3])
    lit = _assert_items(
        brightest > 1,
        lambda i: tf.strings.join([
            'images[', _text(i), '] has no pixel above 1: serving_default '
            'takes uint8 pixels in [0, 255], and float pixels in [0, 1] '
            'become such a black image when cast to uint8. Send float '
            'images in [0, 1] (or a truly black image) to the serve_float '
            'signature, or multiply them by 255 first.']))
  with tf.control_dependencies([lit]):
    return tf.ensure_shape(tf.identity(images), [None, None, None, 3])


def check_float_images(images, max_image_size=MAX_IMAGE_SIZE):
  """float32 `[B, H, W, C]` in [0, 1] -> `[B, H, W, 3]`, once checked.

  Fails (InvalidArgumentError) unless C is 3 and the images fit
  `max_image_size`, and for the first image with a value outside [0, 1]
  (or NaN), e.g. pixels in [0, 255] sent to the wrong signature.
  """
  shape_ok = _check_image_shape(images, max_image_size)
  with tf.control_dependencies([shape_ok]):
    inside = tf.reduce_all((images >= 0.0) & (images <= 1.0), axis=[1, 2, 3])
    in_range = _assert_items(
        inside,
        lambda i: tf.strings.join([
            'images[', _text(i), '] has values outside [0, 1] (from ',
            _text(tf.reduce_min(images[i])), ' to ',
            _text(tf.reduce_max(images[i])), '): serve_float takes float '
            'pixels in [0, 1]. Send uint8 pixels in [0, 255] to '
            'serving_default, or divide by 255 first.']))
  with tf.control_dependencies([in_range]):
    return tf.ensure_shape(tf.identity(images), [None, None, None, 3])


def check_encoded(encoded, max_size=MAX_ENCODED_SIZE):
  """string `[B]` image files -> `encoded`, once each item passes the checks.

  Runs in the graph before any decoding. Item `i` fails with an
  InvalidArgumentError whose message names `encoded[i]` and says what is
  wrong when it is empty; not a JPEG, PNG, GIF, BMP or WebP file (by its
  magic bytes: FF D8 FF; 89 'PNG' 0D 0A 1A 0A; 'GIF87a' / 'GIF89a'; 'BM';
  'RIFF' .... 'WEBP'); truncated (a JPEG not ending with FF D9, a PNG not
  ending with its IEND chunk, a GIF not ending with 3B, a BMP or WebP
  shorter than the size in its header); or, from its header, an empty image
  or one larger than `max_size` pixels on its longer side. The JPEG size
  comes from `tf.io.extract_jpeg_shape`, which fails without naming the
  item if the header itself is damaged.
  """
  length = tf.cast(tf.strings.length(encoded), tf.int64)

  def raw_bytes(strings, size):
    return tf.cast(tf.io.decode_raw(strings, tf.uint8, fixed_length=size),
                   tf.int64)

  # The first and last bytes, zero-padded to a fixed length however short
  # the item (the files themselves are not copied).
  first = tf.strings.substr(encoded, 0, _HEAD)
  head = raw_bytes(tf.strings.substr(
      tf.strings.join([first, b'\0' * _HEAD]), 0, _HEAD), _HEAD)
  last = tf.strings.join([b'\0' * _TAIL, tf.strings.substr(
      encoded, tf.maximum(tf.cast(length, tf.int32) - _TAIL, 0),
      tf.fill(tf.shape(encoded), _TAIL))])
  tail = raw_bytes(tf.strings.substr(
      last, tf.strings.length(last) - _TAIL,
      tf.fill(tf.shape(encoded), _TAIL)), _TAIL)

  def starts(offset, magic):
    return tf.reduce_all(head[:, offset:offset + len(magic)] == list(magic),
                         axis=1)

  def ends(magic):
    return tf.reduce_all(tail[:, _TAIL - len(magic):] == list(magic), axis=1)

  def little(offset, size):
    return sum(head[:, offset + k] * 256**k for k in range(size))

  def big(offset, size):
    return sum(head[:, offset + k] * 256**(size - 1 - k) for k in range(size))

  is_format = tf.stack([
      starts(0, b'\xff\xd8\xff'),
      starts(0, b'\x89PNG\r\n\x1a\n'),
      starts(0, b'GIF87a') | starts(0, b'GIF89a'),
      starts(0, b'BM'),
      starts(0, b'RIFF') & starts(8, b'WEBP'),
  ], axis=1)
  complete = tf.stack([
      ends(b'\xff\xd9'),
      ends(b'IEND\xaeB`\x82'),
      ends(b';'),
      (length >= 26) & (little(2, 4) <= length),
      (length >= 30) & (little(4, 4) + 8 <= length),
  ], axis=1)
  fmt = tf.argmax(tf.cast(is_format, tf.int32), axis=1, output_type=tf.int32)
  code = tf.where(
      length == 0, 1,
      tf.where(~tf.reduce_any(is_format, axis=1), 2,
               tf.where(tf.gather(complete, fmt, batch_dims=1), 0, 3 + fmt)))
  well_formed = _assert_items(
      code == 0,
      lambda i: tf.strings.join(['encoded[', _text(i), ']',
                                 tf.gather(_REASONS, code[i])]))
  with tf.control_dependencies([well_formed]):
    checked = tf.identity(encoded)

  def jpeg_size(item):
    data, is_jpeg = item
    return tf.cond(
        is_jpeg,
        lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64),
        lambda: tf.zeros([2], tf.int64))

  jpeg = tf.map_fn(jpeg_size, (checked, tf.equal(fmt, _JPEG)),
                   fn_output_signature=tf.TensorSpec([2], tf.int64))

  def signed(value):
    return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

  chunk = head[:, 12:16]
  vp8 = tf.reduce_all(chunk == list(b'VP8 '), axis=1)
  vp8l = tf.reduce_all(chunk == list(b'VP8L'), axis=1)
  vp8x = tf.reduce_all(chunk == list(b'VP8X'), axis=1)
  webp_height = tf.where(
      vp8, little(28, 2) % 2**14,
      tf.where(vp8l, 1 + head[:, 22] // 64 + head[:, 23] * 4
               + head[:, 24] % 16 * 1024,
               tf.where(vp8x, 1 + little(27, 3), 0)))
  webp_width = tf.where(
      vp8, little(26, 2) % 2**14,
      tf.where(vp8l, 1 + head[:, 21] + head[:, 22] % 64 * 256,
               tf.where(vp8x, 1 + little(24, 3), 0)))
  sizes = tf.stack([
      tf.stack([jpeg[:, 0], jpeg[:, 1]], axis=1),
      tf.stack([big(20, 4), big(16, 4)], axis=1),
      tf.stack([little(8, 2), little(6, 2)], axis=1),
      tf.stack([signed(little(22, 4)), signed(little(18, 4))], axis=1),
      tf.stack([webp_height, webp_width], axis=1),
  ], axis=1)
  size = tf.gather(sizes, fmt, batch_dims=1)
  height, width = size[:, 0], size[:, 1]

  def size_message(i):
    described = tf.strings.join([
        'encoded[', _text(i), ']: the ', tf.gather(_FORMATS, fmt[i]),
        ' header gives ', _text(height[i]), 'x', _text(width[i]),
        ' pixels (height x width)'])
    return tf.where(
        tf.minimum(height[i], width[i]) < 1,
        tf.strings.join([described, ': the file is corrupt.']),
        tf.strings.join([
            described, f', more than this export serves ({max_size} pixels '
            'on the longer side, max_encoded_size). Resize it to at most '
            f'{max_size} pixels on the longer side, or re-export with a '
            'larger --max_encoded_size.']))

  fits = _assert_items(
      (tf.maximum(height, width) <= max_size)
      & (tf.minimum(height, width) >= 1), size_message)
  with tf.control_dependencies([fits]):
    return tf.identity(checked)


def float32_outputs(outputs):
  """`outputs` with every floating tensor cast to float32 (a mixed-precision
  model's 16-bit values included); integer outputs are left as they are."""
  return {key: tf.cast(value, tf.float32) if value.dtype.is_floating
          else value for key, value in outputs.items()}


def first_block_size(model, height, width):
  """(height, width) of a ResNet's first block on `height` x `width` images.

  The resolution of the ponder maps of an ACT/SACT model of the same layout:
  the ImageNet stem halves the size twice (7x7 conv and max pool, stride 2,
  'same'-sized), the CIFAR stem keeps it, then the block's first unit
  applies its stride.
  """
  strides = [2, 2] if model.family == 'imagenet' else []
  strides.append(model.blocks[0].units[0].stride)
  for stride in strides:
    height = common_layers.same_size(height, stride)
    width = common_layers.same_size(width, stride)
  return height, width


class ServingFunctions:
  """The serving computations of a `sact_tf.models.ResNet`."""

  def __init__(self, model, image_size=224, crop_fraction=0.875,
               preprocessing='inception', max_image_size=MAX_IMAGE_SIZE,
               max_encoded_size=MAX_ENCODED_SIZE):
    self.model = model
    self.preprocessing = inference.validate_preprocessing(preprocessing)
    self.image_size = int(image_size)
    self.crop_fraction = float(crop_fraction)
    self.max_image_size = validate_size_limit(max_image_size,
                                              'max_image_size')
    self.max_encoded_size = validate_size_limit(max_encoded_size,
                                                'max_encoded_size')
    # One graph of the model for the three signatures: each calls this
    # function on float images, so the model is traced (and saved) once.
    self._model_outputs = tf.function(
        self._outputs,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

  def _outputs(self, images):
    tf.debugging.assert_positive(
        tf.shape(images)[0], message='Empty batch: send at least one image.')
    out = self.model(images, training=False)
    probabilities = tf.nn.softmax(tf.cast(out['logits'], tf.float32))
    top_scores, top_classes = tf.math.top_k(
        probabilities, k=min(TOP_K, self.model.num_classes))
    if self.model.model_type == 'resnet':
      ponder = self._plain_ponder(images)
    else:
      first = viz.block_ponder_maps(out)[0]
      ponder = {
          'ponder_cost': out['ponder_cost'],
          'ponder_map': viz.total_ponder_map(out, tf.shape(first)[1:3]),
          'ponder_map_resized': viz.total_ponder_map(out,
                                                     tf.shape(images)[1:3]),
      }
    outputs = {
        'probabilities': probabilities,
        'top_classes': top_classes,
        'top_scores': top_scores,
        'flops': out['flops'],
        **ponder,
    }
    return float32_outputs(outputs)

  def _plain_ponder(self, images):
    """The ponder outputs of a plain ResNet: L + 1 per block, everywhere."""
    value = viz.max_ponder_value(self.model.units_per_block)
    shape = tf.shape(images)
    batch = shape[0]
    return {
        'ponder_cost': tf.fill([batch], value),
        'ponder_map': tf.fill(
            tf.stack([batch, *first_block_size(self.model, shape[1],
                                               shape[2])]), value),
        'ponder_map_resized': tf.fill(shape[:3], value),
    }

  def serve_images(self, images):
    """uint8 `[B, H, W, 3]` -> outputs, at the images' own resolution."""
    # The signature leaves the channels open so that a wrong count reaches
    # the check (and its message) instead of failing deep inside a conv.
    images = check_uint8_images(images, self.max_image_size)
    return self._model_outputs(inference.normalize(images,
                                                   self.preprocessing))

  def serve_float(self, images):
    """float32 `[B, H, W, 3]` in [0, 1] -> `serve_images(images * 255)`."""
    images = check_float_images(images, self.max_image_size)
    return self._model_outputs(inference.normalize(images * 255.0,
                                                   self.preprocessing))

  def serve_encoded(self, encoded):
    """string `[B]` image files -> outputs, with the eval preprocessing."""
    encoded = check_encoded(encoded, self.max_encoded_size)

    def decode(data):
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
      image.set_shape([None, None, 3])
      return eval_preprocess(image, self.image_size, self.preprocessing,
                             self.crop_fraction)
    images = tf.map_fn(
        decode, encoded,
        fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))
    return self._model_outputs(images)


def describe(model):
  """A one-line description of a classifier, for the export's marker."""
  return (f'{model.model_type} {getattr(model, "family", "")} ResNet (units '
          f'{list(model.units_per_block)}, {model.num_classes} classes)'
          ).replace('  ', ' ')


def precision_of(model):
  """`model`'s Keras dtype policy by name: 'float32', 'mixed_bfloat16'..."""
  policy = getattr(model, 'dtype_policy', None)
  return getattr(policy, 'name', None) or 'float32'


def export_saved_model(model, export_dir, image_size=224,
                       preprocessing='inception',
                       max_image_size=MAX_IMAGE_SIZE,
                       max_encoded_size=MAX_ENCODED_SIZE, overwrite=False,
                       run_dir=None, checkpoint=None, description=None):
  """Writes a serving SavedModel of `model` to `export_dir` atomically.

  Args:
    model: a built `sact_tf.models.ResNet`, plain, ACT or SACT, of any
      precision (dtype policy); the outputs are float32 either way.
    export_dir: the folder to write (exactly there; see `export_versioned`
      for TF Serving's `BASE/<version>/` layout); see `check_export_dir` for
      which existing folders are replaced. A local path or a `tf.io.gfile`
      URL (`gs://`, `ram://`).
    image_size: the resolution `serve_encoded` resizes to.
    preprocessing: 'inception' or 'cifar', the recipe the model was trained
      with.
    max_image_size: the longest side, in pixels, of the images
      `serving_default` and `serve_float` accept.
    max_encoded_size: the same for `serve_encoded` (read from the headers).
    overwrite: replace a non-empty `export_dir` that is not an earlier
      export of `run_dir` (never a run directory).
    run_dir: the run directory the model comes from, recorded in the marker
      (an export of the same run is replaced without `overwrite`) and never
      written over.
    checkpoint: the checkpoint prefix the weights come from (recorded).
    description: the model, in words (recorded; default: `describe`).

  Uses Keras' `ExportArchive`, whose variable tracking also lets the TF1
  loaders (`saved_model_cli`, TF Serving) restore the weights. Returns
  `export_dir`.

  Raises:
    ValueError: a bad limit, or an `export_dir` that is or holds a run
      directory.
    ExportDirError (a FileExistsError): `export_dir` is a file, or a
      non-empty folder that needs `overwrite=True`.
  """
  # Refused folders fail before the slow tracing.
  check_export_dir(export_dir, run_dir, checkpoint, overwrite)
  functions = ServingFunctions(model, image_size=image_size,
                               preprocessing=preprocessing,
                               max_image_size=max_image_size,
                               max_encoded_size=max_encoded_size)
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(
      'serving_default', functions.serve_images,
      input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                     name='images')])
  archive.add_endpoint(
      'serve_float', functions.serve_float,
      input_signature=[tf.TensorSpec([None, None, None, None], tf.float32,
                                     name='images')])
  archive.add_endpoint(
      'serve_encoded', functions.serve_encoded,
      input_signature=[tf.TensorSpec([None], tf.string, name='encoded')])
  details = {
      'signatures': ['serving_default', 'serve_float', 'serve_encoded'],
      'image_size': functions.image_size,
      'preprocessing': functions.preprocessing,
      'max_image_size': functions.max_image_size,
      'max_encoded_size': functions.max_encoded_size,
      'precision': precision_of(model),
  }
  return write_archive(archive, export_dir, overwrite=overwrite,
                       run_dir=run_dir, checkpoint=checkpoint,
                       description=description or describe(model),
                       details=details)


# Versions: TF Serving's BASE/<version>/ layout.


def validate_version(version):
  """`version` as an int >= 0 (a version folder's name), or a ValueError."""
  if not architectures.is_int(version) or version < 0:
    raise ValueError(f'The export version must be a non-negative integer '
                     f'(the name of its folder in --export_dir), got '
                     f'{version!r}.')
  return int(version)


def version_dir(base, version):
  """The folder of export `version` in `base`: `base/<version>`."""
  return os.path.join(base, str(validate_version(version)))


_NUMBERED = re.compile(r'-(\d+)$')


def checkpoint_step(prefix):
  """The global step of checkpoint `prefix`: the default export version.

  Read from the checkpoint's `step` variable (what training and
  `checkpointing.write_model_checkpoint` save), else from the number ending
  the prefix (`ckpt-N`, `model.ckpt-N`).

  Raises:
    ValueError: neither tells the step (pass a version instead).
  """
  try:
    step = checkpointing.saved_step(prefix)
  except (tf.errors.OpError, ValueError):
    step = None
  if step is not None and step >= 0:
    return step
  match = _NUMBERED.search(prefix.rstrip('/'))
  if match:
    return int(match.group(1))
  raise ValueError(f'Cannot tell the global step of checkpoint {prefix} (it '
                   'has no step variable and its name does not end with '
                   '-<step>): pass --version=N to name the export version.')


def check_export_base(base, run_dir=None, checkpoint=None):
  """Raises unless `base` may hold versioned exports (`BASE/<version>/`).

  `base` may be new, or a folder holding earlier versions and anything
  else but a run: it must not be, or contain, the run directory, the
  checkpoint's folder, the current directory or the home folder, nor look
  like a run directory (`config.json`, `checkpoint`, `ckpt-*` or TensorBoard
  files anywhere in it), whatever `overwrite` says.

  Raises:
    ValueError: `base` is or holds a run directory (or one of the folders
      above).
    ExportDirError (a FileExistsError and ValueError): `base` is a file, or
      holds a SavedModel itself (an export written before versions, or
      another tool's): TF Serving would not see the versions next to it.
  """
  _check_protected(base, run_dir, checkpoint)
  target = _canonical(base)
  if not tf.io.gfile.exists(target):
    return
  if not tf.io.gfile.isdir(target):
    raise ExportDirError(
        f'--export_dir={base} is a file, not a folder: choose a new folder, '
        'or one holding earlier exports, for the SavedModels (they are '
        'written to <export_dir>/<version>/).')
  _check_not_a_run(base, target, run_dir)
  if 'saved_model.pb' in _listdir(target):
    raise ExportDirError(
        f'--export_dir={base} holds a SavedModel itself '
        f'({os.path.join(target, "saved_model.pb")}), e.g. an export '
        'written before exports went to numbered version folders: exports '
        'are written to <export_dir>/<version>/, the layout TF Serving '
        f'reads. Move that model into a version folder (e.g. '
        f'{version_dir(base, 1)}) or choose another --export_dir.')


def check_version_dir(base, version, run_dir=None, checkpoint=None,
                      overwrite=False):
  """What exporting `version` into `base` would do, or why it must not.

  `check_export_base` for `base`, then `check_export_dir`'s rules for the
  version folder `base/<version>`: new, empty, an earlier export of
  `run_dir` (replaced) or, with `overwrite`, anything else but a run. Other
  versions in `base` are not looked at.

  Returns:
    `(version folder, action)`, action as `check_export_dir`'s.

  Raises:
    as `check_export_base` and `check_export_dir`.
  """
  check_export_base(base, run_dir, checkpoint)
  path = version_dir(base, version)
  return path, _check_folder(
      path, f'Version {int(version)} of --export_dir={base} ({path})',
      'choose another version (--version=N)', run_dir, checkpoint,
      overwrite)


def export_versioned(model, base, version, overwrite=False, run_dir=None,
                     checkpoint=None, **kwargs):
  """`export_saved_model` into `base/<version>/` (TF Serving's layout).

  `base` is checked with `check_export_base`, the version folder with
  `check_export_dir` (an earlier export of `run_dir` there is replaced, any
  other non-empty folder only with `overwrite`); other versions in `base`
  are left alone. `kwargs` are `export_saved_model`'s (image_size,
  preprocessing, limits, description). Returns the version folder.
  """
  path, _ = check_version_dir(base, version, run_dir, checkpoint, overwrite)
  return export_saved_model(model, path, overwrite=overwrite,
                            run_dir=run_dir, checkpoint=checkpoint, **kwargs)


# The export folder: what may be replaced, and the atomic write.

def _canonical(path):
  """`path` as compared and written: a local path absolute, with its links
  resolved; a URL (`gs://`, `ram://`) without trailing slashes."""
  if fileio.is_remote(path):
    return fileio.scheme(path) + '://' + path.split('://', 1)[1].rstrip('/')
  return fileio.real(path)


def _listdir(folder):
  # Object stores list sub-folders with a trailing slash.
  return sorted(name.rstrip('/') for name in tf.io.gfile.listdir(folder))


def read_marker(export_dir):
  """The `sact_export.json` of `export_dir` as a dict, or None."""
  try:
    with tf.io.gfile.GFile(os.path.join(export_dir, MARKER_FILENAME),
                           'rb') as f:
      marker = json.loads(f.read())
  except (tf.errors.OpError, OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) else None


def _run_file(folder):
  """A file in `folder` (or below) that only run directories hold, or None."""
  for path, _, names in tf.io.gfile.walk(folder):
    for name in sorted(n.rstrip('/') for n in names):
      if (name in ('config.json', 'checkpoint') or name.startswith('ckpt-')
          or '.ckpt' in name or name.startswith('events.out.tfevents')):
        return os.path.join(path, name)
  return None


def _contains(folder, path):
  """Whether `path` is `folder` or inside it (both canonical)."""
  if fileio.is_remote(folder) != fileio.is_remote(path):
    return False
  if fileio.is_remote(folder):
    return path == folder or path.startswith(folder.rstrip('/') + '/')
  return os.path.commonpath([folder, path]) == folder


def _suggestion(run_dir):
  return (f' (e.g. {fileio.absolute(run_dir).rstrip("/")}_serving)' if run_dir
          else '')


def _check_protected(export_dir, run_dir, checkpoint):
  """Raises ValueError if `export_dir` is or contains a protected folder."""
  target = _canonical(export_dir)
  protected = []
  if run_dir:
    protected.append(('the run directory', run_dir))
  if checkpoint:
    protected.append(('the folder of the checkpoint',
                      checkpoint if tf.io.gfile.isdir(checkpoint)
                      else fileio.dirname(_canonical(checkpoint))))
  protected += [('the current directory', os.getcwd()),
                ('your home folder', os.path.expanduser('~'))]
  for what, path in protected:
    if _contains(target, _canonical(path)):
      verb = 'is' if _canonical(path) == target else 'contains'
      raise ValueError(
          f'--export_dir={export_dir} {verb} {what} ({path}), which an '
          'export never replaces, even with --overwrite: choose a new '
          f'folder for the SavedModel{_suggestion(run_dir)}.')


def _check_not_a_run(name, target, run_dir):
  run_file = _run_file(target)
  if run_file:
    raise ValueError(
        f'--export_dir={name} looks like a run directory (it holds '
        f'{run_file}, a config, checkpoint or TensorBoard file), which an '
        'export never replaces, even with --overwrite: choose a new folder '
        f'for the SavedModel{_suggestion(run_dir)}.')


def check_export_dir(export_dir, run_dir=None, checkpoint=None,
                     overwrite=False):
  """What writing an export to `export_dir` would do, or why it must not.

  Returns 'new' (no such folder), 'empty' (an empty folder), 'same_run' (an
  earlier export of `run_dir`, holding nothing else: replaced) or
  'overwrite' (another non-empty folder, replaced as `overwrite` asks).

  Raises:
    ValueError: `export_dir` is, or contains, the run directory, the
      checkpoint's folder, the current directory or the home folder, or it
      looks like a run directory (holds `config.json`, `checkpoint`,
      `ckpt-*` or TensorBoard event files): never replaced, even with
      `overwrite`.
    ExportDirError (a FileExistsError and ValueError): `export_dir` is a
      file, or a non-empty folder that is not an export of `run_dir`, and
      `overwrite` is False.
  """
  return _check_folder(export_dir, f'--export_dir={export_dir}',
                       'choose a new folder', run_dir, checkpoint, overwrite)


def _check_folder(export_dir, label, alternative, run_dir, checkpoint,
                  overwrite):
  """`check_export_dir`, naming the folder `label` in the messages, which
  offer `alternative` to --overwrite."""
  _check_protected(export_dir, run_dir, checkpoint)
  target = _canonical(export_dir)
  if not tf.io.gfile.exists(target):
    return 'new'
  if not tf.io.gfile.isdir(target):
    raise ExportDirError(f'{label} is a file, not a folder: {alternative} '
                         'for the SavedModel.')
  entries = _listdir(target)
  if not entries:
    return 'empty'
  _check_not_a_run(export_dir, target, run_dir)
  marker = read_marker(target)
  extra = [e for e in entries if e not in EXPORT_ENTRIES]
  if (marker is not None and not extra and run_dir
      and marker.get('run_dir') == _canonical(run_dir)):
    return 'same_run'
  if overwrite:
    return 'overwrite'
  if marker is None:
    what = 'is not empty and is not an export of this run'
    if 'saved_model.pb' in entries:
      what += f' (it holds a SavedModel without {MARKER_FILENAME})'
  elif extra:
    what = ('holds files an export does not write '
            f'({", ".join(extra[:5])})')
  elif not run_dir:
    what = 'holds an export, and this export names no run to match it with'
  else:
    what = f'holds an export of another run ({marker.get("run_dir")})'
  raise ExportDirError(
      f'{label} {what}: {alternative} or pass --overwrite to replace it '
      '(overwrite=True in Python).')


def _unique(parent, prefix):
  """A new name in `parent` for a temporary folder (`.export-*`)."""
  return os.path.join(parent, f'{prefix}{uuid.uuid4().hex[:12]}')


def renames_folders(parent):
  """Whether `tf.io.gfile.rename` moves a folder with its contents in
  `parent`.

  Local folders do. For a URL, a small `.export-probe-*` folder holding one
  file is renamed and deleted: False when the rename raises
  `tf.errors.UnimplementedError` (some object stores) or leaves the file
  behind (TensorFlow's `ram://` renames the folder's entry only).
  """
  if not fileio.is_remote(parent):
    return True
  probe = _unique(parent, '.export-probe-')
  before = os.path.join(probe, 'a', 'file')
  after = os.path.join(probe, 'b', 'file')
  try:
    tf.io.gfile.makedirs(os.path.dirname(before))
    with tf.io.gfile.GFile(before, 'wb') as f:
      f.write(b'probe')
    tf.io.gfile.rename(os.path.dirname(before), os.path.dirname(after))
    return tf.io.gfile.exists(after) and not tf.io.gfile.exists(before)
  except tf.errors.UnimplementedError:
    return False
  finally:
    # File by file: where the rename moved the entry only, the file is not
    # below any folder rmtree lists.
    for path in (before, after):
      try:
        if tf.io.gfile.exists(path):
          tf.io.gfile.remove(path)
      except tf.errors.OpError:
        pass
    try:
      tf.io.gfile.rmtree(probe)
    except tf.errors.OpError:
      pass


def _swap_in(new, target):
  """Moves folder `new` to `target`, replacing a folder there atomically."""
  if not tf.io.gfile.exists(target):
    tf.io.gfile.rename(new, target)
    return
  old = _unique(fileio.dirname(target), '.export-old-')
  tf.io.gfile.rename(target, old)
  try:
    tf.io.gfile.rename(new, target)
  except BaseException:
    tf.io.gfile.rename(old, target)
    raise
  try:
    tf.io.gfile.rmtree(old)
  except tf.errors.OpError as e:
    logging.warning('Could not delete the replaced export, now in %s: %s',
                    old, e)


def _write_marker(folder, marker):
  with tf.io.gfile.GFile(os.path.join(folder, MARKER_FILENAME), 'wb') as f:
    f.write((json.dumps(marker, indent=2, sort_keys=True) + '\n').encode())


def write_archive(archive, export_dir, overwrite=False, run_dir=None,
                  checkpoint=None, description=None, details=None):
  """Writes a `keras.export.ExportArchive` to `export_dir` atomically.

  `check_export_dir` decides whether an existing `export_dir` may be
  replaced (it raises otherwise). The SavedModel and its marker,
  `sact_export.json` (`run_dir`'s absolute path, `checkpoint`,
  `description`, the creation time and the entries of `details`), go to a
  temporary folder next to `export_dir` (`.export-*`), which is then
  swapped in: an interrupted export leaves no half-written model and keeps
  the old one.

  Where the filesystem cannot rename folders (`renames_folders`: e.g.
  `tf.io.gfile.rename` raises `tf.errors.UnimplementedError`), the archive
  is written in place instead, with a logged warning: a folder it replaces
  is deleted first, and the marker is written last, so an interrupted
  export leaves a folder without it (replaced next time only with
  `overwrite`). Returns `export_dir`.
  """
  check_export_dir(export_dir, run_dir, checkpoint, overwrite)
  marker = dict(details or {})
  marker.update(
      format='sact_export', version=1,
      run_dir=_canonical(run_dir) if run_dir else None,
      checkpoint=fileio.absolute(checkpoint) if checkpoint else None,
      model=description,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'))
  target = _canonical(export_dir)
  parent = fileio.dirname(target)
  tf.io.gfile.makedirs(parent)
  if not renames_folders(parent):
    logging.warning(
        'The filesystem of %s cannot rename folders: writing the export in '
        'place (an interrupted export leaves a partial folder there, '
        'without %s).', export_dir, MARKER_FILENAME)
    _log_action(check_export_dir(export_dir, run_dir, checkpoint, overwrite),
                export_dir, run_dir)
    if tf.io.gfile.exists(target):
      tf.io.gfile.rmtree(target)
    archive.write_out(target, verbose=False)
    _write_marker(target, marker)
    return export_dir
  tmp = _unique(parent, '.export-')
  try:
    archive.write_out(tmp, verbose=False)
    _write_marker(tmp, marker)
    # Checked again: the folder may have changed while the model was
    # written.
    _log_action(check_export_dir(export_dir, run_dir, checkpoint, overwrite),
                export_dir, run_dir)
    _swap_in(tmp, target)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
  return export_dir


def _log_action(action, export_dir, run_dir):
  if action == 'same_run':
    logging.info('Replacing the earlier export of %s in %s.', run_dir,
                 export_dir)
  elif action == 'overwrite':
    logging.warning('Replacing %s (overwrite).', export_dir)
