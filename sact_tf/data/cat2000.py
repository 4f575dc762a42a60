"""TFDS builder for the CAT2000 saliency training set (manual download).

CAT2000 (MIT saliency benchmark) has 20 categories of 100 training images
(1920x1080) with public fixations. Its training archive `trainSet.zip`
unpacks to:

  trainSet/Stimuli/<Category>/NNN.jpg         the images
  trainSet/FIXATIONMAPS/<Category>/NNN.jpg    blurred fixation maps (unused)
  trainSet/FIXATIONLOCS/<Category>/NNN.mat    variable `fixLocs`: binary map
                                              of the fixated pixels

The paper tunes on the first half of each category's images and reports on
the second half, so the splits are `first_half` and `second_half`.

`prepare` returns the builder with its data on disk (built from the manual
download when needed); `examples` reads a split's images and fixation maps.
"""

import io
import os
import zipfile

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf import fileio
from sact_tf.data import datasets

SPLITS = ('first_half', 'second_half')
_URL = 'http://saliency.mit.edu/datasets.html'


def missing_archive_message(manual_dir):
  """What to do when the training archive is not in `manual_dir`."""
  return (
      f'CAT2000 is not in the manual download folder {manual_dir}. Download '
      f'the CAT2000 training set "trainSet.zip" from {_URL} and put the zip '
      f'file (or the extracted "trainSet" folder, holding Stimuli/ and '
      f'FIXATIONLOCS/) in {manual_dir}; then build it with '
      f'tfds.builder("cat2000", data_dir=...).download_and_prepare(), or pass '
      f'--data_dir to the experiment binary, which prepares it.')


def read_fixations(path):
  """Reads `fixLocs` from a MATLAB file (v5 via SciPy, v7.3 via h5py); a
  remote file (`gs://...`) is read into memory first."""
  from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top

  def source():
    return (io.BytesIO(fileio.read_bytes(path)) if fileio.is_remote(path)
            else path)

  try:
    return np.asarray(scipy_io.loadmat(source())['fixLocs']) > 0
  except NotImplementedError:
    # MATLAB v7.3 files are HDF5, stored column-major.
    import h5py  # pylint: disable=g-import-not-at-top
    with h5py.File(source(), 'r') as f:
      return np.asarray(f['fixLocs']).T > 0


def _is_zipfile(path):
  """`zipfile.is_zipfile` of a local or remote (`tf.io.gfile`) file."""
  if not fileio.is_remote(path):
    return zipfile.is_zipfile(path)
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      return zipfile.is_zipfile(f)
  except tf.errors.InvalidArgumentError:  # Seeking before the start.
    return False


def _find_root(manual_dir, extract):
  """The folder holding Stimuli/ and FIXATIONLOCS/, extracting a zip."""
  candidates = [manual_dir, os.path.join(manual_dir, 'trainSet')]
  for folder in candidates:
    if (tf.io.gfile.isdir(os.path.join(folder, 'Stimuli')) and
        tf.io.gfile.isdir(os.path.join(folder, 'FIXATIONLOCS'))):
      return folder
  archive = os.path.join(manual_dir, 'trainSet.zip')
  if tf.io.gfile.exists(archive):
    if not _is_zipfile(archive):
      raise ValueError(f'{archive} is not a valid zip file (incomplete '
                       'download?); download it again.')
    extracted = extract(archive)
    for folder in (extracted, os.path.join(extracted, 'trainSet')):
      if tf.io.gfile.isdir(os.path.join(folder, 'Stimuli')):
        return folder
    raise ValueError(f'{archive} does not hold trainSet/Stimuli/: is it the '
                     'CAT2000 training archive?')
  raise FileNotFoundError(missing_archive_message(manual_dir))


class Cat2000(tfds.core.GeneratorBasedBuilder):
  """CAT2000 training images with binary fixation maps."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download "trainSet.zip" (the CAT2000 training set) from '
      f'{_URL} and place the zip file, or the extracted "trainSet" folder, '
      'in the manual download directory (by default '
      '~/tensorflow_datasets/downloads/manual/).')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'fixation_map': tfds.features.Image(shape=(None, None, 1),
                                                encoding_format='png'),
            'category': tfds.features.Text(),
            'file_name': tfds.features.Text(),
        }),
        homepage=_URL,
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = str(dl_manager.manual_dir)
    except AssertionError:
      # TFDS asserts when the folder is missing or empty; say what to do.
      raise FileNotFoundError(missing_archive_message(
          getattr(dl_manager, '_manual_dir', None) or
          'the manual download folder')) from None
    root = _find_root(manual_dir, lambda path: str(dl_manager.extract(path)))
    return {split: self._generate_examples(root, half)
            for half, split in enumerate(SPLITS)}

  def _generate_examples(self, root, half):
    stimuli = os.path.join(root, 'Stimuli')
    categories = sorted(
        c for c in tf.io.gfile.listdir(stimuli)
        if tf.io.gfile.isdir(os.path.join(stimuli, c.rstrip('/'))))
    if not categories:
      raise ValueError(f'No category folders in {stimuli}.')
    for category in categories:
      category = category.rstrip('/')
      names = sorted(n for n in tf.io.gfile.listdir(os.path.join(stimuli,
                                                                 category))
                     if n.lower().endswith(('.jpg', '.jpeg', '.png')))
      middle = len(names) // 2
      for name in names[:middle] if half == 0 else names[middle:]:
        stem = os.path.splitext(name)[0]
        mat = os.path.join(root, 'FIXATIONLOCS', category, stem + '.mat')
        if not tf.io.gfile.exists(mat):
          raise FileNotFoundError(f'No fixations for {category}/{name}: '
                                  f'expected {mat}.')
        fixations = read_fixations(mat).astype(np.uint8)[..., np.newaxis] * 255
        yield f'{category}/{stem}', {
            'image': os.path.join(stimuli, category, name),
            'fixation_map': fixations,
            'category': category,
            'file_name': name,
        }


def prepare(data_dir=None, manual_dir=None):
  """The `Cat2000` builder with its data on disk, preparing it when needed.

  Args:
    data_dir: TFDS data directory (None: $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    manual_dir: folder holding trainSet.zip or the extracted trainSet/
      (None: <data_dir>/downloads/manual); read only when the data set is
      not prepared yet.

  Returns:
    The prepared builder.

  Raises:
    FileNotFoundError: the archive is not in `manual_dir` (the message says
      where to download it and where to put it).
    datasets.DatasetNotReadyError: the archive is corrupt or is not the
      CAT2000 training set.
  """
  data_dir = datasets.default_data_dir(data_dir)
  builder = Cat2000(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  manual_dir = fileio.expanduser(
      manual_dir or os.path.join(data_dir, 'downloads', 'manual'))
  logging.info('Preparing cat2000 in %s from %s.', data_dir, manual_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except ValueError as e:  # A corrupt or wrong archive.
    raise datasets.DatasetNotReadyError(f'Could not prepare cat2000 in '
                                        f'{data_dir}: {e}') from e
  return builder


def examples(builder, split, max_per_category=None):
  """The decoded images and fixation maps of a split, as an iterator.

  Only the first `max_per_category` file names of each category (in file
  name order) are decoded; the others are skipped undecoded.

  Args:
    builder: a prepared `Cat2000` builder (see `prepare`).
    split: 'first_half' or 'second_half'.
    max_per_category: images per category to read (None: all of them).

  Returns:
    An iterator of `(category, file_name, image, fixation_map)` in the data
    set's stored order: the image uint8 `[H, W, 3]`, the fixation map uint8
    `[H, W, 1]` (255 at the fixated pixels, 0 elsewhere).

  Raises:
    ValueError: an unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown cat2000 split {split!r}: the splits are '
                     f'{", ".join(SPLITS)}.')
  return _examples(builder, split, max_per_category)


def _examples(builder, split, max_per_category):
  """The generator of `examples`."""
  skip = {'image': tfds.decode.SkipDecoding(),
          'fixation_map': tfds.decode.SkipDecoding()}
  dataset = builder.as_dataset(split=split, shuffle_files=False,
                               decoders=skip)
  names = {}
  for category, name in tfds.as_numpy(
      dataset.map(lambda e: (e['category'], e['file_name']))):
    names.setdefault(category.decode(), []).append(name.decode())
  chosen = {(category, name)
            for category, items in names.items()
            for name in sorted(items)[:max_per_category]}
  for example in tfds.as_numpy(dataset):
    key = (example['category'].decode(), example['file_name'].decode())
    if key not in chosen:
      continue
    image = tf.io.decode_image(example['image'], channels=3,
                               expand_animations=False).numpy()
    fixation_map = tf.io.decode_png(example['fixation_map']).numpy()
    yield key + (image, fixation_map)
