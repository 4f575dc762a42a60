"""Pieces several test modules share: a tiny run's config and a mock COCO
split."""

import tensorflow as tf

from sact_tf import train


def tiny_config(model_dir, **overrides):
  """An `ExperimentConfig` of a tiny SACT CIFAR ResNet on (mock) cifar10
  that trains in seconds; `overrides` replace any field."""
  values = dict(
      family='cifar', units=[1, 2, 1], model_type='sact', num_classes=10,
      base_channels=2, tau=0.01, dataset='cifar10', data_dir='/nonexistent',
      preprocessing='cifar', image_size=32, eval_image_sizes=[32],
      batch_size=4, eval_batch_size=3, train_steps=4, learning_rate=0.05,
      lr_boundaries=[3], label_smoothing=0.0, weight_decay=1e-4,
      model_dir=str(model_dir), checkpoint_every=2, summary_every=2)
  values.update(overrides)
  return train.ExperimentConfig(**values)


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
