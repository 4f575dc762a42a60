import os

import pytest

from sact_tf import data


def test_unknown_dataset_lists_the_known_ones():
  with pytest.raises(ValueError, match='clutter_digits'):
    data.get_spec('mnist')


def test_missing_imagenet_says_which_files_go_where(tmp_path):
  with pytest.raises(data.DatasetNotReadyError) as error:
    data.prepare('imagenet2012', str(tmp_path))
  message = str(error.value)
  manual_dir = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'ILSVRC2012_img_val.tar' in message
  assert manual_dir in message
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in message
  assert '--dataset=clutter_digits' in message


def test_no_download_means_no_download(tmp_path):
  with pytest.raises(data.DatasetNotReadyError, match='downloading is off'):
    data.prepare('cifar10', str(tmp_path), download=False)
  assert not os.path.exists(os.path.join(str(tmp_path), 'downloads'))


def test_specs_are_consistent():
  for name, spec in data.datasets.SPECS.items():
    assert spec.name == name
    assert spec.image_format in ('jpeg', 'png')
    assert 0 < spec.area_range[0] <= spec.area_range[1] <= 1
  assert data.get_spec('imagenet2012').num_classes == 1001
  assert data.get_spec('imagenet2012').label_offset == 1
  assert not data.get_spec('clutter_digits').flip
