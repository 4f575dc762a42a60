"""SavedModel export of a detector for serving.

`export_saved_model(model, export_dir)` writes a SavedModel with two
signatures:

* `serving_default`: `images`, uint8 `[B, H, W, 3]` pixels in [0, 255] (any
  H and W; B images of one size).
* `serve_float`: `images`, float32 `[B, H, W, 3]` pixels in [0, 1]; the same
  computation on `images * 255`.

Both resize the images keeping the aspect ratio (short side `min_size`
unless the long side would exceed `max_size`) and return:

  detection_boxes: `[B, D, 4]` `[ymin, xmin, ymax, xmax]` normalised to the
    input image, D = max_detections, zero-padded after num_detections.
  detection_classes: int32 `[B, D]`, 0-based dataset labels.
  detection_scores: `[B, D]`.
  num_detections: int32 `[B]`.
  flops: int64 `[B]`, the feature extractor's FLOPs.
  ponder_map: `[B, H, W]`, the feature extractor's ponder cost summed over
    its blocks, nearest-upsampled to the input image (a plain ResNet's is
    the constant sum of L + 1 over its blocks).

Every float output is float32 whatever the detector's precision (a model
built under a `mixed_bfloat16` / `mixed_float16` Keras policy computes in 16
bits; its outputs are cast at the end).

Requests are checked in the graph as `sact_tf.export` checks its pixel
signatures: RGB; at most `max_image_size` pixels on the longer side
(default `MAX_IMAGE_SIZE`, 8192: the detector works on the resized image,
but the input and the ponder map stay at full size); `serving_default`
refuses an image with no pixel above 1 (a float [0, 1] image cast to uint8)
and points at `serve_float`, which refuses values outside [0, 1].

The archive is written like `sact_tf.export`'s (`write_archive`): Keras'
`ExportArchive`, into a temporary folder that is swapped in, with the
`sact_export.json` marker; an existing `export_dir` is replaced only if it
is an earlier export of the same `run_dir` or `overwrite` is set, and a run
directory never is. `check_export_dir` tells beforehand whether
`export_saved_model` will accept a folder. `export_versioned` writes to
`BASE/<version>/`, TF Serving's layout (what `experiments.coco
--export_dir=BASE` does, the version being the checkpoint's step), with the
folder rules applied to the version folder (`check_version_dir`; BASE
itself is checked by `check_export_base`). Files go through `tf.io.gfile`
(local paths, `gs://`, `ram://`).
"""

import keras
import tensorflow as tf

from sact_tf import export as classification_export
from sact_tf.detection import data
from sact_tf.detection import evaluation

MAX_IMAGE_SIZE = 8192
# Binaries call it before training or loading, so that a refused
# --export_dir fails at once.
check_export_dir = classification_export.check_export_dir
check_export_base = classification_export.check_export_base
check_version_dir = classification_export.check_version_dir
checkpoint_step = classification_export.checkpoint_step
version_dir = classification_export.version_dir


class DetectionServing:
  """The serving computations of a `FasterRCNN`."""

  def __init__(self, model, min_size=600, max_size=1024,
               max_image_size=MAX_IMAGE_SIZE):
    self.model = model
    self.min_size = int(min_size)
    self.max_size = int(max_size)
    self.max_image_size = classification_export.validate_size_limit(
        max_image_size, 'max_image_size')

  def _detect(self, images, pixels):
    """`[B, H, W, 3]` checked images, `pixels` float in [0, 255] -> outputs."""
    tf.debugging.assert_positive(tf.shape(images)[0],
                                 message='Empty batch: send an image.')
    shape = tf.shape(images)
    size = data.resized_size(shape[1], shape[2], self.min_size,
                             self.max_size)
    resized = tf.image.resize(pixels, size)
    out = self.model(resized / 127.5 - 1.0, training=False)
    return classification_export.float32_outputs({
        'detection_boxes': out['detection_boxes'],
        'detection_classes': out['detection_classes'],
        'detection_scores': out['detection_scores'],
        'num_detections': out['num_detections'],
        'flops': out['flops'],
        'ponder_map': evaluation.total_ponder_map(self.model, out,
                                                  shape[1:3]),
    })

  def serve(self, images):
    """uint8 `[B, H, W, 3]` -> the outputs listed in the module doc."""
    images = classification_export.check_uint8_images(images,
                                                      self.max_image_size)
    return self._detect(images, tf.cast(images, tf.float32))

  def serve_float(self, images):
    """float32 `[B, H, W, 3]` in [0, 1] -> `serve(images * 255)`."""
    images = classification_export.check_float_images(images,
                                                      self.max_image_size)
    return self._detect(images, images * 255.0)


def describe(model):
  """A one-line description of a detector, for the export's marker."""
  c = model.config
  return (f'{c.model_type} Faster R-CNN (units {list(c.units)}, '
          f'{c.num_classes} classes)')


def export_saved_model(model, export_dir, min_size=600, max_size=1024,
                       max_image_size=MAX_IMAGE_SIZE, overwrite=False,
                       run_dir=None, checkpoint=None, description=None):
  """Writes a serving SavedModel of a built `FasterRCNN` atomically.

  The outputs are float32 whatever the model's dtype policy (cast at the end
  of the serving functions).

  `min_size` / `max_size` are the resizing of the module doc,
  `max_image_size` the longest input side accepted. `overwrite`, `run_dir`,
  `checkpoint` and `description` are those of
  `sact_tf.export.export_saved_model`: an existing `export_dir` is replaced
  only if it is empty, an earlier export of `run_dir`, or `overwrite` is
  set, and never if it is or holds a run directory. An interrupted export
  leaves no half-written model. Returns `export_dir`.

  Raises:
    ValueError: a bad limit, or an `export_dir` that is or holds a run
      directory.
    sact_tf.export.ExportDirError (a FileExistsError): `export_dir` is a
      file, or a non-empty folder that needs `overwrite=True`.
  """
  # Refused folders fail before the slow tracing.
  classification_export.check_export_dir(export_dir, run_dir, checkpoint,
                                         overwrite)
  serving = DetectionServing(model, min_size, max_size, max_image_size)
  archive = keras.export.ExportArchive()
  archive.track(model)
  # The channels stay open in the signatures so that a wrong count reaches
  # the check (and its message) instead of failing inside a conv.
  archive.add_endpoint(
      'serving_default', serving.serve,
      input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                     name='images')])
  archive.add_endpoint(
      'serve_float', serving.serve_float,
      input_signature=[tf.TensorSpec([None, None, None, None], tf.float32,
                                     name='images')])
  details = {
      'signatures': ['serving_default', 'serve_float'],
      'min_size': serving.min_size,
      'max_size': serving.max_size,
      'max_image_size': serving.max_image_size,
      'precision': classification_export.precision_of(model),
  }
  return classification_export.write_archive(
      archive, export_dir, overwrite=overwrite, run_dir=run_dir,
      checkpoint=checkpoint, description=description or describe(model),
      details=details)


def export_versioned(model, base, version, overwrite=False, run_dir=None,
                     checkpoint=None, **kwargs):
  """`export_saved_model` into `base/<version>/` (TF Serving's layout).

  `base` must pass `check_export_base` (not a file, a run directory or a
  folder holding one); the version folder is replaced only if it is empty,
  an earlier export of `run_dir`, or `overwrite` is set. Other versions in
  `base` are left alone. `kwargs` are `export_saved_model`'s (min_size,
  max_size, max_image_size, description). Returns the version folder.
  """
  path, _ = check_version_dir(base, version, run_dir, checkpoint, overwrite)
  return export_saved_model(model, path, overwrite=overwrite,
                            run_dir=run_dir, checkpoint=checkpoint, **kwargs)
