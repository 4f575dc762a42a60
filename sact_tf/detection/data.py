"""Detection datasets and their input pipelines (batch 1, any image size).

Both datasets have TFDS `coco/2017`'s features: `image`, `image/id` and
`objects` with `bbox` (normalised `[ymin, xmin, ymax, xmax]`), `label`
(contiguous 0-based classes), `area` and `is_crowd`.

Training examples are dicts with `image` float32 `[1, H, W, 3]` in [-1, 1]
(resized keeping the aspect ratio: short side `min_size` unless the long side
would exceed `max_size`; randomly flipped), `boxes` `[M, 4]` normalised,
`classes` int32 `[M]` and `dropped_boxes` int32 (degenerate boxes removed
from this example). Crowd boxes are left out of training (they mark groups,
not objects); degenerate (zero-area) boxes are dropped and counted. Images
without any box stay: they teach the RPN what background is.

Evaluation examples keep every annotation, for pycocotools: `image`,
`image_id`, `height`, `width` (the original size), `boxes`, `classes`,
`is_crowd`, `area`.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf.data import datasets as classification_datasets
from sact_tf.data import pipelines
from sact_tf.detection import box_ops
from sact_tf.detection import clutter_detection
from sact_tf.detection import coco_eval

DatasetNotReadyError = classification_datasets.DatasetNotReadyError


@dataclasses.dataclass(frozen=True)
class DetectionDatasetSpec:
  """Facts about one detection dataset.

  Attributes:
    name: TFDS name.
    categories: ((COCO category id, name), ...) of the contiguous labels
      0, 1, ... in order; the ids go into the pycocotools results.
    train_split, eval_split: TFDS split names.
    shuffle_buffer: training shuffle buffer (encoded images).
    offline: generated locally, with no download.
    prepare_hint: how to get the data when it is not there.
  """

  name: str
  categories: Tuple[Tuple[int, str], ...]
  train_split: str
  eval_split: str
  shuffle_buffer: int = 1024
  offline: bool = False
  prepare_hint: str = ''

  @property
  def num_classes(self):
    return len(self.categories)

  @property
  def category_ids(self):
    return tuple(category_id for category_id, _ in self.categories)


SPECS = {
    'coco/2017': DetectionDatasetSpec(
        name='coco/2017', categories=coco_eval.COCO_CATEGORIES,
        train_split='train', eval_split='validation',
        prepare_hint=(
            'TFDS downloads COCO 2017 (about 25 GB) and prepares it by '
            'itself: run\n  tfds build coco/2017 --data_dir={data_dir}\n'
            'on a machine with internet and enough disk (or pass --download '
            'to this binary there), then copy {data_dir}/coco here. Offline, '
            'try the demo dataset: --dataset=clutter_digits_detection.')),
    'clutter_digits_detection': DetectionDatasetSpec(
        name='clutter_digits_detection',
        categories=tuple((d + 1, str(d))
                         for d in range(clutter_detection.NUM_CLASSES)),
        train_split='train', eval_split='test', offline=True,
        prepare_hint=('It is generated offline from scikit-learn\'s digits: '
                      'install scikit-learn.')),
}


def get_spec(name):
  """The `DetectionDatasetSpec` of `name`, or a ValueError listing them."""
  if name not in SPECS:
    raise ValueError(f'Unknown detection dataset {name!r}: supported '
                     f'datasets are {sorted(SPECS)}.')
  return SPECS[name]


def prepare(name, data_dir=None, download=True):
  """Returns the TFDS builder of `name`, with its data on disk.

  clutter_digits_detection is generated on the spot (seconds); COCO is
  downloaded when `download` is True.

  Raises:
    DatasetNotReadyError: the data is not there and cannot be made now; the
      message says what to do.
  """
  spec = get_spec(name)
  data_dir = classification_datasets.default_data_dir(data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  hint = spec.prepare_hint.format(data_dir=data_dir)
  if not download and not spec.offline:
    raise DatasetNotReadyError(
        f'Dataset {name} is not prepared in {data_dir} and downloading is '
        f'off (--nodownload).\n{hint}')
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    # Network, disk and archive errors come in many types; whatever failed,
    # say what to do.
    raise DatasetNotReadyError(
        f'Dataset {name} is not prepared in {data_dir}; preparing it failed '
        f'with {type(e).__name__}: {e}\n{hint}') from e
  return builder


def resized_size(height, width, min_size, max_size):
  """(new height, new width), int32: aspect kept, short side `min_size`
  unless that makes the long side exceed `max_size` (then it is
  `max_size`)."""
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  short = tf.minimum(height, width)
  long = tf.maximum(height, width)
  scale = float(min_size) / short
  scale = tf.where(long * scale > max_size, float(max_size) / long, scale)
  new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), 1)
  new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), 1)
  return new_height, new_width


def preprocess_image(image, min_size, max_size):
  """uint8 `[H, W, 3]` -> float32 `[1, H', W', 3]` in [-1, 1], resized."""
  shape = tf.shape(image)
  size = resized_size(shape[0], shape[1], min_size, max_size)
  image = tf.image.resize(tf.cast(image, tf.float32), size)
  return (image / 127.5 - 1.0)[tf.newaxis]


def _decode(data):
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _objects(example):
  objects = example['objects']
  return (tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4]),
          tf.cast(objects['label'], tf.int32),
          tf.cast(objects['is_crowd'], tf.bool),
          tf.cast(objects['area'], tf.float32))


def train_example(example, seed, min_size, max_size, flip):
  """One training example (see the module doc).

  Args:
    example: a TFDS example with the image still encoded.
    seed: int64 `[2]` stateless seed of its augmentation.
    min_size, max_size: the resize.
    flip: flip horizontally with probability 1/2.
  """
  image = _decode(example['image'])
  boxes, classes, is_crowd, _ = _objects(example)
  valid = box_ops.is_valid(boxes)
  keep = tf.logical_and(valid, tf.logical_not(is_crowd))
  dropped = tf.reduce_sum(tf.cast(tf.logical_not(valid), tf.int32))
  boxes = tf.boolean_mask(boxes, keep)
  classes = tf.boolean_mask(classes, keep)
  if flip:
    flipped = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flipped, lambda: image[:, ::-1], lambda: image)
    boxes = tf.cond(flipped, lambda: box_ops.flip_left_right(boxes),
                    lambda: boxes)
  return {
      'image': preprocess_image(image, min_size, max_size),
      'boxes': boxes,
      'classes': classes,
      'dropped_boxes': dropped,
  }


def eval_example(example, min_size, max_size):
  """One evaluation example (see the module doc)."""
  image = _decode(example['image'])
  boxes, classes, is_crowd, area = _objects(example)
  shape = tf.shape(image)
  return {
      'image': preprocess_image(image, min_size, max_size),
      'image_id': tf.cast(example['image/id'], tf.int64),
      'height': shape[0],
      'width': shape[1],
      'boxes': boxes,
      'classes': classes,
      'is_crowd': is_crowd,
      'area': area,
  }


def train_dataset(builder, spec, min_size, max_size, flip=True, start_step=0,
                  seed=0, input_context=None):
  """An endless stream of training examples, one image each.

  The order is a pure function of (seed, position): epoch e is the split
  shuffled with a seed derived from (seed, e), and each example's flip is
  seeded by its position, so a run resumed at step k continues with the
  example it would have seen: position k * (images per step), each of the
  pipeline's replicas taking one image per step.

  Args:
    builder: the prepared TFDS builder (`prepare`).
    spec: its `DetectionDatasetSpec`.
    min_size, max_size: the resize.
    flip: random horizontal flips.
    start_step: the step to start at (resumption).
    seed: the run's data seed.
    input_context: a `tf.distribute.InputContext`, or None.
  """
  num_pipelines, pipeline_id = pipelines.input_pipeline(input_context)
  examples, epoch_size, buffer, base_seed = pipelines.train_shard(
      builder, spec, seed, num_pipelines, pipeline_id)
  # Each replica takes one image per step from its pipeline.
  per_step = (input_context.num_replicas_in_sync // num_pipelines
              if input_context else 1)
  position = start_step * per_step
  first_epoch, offset = divmod(position, epoch_size)

  def epoch(index):
    # With a tensor seed, tf.data's seed check fails on a global seed of 0
    # (it compares the seeds to (0, 0) as a Python bool). The order is a
    # function of (seed, position) only: the global seed plays no part.
    tf.compat.v1.get_default_graph().seed = None
    return examples.shuffle(buffer, seed=base_seed + index,
                            reshuffle_each_iteration=False)

  stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
  stream = stream.skip(offset)
  stream = tf.data.Dataset.zip(tf.data.Dataset.counter(position), stream)
  stream = stream.map(
      lambda index, example: train_example(
          example, tf.stack([tf.constant(base_seed, tf.int64), index]),
          min_size, max_size, flip),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return stream.prefetch(tf.data.AUTOTUNE)


def eval_dataset(builder, spec, min_size, max_size, num_examples=None):
  """The evaluation split in its stored order, one image per element.

  `num_examples` keeps the first ones only (None: all).
  """
  examples = pipelines.eval_examples(builder, spec, num_examples).map(
      lambda ex: eval_example(ex, min_size, max_size),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return examples.prefetch(tf.data.AUTOTUNE)

