"""Bulk export of ponder maps, units and FLOPs of a dataset split to NPZ.

`export_run(model_dir, output)` runs a training run's model over a split of
its dataset (preprocessed as evaluation does) and writes one NPZ file with
one row per example:

  labels                 int32 [N]     the dataset's labels (offset applied)
  predictions            int32 [N]     the model's top-1 classes
  flops                  int64 [N]     FLOPs spent on each image
  ponder_cost            float32 [N]   the image's ponder cost (ACT/SACT)
  <block>/num_units      float32 [N]   units used (SACT: mean over positions)
  <block>/ponder_cost    float32 [N]   the block's ponder cost (ACT/SACT)
  <block>/ponder_map     float32 [N, h, w]  per-position ponder cost
                                       (ACT/SACT; ACT: the image's value)
  metadata               str           JSON: model fields, checkpoint, step,
                                       dataset, split, image size...

Read it with `np.load(path)` and `json.loads(str(npz['metadata']))`
(`load(path)` also reads `gs://` and other `tf.io.gfile` paths). Each
array streams batch by batch to a scratch file beside the output (for an
output on a remote filesystem such as `gs://`, in the local temporary
folder), so memory holds one batch whatever the split's size; the NPZ
appears atomically (temp file + rename, `sact_tf.fileio`) when every batch
is done.
"""

import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
import zipfile

from absl import logging
import numpy as np
import tensorflow as tf

from sact_tf import fileio
from sact_tf import progress
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import evaluation

METADATA_KEY = 'metadata'


def split_dataset(config, split=None, image_size=None, batch_size=None,
                  max_examples=None):
  """Evaluation-style batches of a split of the run's dataset.

  Returns:
    `(dataset, split, image_size)`; defaults: the dataset's evaluation split,
    the run's first evaluation size and evaluation batch size.

  Raises:
    DatasetNotReadyError: the data is missing.
    ValueError: the dataset has no such split.
  """
  spec = datasets.get_spec(config.data.dataset)
  builder = datasets.prepare(config.data.dataset, config.data.data_dir,
                             config.data.download)
  split = split or spec.eval_split
  known = sorted(builder.info.splits.keys())
  if known and split.split('[')[0] not in known:
    raise ValueError(f'{config.data.dataset} has no split {split!r}: its '
                     f'splits are {", ".join(known)}.')
  image_size = image_size or config.data.eval_image_sizes[0]
  dataset = pipelines.eval_dataset(
      builder, dataclasses.replace(spec, eval_split=split),
      config.data.preprocessing, image_size,
      batch_size or config.data.eval_batch_size,
      num_examples=max_examples or None)
  return dataset, split, image_size


def make_predict_fn(model):
  """A `tf.function`: model-ready images -> the per-example export arrays."""
  adaptive = model.model_type != 'resnet'

  @tf.function
  def predict(images):
    outputs = model(images, training=False)
    result = {
        'predictions': tf.argmax(outputs['logits'], -1, output_type=tf.int32),
        'flops': tf.cast(outputs['flops'], tf.int64),
    }
    if adaptive:
      result['ponder_cost'] = tf.cast(outputs['ponder_cost'], tf.float32)
    for name in model.block_names:
      result[f'{name}/num_units'] = evaluation.units_per_image(outputs, name)
      if adaptive:
        result[f'{name}/ponder_cost'] = outputs[f'{name}/ponder_cost']
        result[f'{name}/ponder_map'] = outputs[f'{name}/ponder_map']
    return result

  return predict


def split_examples(config, split, max_examples=None):
  """The examples `split_dataset(config, split, max_examples=...)` yields
  (a prepared split, slices such as 'test[:100]' too), or None if
  unknown."""
  builder = datasets.prepare(config.data.dataset, config.data.data_dir,
                             config.data.download)
  return evaluation.expected_examples(max_examples or 0,
                                      evaluation.split_size(builder, split))


def iterate(model, dataset, total=None):
  """Yields per-batch dicts of NumPy arrays (see the module docstring),
  reporting the examples done of `total` (None: unknown) with
  `sact_tf.progress`."""
  predict = make_predict_fn(model)
  for batch in progress.track(dataset, 'Export of ponder maps', total,
                              unit='example',
                              count=lambda b: int(b['label'].shape[0])):
    arrays = {k: v.numpy() for k, v in predict(batch['image']).items()}
    arrays['labels'] = batch['label'].numpy().astype(np.int32)
    yield arrays


class _Unseekable:
  """A write-only view of a file object, so that `zipfile` streams into it
  (data descriptors) rather than seeking back, which remote files cannot."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data)
    return len(data)

  def flush(self):
    self._f.flush()


class NpzStream:
  """Writes an NPZ file array by array from batches, atomically.

  `append(arrays)` adds a batch (rows) to each named array, kept in scratch
  files in a temporary folder beside `path` (in the local temporary folder
  when `path` is remote, e.g. `gs://`); `close(extra)` writes the NPZ
  (uncompressed, zip64) to a temporary file, renames it to `path` and
  removes the scratch (`sact_tf.fileio.writer`). Use as a context manager:
  on an error nothing is left behind and an existing `path` is untouched.
  """

  def __init__(self, path):
    self.path = fileio.absolute(path)
    if fileio.is_remote(self.path):
      fileio.makedirs(fileio.dirname(self.path))
      self._scratch = tempfile.mkdtemp(prefix='sact_npz_')
    else:
      folder = os.path.dirname(self.path)
      os.makedirs(folder, exist_ok=True)
      self._scratch = tempfile.mkdtemp(
          prefix='.' + os.path.basename(self.path) + '.', dir=folder)
    self._parts = {}

  def append(self, arrays):
    for key, array in arrays.items():
      array = np.ascontiguousarray(array)
      part = self._parts.get(key)
      if part is None:
        handle = open(os.path.join(self._scratch, f'{len(self._parts)}.bin'),
                      'wb')
        part = self._parts[key] = dict(handle=handle, dtype=array.dtype,
                                       shape=array.shape[1:], rows=0)
      if array.dtype != part['dtype'] or array.shape[1:] != part['shape']:
        raise ValueError(
            f'{key}: a batch of {array.dtype} {array.shape[1:]} after '
            f'{part["dtype"]} {part["shape"]} (export at one image size).')
      part['handle'].write(array.tobytes())
      part['rows'] += len(array)

  def close(self, extra=None):
    """Writes the NPZ with `extra` (name -> small array) and returns path."""
    try:
      with fileio.writer(self.path) as f:
        target = _Unseekable(f) if fileio.is_remote(self.path) else f
        with zipfile.ZipFile(target, 'w', zipfile.ZIP_STORED,
                             allowZip64=True) as archive:
          for key, part in self._parts.items():
            part['handle'].close()
            header = {'descr': np.lib.format.dtype_to_descr(part['dtype']),
                      'fortran_order': False,
                      'shape': (part['rows'],) + tuple(part['shape'])}
            with archive.open(key + '.npy', 'w', force_zip64=True) as out, \
                open(part['handle'].name, 'rb') as data:
              np.lib.format.write_array_header_1_0(out, header)
              shutil.copyfileobj(data, out, 1 << 24)
          for key, value in (extra or {}).items():
            with archive.open(key + '.npy', 'w', force_zip64=True) as out:
              np.lib.format.write_array(out, np.asarray(value),
                                        allow_pickle=False)
    finally:
      self._cleanup()
    return self.path

  def _cleanup(self):
    for part in self._parts.values():
      part['handle'].close()
    shutil.rmtree(self._scratch, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    self._cleanup()
    return False


def export_run(model_dir, output, split=None, max_examples=None,
               image_size=None, batch_size=None, checkpoint=None):
  """Exports a run's ponder maps, units and FLOPs over a split to `output`.

  Args:
    model_dir: the training run's directory (config.json + checkpoints).
    output: the NPZ file to write (atomically).
    split: TFDS split (default: the dataset's evaluation split); slices such
      as 'test[:100]' work.
    max_examples: keep the first N examples only (None or 0: all).
    image_size: resolution (default: the run's first evaluation size).
    batch_size: batch size (default: the run's evaluation batch size).
    checkpoint: checkpoint directory or prefix (default: the latest).

  Returns:
    The metadata dict also stored in the file (with `output`).

  Raises:
    FileNotFoundError: no config.json or checkpoint in `model_dir`.
    DatasetNotReadyError: the run's dataset is missing.
    ValueError: unknown split, or it gave no examples.
  """
  config = config_lib.load(model_dir)
  if config is None:
    raise FileNotFoundError(
        f'No {config_lib.CONFIG_FILENAME} in {model_dir}: point --model_dir '
        'at the directory of a training run.')
  dataset, split, image_size = split_dataset(config, split, image_size,
                                             batch_size, max_examples)
  config, model, prefix = checkpointing.load_run(model_dir, checkpoint,
                                                 image_size=image_size)
  started = time.time()
  with NpzStream(output) as stream:
    rows = 0
    for arrays in iterate(model, dataset,
                          split_examples(config, split, max_examples)):
      stream.append(arrays)
      rows += len(arrays['labels'])
    if not rows:
      raise ValueError(f'Split {split} of {config.data.dataset} gave no '
                       'examples.')
    metadata = {
        'model': config.model_fields(), 'tau': config.loss.tau,
        'model_dir': fileio.absolute(model_dir),
        'checkpoint': fileio.absolute(prefix),
        'step': evaluation.checkpoint_step(prefix),
        'dataset': config.data.dataset, 'split': split,
        'preprocessing': config.data.preprocessing, 'image_size': image_size,
        'num_examples': rows, 'block_names': list(model.block_names),
        'units_per_block': list(model.units_per_block),
        'seconds': time.time() - started,
    }
    path = stream.close({METADATA_KEY: np.array(json.dumps(metadata))})
  logging.info('Wrote %d examples of %s %s to %s.', rows, config.data.dataset,
               split, path)
  return dict(metadata, output=path)


def load(path):
  """`(arrays, metadata)` of an exported NPZ file (arrays read eagerly; a
  remote file is read into memory first)."""
  source = (io.BytesIO(fileio.read_bytes(path)) if fileio.is_remote(path)
            else path)
  with np.load(source, allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files if k != METADATA_KEY}
    metadata = json.loads(str(npz[METADATA_KEY]))
  return arrays, metadata
