import os
import zipfile

import numpy as np
import pytest
from scipy import io as scipy_io
import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf import data
from sact_tf.data import cat2000

CATEGORIES = ('Action', 'Sketch')
IMAGES_PER_CATEGORY = 4


def write_fake_train_set(root, height=18, width=32):
  """The real folder layout with tiny images and real .mat files."""
  rng = np.random.default_rng(0)
  expected = {}
  for category in CATEGORIES:
    for sub in ('Stimuli', 'FIXATIONLOCS', 'FIXATIONMAPS'):
      os.makedirs(os.path.join(root, 'trainSet', sub, category))
    for i in range(1, IMAGES_PER_CATEGORY + 1):
      name = f'{i:03d}'
      image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
      with open(os.path.join(root, 'trainSet', 'Stimuli', category,
                             name + '.jpg'), 'wb') as f:
        f.write(tf.io.encode_jpeg(image).numpy())
      fixations = rng.uniform(size=(height, width)) > 0.9
      scipy_io.savemat(os.path.join(root, 'trainSet', 'FIXATIONLOCS',
                                    category, name + '.mat'),
                       {'fixLocs': fixations.astype(np.float64)})
      expected[f'{category}/{name}'] = fixations
  return expected


def build(manual_dir, data_dir):
  builder = cat2000.Cat2000(data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


@pytest.mark.parametrize('zipped', [False, True])
def test_builder_reads_the_real_layout(tmp_path, zipped):
  manual = os.path.join(tmp_path, 'manual')
  source = os.path.join(tmp_path, 'source') if zipped else manual
  expected = write_fake_train_set(source)
  if zipped:
    os.makedirs(manual)
    with zipfile.ZipFile(os.path.join(manual, 'trainSet.zip'), 'w') as z:
      for folder, _, files in os.walk(source):
        for name in files:
          path = os.path.join(folder, name)
          z.write(path, os.path.relpath(path, source))
  builder = build(manual, os.path.join(tmp_path, 'data'))
  first = list(tfds.as_numpy(builder.as_dataset(split='first_half')))
  second = list(tfds.as_numpy(builder.as_dataset(split='second_half')))
  assert len(first) == len(second) == len(CATEGORIES) * 2
  names = {(e['category'].decode(), e['file_name'].decode()) for e in first}
  assert names == {(c, f'{i:03d}.jpg') for c in CATEGORIES for i in (1, 2)}
  for example in first + second:
    key = (f"{example['category'].decode()}/"
           f"{example['file_name'].decode()[:-4]}")
    assert example['image'].shape == (18, 32, 3)
    np.testing.assert_array_equal(example['fixation_map'][..., 0] > 0,
                                  expected[key])


def test_missing_archive_names_the_remedy(tmp_path):
  manual = os.path.join(tmp_path, 'manual')
  os.makedirs(manual)
  with pytest.raises(FileNotFoundError) as error:
    build(manual, os.path.join(tmp_path, 'data'))
  message = str(error.value)
  assert 'trainSet.zip' in message and manual in message
  assert 'download_and_prepare' in message


def test_corrupt_zip_is_reported(tmp_path):
  manual = os.path.join(tmp_path, 'manual')
  os.makedirs(manual)
  with open(os.path.join(manual, 'trainSet.zip'), 'wb') as f:
    f.write(b'not a zip')
  with pytest.raises(ValueError, match='not a valid zip'):
    build(manual, os.path.join(tmp_path, 'data'))


def test_prepare_builds_once_and_examples_read_the_first_files(tmp_path):
  manual = os.path.join(tmp_path, 'manual')
  data_dir = os.path.join(tmp_path, 'data')
  expected = write_fake_train_set(manual)
  builder = cat2000.prepare(data_dir, manual)
  assert builder.is_prepared()
  # Prepared: the manual folder is no longer read.
  assert cat2000.prepare(data_dir, os.path.join(tmp_path, 'nowhere'))
  read = list(cat2000.examples(builder, 'second_half', max_per_category=1))
  assert sorted((c, n) for c, n, _, _ in read) == [
      (c, '003.jpg') for c in CATEGORIES]
  for category, name, image, fixation_map in read:
    assert image.shape == (18, 32, 3) and image.dtype == np.uint8
    assert fixation_map.shape == (18, 32, 1)
    np.testing.assert_array_equal(fixation_map[..., 0] > 0,
                                  expected[f'{category}/{name[:-4]}'])
  everything = list(cat2000.examples(builder, 'first_half'))
  assert len(everything) == len(CATEGORIES) * IMAGES_PER_CATEGORY // 2
  with pytest.raises(ValueError, match='second_half'):
    cat2000.examples(builder, 'train')


def test_prepare_reports_a_corrupt_archive_as_not_ready(tmp_path):
  manual = os.path.join(tmp_path, 'manual')
  os.makedirs(manual)
  with open(os.path.join(manual, 'trainSet.zip'), 'wb') as f:
    f.write(b'not a zip')
  with pytest.raises(data.DatasetNotReadyError, match='not a valid zip'):
    cat2000.prepare(os.path.join(tmp_path, 'data'), manual)
