"""SavedModel export of ACT/SACT classifiers for serving.

`export_saved_model(model, export_dir)` writes a SavedModel with two
signatures:

* `serving_default` (`serve_images`): `images`, uint8 `[B, H, W, 3]`, any H
  and W; the model runs fully convolutionally at that resolution.
* `serve_encoded`: `encoded`, string `[B]` of JPEG or PNG bytes; each image
  gets the evaluation preprocessing of its recipe (inception: central crop,
  resize to `image_size` x `image_size`; cifar: resize).

Pixels are normalised as in training (`sact_tf.inference.normalize`): to
[-1, 1] for the inception recipe, per-image standardisation for cifar.

Both return `probabilities` `[B, classes]`, `top_classes` / `top_scores`
`[B, 5]`, `flops` int64 `[B]`, `ponder_cost` `[B]`, `ponder_map` `[B, h, w]`
(summed over blocks at the first block's resolution) and
`ponder_map_resized` `[B, H, W]` (the same, nearest-upsampled to the input).
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from sact_tf import fileio
from sact_tf import inference
from sact_tf import viz

TOP_K = 5


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


class ServingFunctions:
  """The serving computations of a `sact_tf.models.ResNet`."""

  def __init__(self, model, image_size=224, crop_fraction=0.875,
               preprocessing='inception'):
    if model.model_type == 'resnet':
      raise ValueError('Serving exports ponder maps: export an ACT or SACT '
                       "model, not model_type='resnet'.")
    self.model = model
    self.preprocessing = inference.validate_preprocessing(preprocessing)
    self.image_size = int(image_size)
    self.crop_fraction = float(crop_fraction)

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
    # this check (and its message) instead of failing deep inside a conv.
    check = tf.debugging.assert_equal(
        tf.shape(images)[-1], 3,
        message='images must be RGB: shape [batch, height, width, 3].')
    with tf.control_dependencies([check]):
      images = tf.ensure_shape(tf.identity(images), [None, None, None, 3])
    return self._outputs(inference.normalize(images, self.preprocessing))

  def serve_encoded(self, encoded):
    """string `[B]` JPEG/PNG -> outputs, with the eval preprocessing."""
    def decode(data):
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
      image.set_shape([None, None, 3])
      return eval_preprocess(image, self.image_size, self.preprocessing,
                             self.crop_fraction)
    images = tf.map_fn(
        decode, encoded,
        fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))
    return self._outputs(images)


def export_saved_model(model, export_dir, image_size=224,
                       preprocessing='inception'):
  """Writes a serving SavedModel of `model` to `export_dir` atomically.

  `image_size` is the resolution `serve_encoded` resizes to; `preprocessing`
  ('inception' or 'cifar') the recipe the model was trained with.

  Uses Keras' `ExportArchive`, whose variable tracking also lets the TF1
  loaders (`saved_model_cli`, TF Serving) restore the weights. The model is
  written to a temporary folder next to `export_dir` and moved into place, so
  an interrupted export leaves no half-written model; an existing
  `export_dir` is replaced.
  """
  functions = ServingFunctions(model, image_size=image_size,
                               preprocessing=preprocessing)
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(
      'serving_default', functions.serve_images,
      input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                     name='images')])
  archive.add_endpoint(
      'serve_encoded', functions.serve_encoded,
      input_signature=[tf.TensorSpec([None], tf.string, name='encoded')])
  return write_archive(archive, export_dir)


def write_archive(archive, export_dir):
  """Writes a `keras.export.ExportArchive` to `export_dir` atomically.

  The SavedModel goes to a temporary folder next to `export_dir` and is
  moved into place, so an interrupted export leaves no half-written model;
  an existing `export_dir` is replaced. Returns `export_dir`.
  """
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.export-')
  try:
    archive.write_out(tmp, verbose=False)
    if os.path.exists(export_dir):
      shutil.rmtree(export_dir)
    fileio.publish(tmp, export_dir, directory=True)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return export_dir
