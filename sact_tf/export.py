"""SavedModel export of ACT/SACT classifiers for serving.

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

The export folder (`check_export_dir`, `write_archive`): an export is
written to a temporary folder next to `export_dir` and swapped in (the old
folder renamed aside, the new one renamed in, the old one deleted), so an
interrupted export never leaves a half-written model nor loses the old one.
Every export holds a marker, `sact_export.json` next to `saved_model.pb`,
naming its source run directory, checkpoint and model, and the limits
above. `export_dir` may be new, empty, or an earlier export of the same run
(replaced). Anything else non-empty is replaced only with `overwrite=True`
(the binaries' `--overwrite`); the run directory, a folder containing it,
and anything that looks like a run directory (holds `config.json`,
`checkpoint`, `ckpt-*` or TensorBoard event files) never are.
"""

import datetime
import json
import os
import shutil
import tempfile

from absl import logging
import keras
import tensorflow as tf

from sact_tf import fileio
from sact_tf import inference
from sact_tf import viz

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


class ServingFunctions:
  """The serving computations of a `sact_tf.models.ResNet`."""

  def __init__(self, model, image_size=224, crop_fraction=0.875,
               preprocessing='inception', max_image_size=MAX_IMAGE_SIZE,
               max_encoded_size=MAX_ENCODED_SIZE):
    if model.model_type == 'resnet':
      raise ValueError('Serving exports ponder maps: export an ACT or SACT '
                       "model, not model_type='resnet'.")
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
    probabilities = tf.nn.softmax(out['logits'])
    top_scores, top_classes = tf.math.top_k(
        probabilities, k=min(TOP_K, self.model.num_classes))
    first = viz.block_ponder_maps(out)[0]
    return {
        'probabilities': probabilities,
        'top_classes': top_classes,
        'top_scores': top_scores,
        'flops': out['flops'],
        'ponder_cost': out['ponder_cost'],
        'ponder_map': viz.total_ponder_map(out, tf.shape(first)[1:3]),
        'ponder_map_resized': viz.total_ponder_map(out, tf.shape(images)[1:3]),
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


def export_saved_model(model, export_dir, image_size=224,
                       preprocessing='inception',
                       max_image_size=MAX_IMAGE_SIZE,
                       max_encoded_size=MAX_ENCODED_SIZE, overwrite=False,
                       run_dir=None, checkpoint=None, description=None):
  """Writes a serving SavedModel of `model` to `export_dir` atomically.

  Args:
    model: a built ACT or SACT `sact_tf.models.ResNet`.
    export_dir: the folder to write; see `check_export_dir` for which
      existing folders are replaced.
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
    ValueError: a plain ResNet, a bad limit, or an `export_dir` that is or
      holds a run directory.
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
  }
  return write_archive(archive, export_dir, overwrite=overwrite,
                       run_dir=run_dir, checkpoint=checkpoint,
                       description=description or describe(model),
                       details=details)


def read_marker(export_dir):
  """The `sact_export.json` of `export_dir` as a dict, or None."""
  try:
    with open(os.path.join(export_dir, MARKER_FILENAME)) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) else None


def _run_file(folder):
  """A file in `folder` (or below) that only run directories hold, or None."""
  for path, _, names in os.walk(folder):
    for name in sorted(names):
      if (name in ('config.json', 'checkpoint') or name.startswith('ckpt-')
          or '.ckpt' in name or name.startswith('events.out.tfevents')):
        return os.path.join(path, name)
  return None


def _contains(folder, path):
  """Whether `path` is `folder` or inside it (both real, absolute)."""
  return os.path.commonpath([folder, path]) == folder


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
  target = os.path.realpath(export_dir)
  protected = []
  if run_dir:
    protected.append(('the run directory', run_dir))
  if checkpoint:
    protected.append(('the folder of the checkpoint',
                      checkpoint if os.path.isdir(checkpoint)
                      else os.path.dirname(os.path.abspath(checkpoint))))
  protected += [('the current directory', os.getcwd()),
                ('your home folder', os.path.expanduser('~'))]
  suggestion = (f' (e.g. {os.path.abspath(run_dir).rstrip(os.sep)}_serving)'
                if run_dir else '')
  for what, path in protected:
    if _contains(target, os.path.realpath(path)):
      verb = 'is' if os.path.realpath(path) == target else 'contains'
      raise ValueError(
          f'--export_dir={export_dir} {verb} {what} ({path}), which an '
          'export never replaces, even with --overwrite: choose a new '
          f'folder for the SavedModel{suggestion}.')
  if not os.path.lexists(export_dir):
    return 'new'
  if not os.path.isdir(target):
    raise ExportDirError(
        f'--export_dir={export_dir} is a file, not a folder: choose a new '
        'or empty folder for the SavedModel.')
  entries = sorted(os.listdir(target))
  if not entries:
    return 'empty'
  run_file = _run_file(target)
  if run_file:
    raise ValueError(
        f'--export_dir={export_dir} looks like a run directory (it holds '
        f'{run_file}, a config, checkpoint or TensorBoard file), which an '
        'export never replaces, even with --overwrite: choose a new folder '
        f'for the SavedModel{suggestion}.')
  marker = read_marker(target)
  extra = [e for e in entries if e not in EXPORT_ENTRIES]
  if (marker is not None and not extra and run_dir
      and marker.get('run_dir') == os.path.realpath(run_dir)):
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
      f'--export_dir={export_dir} {what}: choose a new folder or pass '
      '--overwrite to replace it (overwrite=True in Python).')


def _swap_in(new, target):
  """Moves folder `new` to `target`, replacing a folder there atomically."""
  if not os.path.lexists(target):
    fileio.publish(new, target, directory=True)
    return
  old = tempfile.mkdtemp(dir=os.path.dirname(target), prefix='.export-old-')
  os.rename(target, old)  # Replaces the empty `old`.
  try:
    fileio.publish(new, target, directory=True)
  except BaseException:
    os.rename(old, target)
    raise
  try:
    shutil.rmtree(old)
  except OSError as e:
    logging.warning('Could not delete the replaced export, now in %s: %s',
                    old, e)


def write_archive(archive, export_dir, overwrite=False, run_dir=None,
                  checkpoint=None, description=None, details=None):
  """Writes a `keras.export.ExportArchive` to `export_dir` atomically.

  `check_export_dir` decides whether an existing `export_dir` may be
  replaced (it raises otherwise). The SavedModel and its marker,
  `sact_export.json` (`run_dir`'s absolute path, `checkpoint`,
  `description`, the creation time and the entries of `details`), go to a
  temporary folder next to `export_dir`, which is then swapped in: an
  interrupted export leaves no half-written model and keeps the old one.
  Returns `export_dir`.
  """
  check_export_dir(export_dir, run_dir, checkpoint, overwrite)
  marker = dict(details or {})
  marker.update(
      format='sact_export', version=1,
      run_dir=os.path.realpath(run_dir) if run_dir else None,
      checkpoint=os.path.abspath(checkpoint) if checkpoint else None,
      model=description,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'))
  target = os.path.realpath(export_dir)
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.export-')
  try:
    archive.write_out(tmp, verbose=False)
    fileio.write_bytes(
        os.path.join(tmp, MARKER_FILENAME),
        (json.dumps(marker, indent=2, sort_keys=True) + '\n').encode())
    # Checked again: the folder may have changed while the model was
    # written.
    action = check_export_dir(export_dir, run_dir, checkpoint, overwrite)
    if action == 'same_run':
      logging.info('Replacing the earlier export of %s in %s.', run_dir,
                   export_dir)
    elif action == 'overwrite':
      logging.warning('Replacing %s (overwrite).', export_dir)
    _swap_in(tmp, target)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return export_dir
