"""tf.data input pipelines over TFDS datasets.

Batches are dicts: `image` float32 `[B, S, S, 3]`, `label` int32 `[B]` (with
the dataset's label offset applied) and, for datasets with object boxes,
`bbox` float32 `[B, 4]` (`[ymin, xmin, ymax, xmax]`, normalised, in the frame
of the preprocessed image).

Training data is a stream whose order is a pure function of (seed,
position): epoch e is the split shuffled with a seed derived from (seed, e),
and each example's augmentation is seeded by its position in the stream. A
run resumed at step k therefore starts at exactly the example where it
stopped, at the cost of reading (not decoding) the skipped part of one epoch.
"""

import collections
import functools

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf.data import preprocessing

STYLES = ('inception', 'cifar')
# Spreads (seed, epoch) pairs over distinct shuffle seeds.
_EPOCH_SEED_STRIDE = 1_000_003


def _check_style(style):
  if style not in STYLES:
    raise ValueError(f'Unknown preprocessing style {style!r}: allowed values '
                     f'are {STYLES}.')


# Shared with `sact_tf.detection.data`, whose datasets are read the same way.

TrainShard = collections.namedtuple(
    'TrainShard', ['examples', 'epoch_size', 'buffer', 'base_seed'])


def load_encoded(builder, split):
  """`split` of a prepared builder in its stored order, images encoded.

  Images stay encoded until preprocessing so that skipped examples (and
  those waiting in a shuffle buffer) are never decoded and JPEG crops decode
  only what they keep.

  TFDS' automatic in-memory cache of small datasets is off: the pipelines
  read a split partially (`eval_examples` with `num_examples`, the first
  batch for summaries, a training stream ending mid-epoch), and a cache
  read partially logs a warning and throws its contents away. The records
  are read from the files instead, which the operating system caches.
  """
  return builder.as_dataset(split=split, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(try_autocache=False))


def _cardinality(dataset, split):
  count = int(dataset.cardinality())
  if count >= 0:
    return count
  logging.warning('The size of split %s is unknown: counting it.', split)
  return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def input_pipeline(input_context):
  """(number of input pipelines, this one's id) of a
  `tf.distribute.InputContext`, or (1, 0) for None."""
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def train_shard(builder, spec, seed, num_pipelines, pipeline_id):
  """This input pipeline's share of `spec.train_split`, to shuffle by epoch.

  Returns:
    `TrainShard(examples, epoch_size, buffer, base_seed)`: the encoded
    examples (an even split per pipeline), how many there are, the shuffle
    buffer (`spec.shuffle_buffer` at most) and the pipeline's seed base
    (epoch e shuffles with seed base_seed + e).

  Raises:
    ValueError: the share is empty.
  """
  split = spec.train_split
  if num_pipelines > 1:
    split = tfds.even_splits(split, n=num_pipelines)[pipeline_id]
  examples = load_encoded(builder, split)
  epoch_size = _cardinality(examples, split)
  if epoch_size == 0:
    raise ValueError(f'Split {split} of {spec.name} is empty.')
  return TrainShard(
      examples, epoch_size, min(spec.shuffle_buffer, epoch_size),
      (seed * num_pipelines + pipeline_id) * _EPOCH_SEED_STRIDE)


def eval_examples(builder, spec, num_examples=None):
  """`spec.eval_split` encoded, in its stored order; the first
  `num_examples` only when given."""
  examples = load_encoded(builder, spec.eval_split)
  if num_examples:
    examples = examples.take(num_examples)
  return examples


def _labels(example, spec):
  return tf.cast(example['label'], tf.int32) + spec.label_offset


def _train_example(example, seed, spec, style, image_size):
  bbox = example[spec.bbox_key] if spec.bbox_key else None
  if style == 'inception':
    image = preprocessing.inception_train(
        example['image'], seed, image_size, spec.image_format, bbox=bbox,
        area_range=spec.area_range,
        min_object_covered=spec.min_object_covered, flip=spec.flip,
        color_distortion=spec.color_distortion)
  else:
    image = preprocessing.cifar_train(example['image'], seed, image_size,
                                      spec.image_format, flip=spec.flip)
  return {'image': image, 'label': _labels(example, spec)}


def _eval_example(example, spec, style, image_size):
  bbox = example[spec.bbox_key] if spec.bbox_key else None
  if style == 'inception':
    image, bbox = preprocessing.central_crop_eval(
        example['image'], image_size, spec.image_format,
        crop_fraction=spec.eval_crop_fraction, bbox=bbox)
  else:
    image = preprocessing.cifar_eval(example['image'], image_size,
                                     spec.image_format)
  out = {'image': image, 'label': _labels(example, spec)}
  if bbox is not None:
    out['bbox'] = tf.cast(bbox, tf.float32)
  return out


def train_dataset(builder, spec, style, image_size, global_batch_size,
                  start_step=0, end_step=None, seed=0, input_context=None):
  """Shuffled, augmented training batches from `start_step` to `end_step`.

  Args:
    builder: the prepared TFDS builder (`sact_tf.data.datasets.prepare`).
    spec: its `DatasetSpec`.
    style: 'inception' or 'cifar'.
    image_size: output height and width.
    global_batch_size: examples per step over all replicas.
    start_step: the training step to start at (resumption).
    end_step: the step to stop at (None: stop after one more epoch).
    seed: the run's data seed.
    input_context: a `tf.distribute.InputContext` (from
      `distribute_datasets_from_function`), or None for one pipeline.

  Returns:
    A dataset of per-replica batches.
  """
  _check_style(style)
  num_pipelines, pipeline_id = input_pipeline(input_context)
  if global_batch_size % num_pipelines:
    raise ValueError(f'The batch size {global_batch_size} must be divisible '
                     f'by the number of input pipelines {num_pipelines}.')
  batch_size = (input_context.get_per_replica_batch_size(global_batch_size)
                if input_context else global_batch_size)
  examples, epoch_size, buffer, base_seed = train_shard(
      builder, spec, seed, num_pipelines, pipeline_id)
  pipeline_batch = global_batch_size // num_pipelines
  position = start_step * pipeline_batch
  first_epoch, offset = divmod(position, epoch_size)
  end = (position + epoch_size if end_step is None
         else max(end_step, start_step + 1) * pipeline_batch)
  last_epoch = (end - 1) // epoch_size
  # One shuffle per epoch, each seeded by a Python int: a seed given as a
  # tensor (e.g. from Dataset.range(...).flat_map) breaks tf.data when a
  # global seed of 0 is set. Concatenation builds later epochs lazily.
  stream = functools.reduce(
      lambda head, epoch: head.concatenate(examples.shuffle(
          buffer, seed=base_seed + epoch, reshuffle_each_iteration=False)),
      range(first_epoch + 1, last_epoch + 1),
      examples.shuffle(buffer, seed=base_seed + first_epoch,
                       reshuffle_each_iteration=False))
  stream = stream.skip(offset)
  stream = tf.data.Dataset.zip(tf.data.Dataset.counter(position), stream)

  def preprocess(index, example):
    example_seed = tf.stack([tf.constant(base_seed, tf.int64), index])
    return _train_example(example, example_seed, spec, style, image_size)

  stream = stream.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True)
  stream = stream.batch(batch_size, drop_remainder=True)
  return stream.prefetch(tf.data.AUTOTUNE)


def eval_dataset(builder, spec, style, image_size, batch_size,
                 num_examples=None):
  """The evaluation split in its stored order, preprocessed and batched.

  The last batch may be smaller. `num_examples` keeps only the first ones
  (None: all).
  """
  _check_style(style)
  examples = eval_examples(builder, spec, num_examples).map(
      lambda ex: _eval_example(ex, spec, style, image_size),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return examples.batch(batch_size).prefetch(tf.data.AUTOTUNE)
