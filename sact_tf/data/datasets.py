"""What the experiments know about each dataset, and getting it ready.

`SPECS` describes the datasets the experiments support: splits, label layout,
image encoding, natural image size and the augmentation that suits it.
`prepare` makes sure a dataset is on disk (building or downloading it when
that needs no manual step) and otherwise fails with instructions, before any
model is built.
"""

import dataclasses
import os
from typing import Optional, Tuple

from absl import logging
import tensorflow_datasets as tfds

from sact_tf import fileio
from sact_tf.data import clutter_digits


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Facts about one TFDS dataset.

  Attributes:
    name: TFDS name.
    num_classes: model outputs.
    label_offset: added to the TFDS label (ImageNet: 1, class 0 = background).
    train_split, eval_split: TFDS split names.
    num_train_examples: size of the train split (to turn epochs into steps
      when the dataset's metadata is not at hand).
    image_size: the natural training resolution.
    image_format: 'jpeg' or 'png': how TFDS stores the images.
    bbox_key: feature holding one `[ymin, xmin, ymax, xmax]` object box per
      example, or None.
    flip: whether a horizontal flip keeps the label (not for digits).
    area_range, min_object_covered: the inception-style crop's limits; the
      crop must cover `min_object_covered` of the object box (of the whole
      image when there is none).
    color_distortion: inception-style colour jitter.
    eval_crop_fraction: central crop kept at evaluation (inception style).
    shuffle_buffer: training shuffle buffer, in examples.
    manual_files: files a person must download into TFDS' manual_dir.
    offline: generated locally, with no download.
    prepare_hint: how to get the data when it is not there.
  """

  name: str
  num_classes: int
  train_split: str
  eval_split: str
  num_train_examples: int
  image_size: int
  image_format: str
  label_offset: int = 0
  bbox_key: Optional[str] = None
  flip: bool = True
  area_range: Tuple[float, float] = (0.05, 1.0)
  min_object_covered: float = 0.1
  color_distortion: bool = True
  eval_crop_fraction: float = 0.875
  shuffle_buffer: int = 10_000
  manual_files: Tuple[str, ...] = ()
  offline: bool = False
  prepare_hint: str = ''


SPECS = {
    'imagenet2012': DatasetSpec(
        name='imagenet2012', num_classes=1001, label_offset=1,
        train_split='train', eval_split='validation',
        num_train_examples=1_281_167, image_size=224, image_format='jpeg',
        manual_files=('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'),
        prepare_hint=(
            'ImageNet needs a manual download: register at '
            'https://image-net.org/download-images, download '
            'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar and put both '
            'files in {manual_dir}/, then prepare the dataset (it takes '
            'hours) with\n  tfds build imagenet2012 --data_dir={data_dir}\n'
            'Without ImageNet, try the offline demo dataset: '
            '--dataset=clutter_digits.')),
    'cifar10': DatasetSpec(
        name='cifar10', num_classes=10, train_split='train',
        eval_split='test', num_train_examples=50_000, image_size=32,
        image_format='png', shuffle_buffer=50_000,
        prepare_hint=(
            'TFDS downloads CIFAR-10 by itself; on a machine without '
            'internet, prepare it elsewhere with\n  tfds build cifar10 '
            '--data_dir=DIR\nand copy DIR/cifar10 to {data_dir}/cifar10. '
            'Offline, try the demo dataset: --dataset=clutter_digits.')),
    'clutter_digits': DatasetSpec(
        name='clutter_digits', num_classes=clutter_digits.NUM_CLASSES,
        train_split='train', eval_split='test',
        num_train_examples=clutter_digits.num_examples('train'),
        image_size=clutter_digits.CANVAS, image_format='png',
        bbox_key='bbox', flip=False,
        # The crop must keep the whole digit: a digit cut in half may read as
        # another one.
        area_range=(0.25, 1.0), min_object_covered=1.0,
        eval_crop_fraction=1.0, shuffle_buffer=8192, offline=True,
        prepare_hint='It is generated offline from scikit-learn\'s digits.'),
    # Evaluated on validation by default: choices are made there, and the
    # test split is read only for the reported numbers
    # (`--set=data.eval_split=test`).
    'clutter_digits_hard': DatasetSpec(
        name='clutter_digits_hard', num_classes=clutter_digits.NUM_CLASSES,
        train_split='train', eval_split='validation',
        num_train_examples=clutter_digits.num_examples(
            'train', clutter_digits.HARD),
        image_size=clutter_digits.HARD.canvas, image_format='png',
        bbox_key='bbox', flip=False, area_range=(0.25, 1.0),
        min_object_covered=1.0, eval_crop_fraction=1.0, shuffle_buffer=10_000,
        offline=True,
        prepare_hint='It is generated offline from scikit-learn\'s digits.'),
}


class DatasetNotReadyError(RuntimeError):
  """The dataset is not prepared and cannot be prepared automatically."""


def get_spec(name):
  """The `DatasetSpec` of `name`, or a ValueError listing the known ones."""
  if name not in SPECS:
    raise ValueError(f'Unknown dataset {name!r}: supported datasets are '
                     f'{sorted(SPECS)}.')
  return SPECS[name]


def default_data_dir(data_dir=None):
  """`data_dir`, or TFDS' default (`~/tensorflow_datasets`, $TFDS_DATA_DIR)."""
  if data_dir:
    return fileio.expanduser(data_dir)
  return fileio.expanduser(
      os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def prepare(name, data_dir=None, download=True):
  """Returns the TFDS builder of `name`, with its data on disk.

  `clutter_digits` is generated on the spot (seconds). Datasets that TFDS can
  download are downloaded when `download` is True; ImageNet is built from the
  archives in `<data_dir>/downloads/manual` when they are there (hours).

  Raises:
    DatasetNotReadyError: the data is not there and cannot be made now; the
      message says what to do.
  """
  spec = get_spec(name)
  data_dir = default_data_dir(data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  manual_dir = os.path.join(data_dir, 'downloads', 'manual')
  hint = spec.prepare_hint.format(data_dir=data_dir, manual_dir=manual_dir)
  if not download and not spec.offline:
    raise DatasetNotReadyError(
        f'Dataset {name} is not prepared in {data_dir} and downloading is '
        f'off.\n{hint}')
  if spec.manual_files:
    logging.warning('Preparing %s from the files in %s: this takes hours.',
                    name, manual_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # pylint: disable=broad-except
    # Another process (e.g. a second worker) may have prepared it meanwhile.
    again = tfds.builder(name, data_dir=data_dir)
    if again.is_prepared():
      return again
    # Network and archive errors come in many types; whatever failed, say
    # what to do.
    missing = [f for f in spec.manual_files
               if not fileio.exists(os.path.join(manual_dir, f))]
    where = (f' and {", ".join(missing)} {"is" if len(missing) == 1 else "are"}'
             f' missing from {manual_dir}' if missing else '')
    raise DatasetNotReadyError(
        f'Dataset {name} is not prepared in {data_dir}{where}; preparing it '
        f'failed with {type(e).__name__}: {e}\n{hint}') from e
  return builder
