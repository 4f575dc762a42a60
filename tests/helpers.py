"""Pieces several test modules share: a tiny run's config and a mock COCO
split."""

import numpy as np
import tensorflow as tf

from sact_tf import train


def tiny_config(model_dir, **sections):
  """An `ExperimentConfig` of a tiny SACT CIFAR ResNet on (mock) cifar10
  that trains in seconds; `sections` replace any fields, by section, e.g.
  `tiny_config(d, loss=dict(tau=0.5), optimizer=dict(train_steps=2))`."""
  values = dict(
      model=dict(family='cifar', units=[1, 2, 1], model_type='sact',
                 num_classes=10, base_channels=2),
      loss=dict(tau=0.01, label_smoothing=0.0, weight_decay=1e-4),
      optimizer=dict(train_steps=4, learning_rate=0.05, lr_boundaries=[3]),
      data=dict(dataset='cifar10', data_dir='/nonexistent',
                preprocessing='cifar', image_size=32, eval_image_sizes=[32],
                batch_size=4, eval_batch_size=3),
      run=dict(model_dir=str(model_dir), checkpoint_every=2, summary_every=2))
  for section, fields in sections.items():
    values[section].update(fields)
  return train.ExperimentConfig(**values)


def coco_as_dataset(objects, image_shape):
  """A stand-in for a TFDS COCO builder's `as_dataset` (for
  `tfds.testing.mock_data(as_dataset_fn=...)`): example i has the objects
  `objects[i]` = (boxes, labels, is_crowd) and random uint8 pixels of shape
  `image_shape(i)`, encoded as PNG when the image decoder is skipped."""

  def as_dataset(self, split, decoders=None, read_config=None,
                 shuffle_files=False):
    del self, split, read_config, shuffle_files
    skip_image = bool(decoders) and 'image' in decoders

    def generate():
      rng = np.random.default_rng(0)
      for index, (boxes, labels, crowd) in enumerate(objects):
        image = rng.integers(0, 255, image_shape(index), np.uint8)
        count = len(labels)
        yield {
            'image': (tf.io.encode_png(image).numpy() if skip_image
                      else image),
            'image/filename': f'{index}.jpg'.encode(),
            'image/id': np.int64(100 + index),
            'objects': {
                'id': np.arange(count, dtype=np.int64),
                'area': np.full([count], 900, np.int64),
                'bbox': np.asarray(boxes, np.float32).reshape(count, 4),
                'label': np.asarray(labels, np.int64),
                'is_crowd': np.asarray(crowd, bool),
            },
        }

    return coco_dataset(generate, len(objects), skip_image)

  return as_dataset


def coco_dataset(generate, count, skip_image=False):
  """A `tf.data` stand-in for a TFDS COCO split: `generate()` yields
  `count` examples in TFDS' COCO layout (the image as uint8 pixels, or as
  encoded bytes with `skip_image`)."""
  image_spec = (tf.TensorSpec([], tf.string) if skip_image
                else tf.TensorSpec([None, None, 3], tf.uint8))
  signature = {
      'image': image_spec,
      'image/filename': tf.TensorSpec([], tf.string),
      'image/id': tf.TensorSpec([], tf.int64),
      'objects': {
          'id': tf.TensorSpec([None], tf.int64),
          'area': tf.TensorSpec([None], tf.int64),
          'bbox': tf.TensorSpec([None, 4], tf.float32),
          'label': tf.TensorSpec([None], tf.int64),
          'is_crowd': tf.TensorSpec([None], tf.bool),
      },
  }
  dataset = tf.data.Dataset.from_generator(generate,
                                           output_signature=signature)
  return dataset.apply(tf.data.experimental.assert_cardinality(count))


class LinearScores:
  """A halting head's computation for tests, mixed into a Keras layer:
  sigmoid(x . w + c) per position (SACT) or of the pooled state (ACT), in
  TensorFlow (`call`) and NumPy (`numpy`, one image)."""

  def __init__(self, weights, offset, spatial, **kwargs):
    super().__init__(**kwargs)
    self.w = np.asarray(weights, np.float32)
    self.c = float(offset)
    self.spatial = spatial

  def call(self, x):
    if not self.spatial:
      x = tf.reduce_mean(x, axis=[1, 2])
    return tf.sigmoid(tf.tensordot(x, self.w, 1) + self.c)

  def numpy(self, x):
    if not self.spatial:
      x = x.mean(axis=(0, 1))
    return 1 / (1 + np.exp(-(x @ self.w + self.c)))
