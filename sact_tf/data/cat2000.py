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
"""

import os
import zipfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

_URL = 'http://saliency.mit.edu/datasets.html'


def missing_archive_message(manual_dir):
  return (
      f'CAT2000 is not in the manual download folder {manual_dir}. Download '
      f'the CAT2000 training set "trainSet.zip" from {_URL} and put the zip '
      f'file (or the extracted "trainSet" folder, holding Stimuli/ and '
      f'FIXATIONLOCS/) in {manual_dir}; then build it with '
      f'tfds.builder("cat2000", data_dir=...).download_and_prepare(), or pass '
      f'--data_dir to the experiment binary, which prepares it.')


def read_fixations(path):
  """Reads `fixLocs` from a MATLAB file (v5 via SciPy, v7.3 via h5py)."""
  from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top
  try:
    return np.asarray(scipy_io.loadmat(path)['fixLocs']) > 0
  except NotImplementedError:
    # MATLAB v7.3 files are HDF5, stored column-major.
    import h5py  # pylint: disable=g-import-not-at-top
    with h5py.File(path, 'r') as f:
      return np.asarray(f['fixLocs']).T > 0


def _find_root(manual_dir, extract):
  """The folder holding Stimuli/ and FIXATIONLOCS/, extracting a zip."""
  candidates = [manual_dir, os.path.join(manual_dir, 'trainSet')]
  for folder in candidates:
    if (tf.io.gfile.isdir(os.path.join(folder, 'Stimuli')) and
        tf.io.gfile.isdir(os.path.join(folder, 'FIXATIONLOCS'))):
      return folder
  archive = os.path.join(manual_dir, 'trainSet.zip')
  if tf.io.gfile.exists(archive):
    if not zipfile.is_zipfile(archive):
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
    return {
        'first_half': self._generate_examples(root, 0),
        'second_half': self._generate_examples(root, 1),
    }

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
