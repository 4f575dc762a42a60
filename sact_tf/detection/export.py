"""SavedModel export of a detector for serving.

`export_saved_model(model, export_dir)` writes a SavedModel whose
`serving_default` signature takes `images`, uint8 `[B, H, W, 3]` (any H and
W; B images of one size), resizes them keeping the aspect ratio (short side
`min_size` unless the long side would exceed `max_size`) and returns:

  detection_boxes: `[B, D, 4]` `[ymin, xmin, ymax, xmax]` normalised to the
    input image, D = max_detections, zero-padded after num_detections.
  detection_classes: int32 `[B, D]`, 0-based dataset labels.
  detection_scores: `[B, D]`.
  num_detections: int32 `[B]`.
  flops: int64 `[B]`, the feature extractor's FLOPs.
  ponder_map: `[B, H, W]`, the feature extractor's ponder cost summed over
    its blocks, nearest-upsampled to the input image (a plain ResNet's is
    the constant sum of L + 1 over its blocks).

The archive is written like `sact_tf.export`'s: Keras' `ExportArchive`,
into a temporary folder that is then moved into place.
"""

import keras
import tensorflow as tf

from sact_tf import export as classification_export
from sact_tf.detection import data
from sact_tf.detection import evaluation


class DetectionServing:
  """The serving computation of a `FasterRCNN`."""

  def __init__(self, model, min_size=600, max_size=1024):
    self.model = model
    self.min_size = int(min_size)
    self.max_size = int(max_size)

  def serve(self, images):
    """uint8 `[B, H, W, 3]` -> the outputs listed in the module doc."""
    checks = [
        tf.debugging.assert_equal(
            tf.shape(images)[-1], 3,
            message='images must be RGB: shape [batch, height, width, 3].'),
        tf.debugging.assert_positive(
            tf.shape(images)[0], message='Empty batch: send an image.'),
    ]
    with tf.control_dependencies(checks):
      images = tf.ensure_shape(tf.identity(images), [None, None, None, 3])
    shape = tf.shape(images)
    size = data.resized_size(shape[1], shape[2], self.min_size,
                             self.max_size)
    resized = tf.image.resize(tf.cast(images, tf.float32), size)
    out = self.model(resized / 127.5 - 1.0, training=False)
    return {
        'detection_boxes': out['detection_boxes'],
        'detection_classes': out['detection_classes'],
        'detection_scores': out['detection_scores'],
        'num_detections': out['num_detections'],
        'flops': out['flops'],
        'ponder_map': evaluation.total_ponder_map(self.model, out,
                                                  shape[1:3]),
    }


def export_saved_model(model, export_dir, min_size=600, max_size=1024):
  """Writes a serving SavedModel of a built `FasterRCNN` atomically.

  An existing `export_dir` is replaced; an interrupted export leaves no
  half-written model. Returns `export_dir`.
  """
  serving = DetectionServing(model, min_size, max_size)
  archive = keras.export.ExportArchive()
  archive.track(model)
  # The channels stay open in the signature so that a wrong count reaches
  # the check (and its message) instead of failing inside a conv.
  archive.add_endpoint(
      'serving_default', serving.serve,
      input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                     name='images')])
  return classification_export.write_archive(archive, export_dir)
