"""A run's ponder maps evaluated as saliency maps (paper section 4.3).

`evaluate_run` is the whole evaluation behind `experiments.cat2000`: it
loads an ACT/SACT run, computes the total ponder map of every image of the
data set (`PonderMapper`), runs `evaluate_protocol` on the two halves and
writes the summary as JSON; `format_table` prints that summary like the
paper's Table 2.
"""

import os
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf

from sact_tf import data
from sact_tf import inference
from sact_tf import progress
from sact_tf.data import cat2000 as cat2000_data
from sact_tf.saliency import datasets
from sact_tf.saliency import metrics
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import evaluation

DATASETS = ('cat2000', 'clutter_digits')
# Images per category and half used by default (None: all of them).
DEFAULT_MAX_IMAGES = {'cat2000': None, 'clutter_digits': 25}
# (width, height) the CAT2000 images are resized to by default: the paper's
# size for its ImageNet model.
DEFAULT_CAT2000_SIZE = (320, 180)
# How the saliency map of an image is made, as the summary records it.
SALIENCY_MAP = ('total ponder map: per-position ponder cost summed over the '
                'blocks, nearest-upsampled to the model input size')
# The summary's result rows and their labels in the printed table.
ROWS = (('center_baseline', 'Centre baseline'),
        ('ponder', '{model} ponder map'),
        ('ponder_center', '{model} + centre baseline'))


class UnusableRunError(ValueError):
  """The run directory cannot give ponder maps.

  It holds a plain ResNet (no ponder maps), or its checkpoint does not fit
  the model its config describes.
  """


def parse_image_size(text):
  """Parses an image size given as text.

  Args:
    text: 'WIDTHxHEIGHT' (e.g. '320x180', 'x' or 'X'), or 'N' for NxN.

  Returns:
    `(width, height)`, both positive.

  Raises:
    ValueError: `text` is not such a size.
  """
  match = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?', str(text))
  if match:
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width > 0 and height > 0:
      return width, height
  raise ValueError(
      f'--image_size must be WIDTHxHEIGHT in pixels, both positive, e.g. '
      f'320x180 (ImageNet model, as in the paper) or 640x360 (COCO model); '
      f'got {text!r}.')


def resize_image(image, width, height):
  """uint8 `[H, W, 3]` -> uint8 `[height, width, 3]` (bilinear, antialiased).

  The aspect ratio is not kept: like the paper, the images are resized to
  exactly the given size.
  """
  image = np.asarray(image)
  if image.shape[:2] == (height, width):
    return image
  resized = tf.image.resize(image, (height, width), method='bilinear',
                            antialias=True)
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


class PonderMapper:
  """Image -> total ponder map of a run's model at a fixed input size.

  Calling it resizes a uint8 `[H, W, 3]` image to exactly `width` x `height`
  (`resize_image`), runs the model with the run's input normalisation and
  returns the per-position ponder cost summed over the blocks, each block's
  map nearest-upsampled to the input size (`inference.ponder_maps`), as
  float32 `[height, width]`. Inside a `with mapper:` block its `progress`
  (a `sact_tf.progress.Progress`) counts the images mapped.
  """

  def __init__(self, model, preprocessing, width, height, total=None):
    """Keeps the model and compiles its prediction function.

    Args:
      model: an ACT or SACT `ResNet`.
      preprocessing: the run's input normalisation ('inception' or 'cifar').
      width, height: the model's input size.
      total: the images it will map, for the progress report (None:
        unknown).
    """
    self.model = model
    self.preprocessing = preprocessing
    self.size = (width, height)
    self.predict = inference.make_predict_fn(model, preprocessing)
    self.count = 0
    self.started = time.time()
    self.total = total
    self.progress = None

  def __call__(self, image):
    result = inference.ponder_maps(self.model, resize_image(image, *self.size),
                                   self.preprocessing, self.predict)
    self.count += 1
    if self.progress is not None:
      self.progress.update()
    return result.ponder_map.astype(np.float32)

  def __enter__(self):
    self.progress = progress.Progress('Ponder maps', self.total,
                                      unit='image')
    return self

  def __exit__(self, exc_type, exc, traceback):
    self.progress.close(failed=exc_type is not None)
    self.progress = None
    return False


def _resolution_line(summary):
  def side(value):
    return f'longer side {value}' if value else 'the fixation map size'
  return (f'Maps blurred and mixed at {side(summary.get("map_resolution"))}; '
          f'parameters chosen against fixations pooled to '
          f'{side(summary.get("tune_resolution"))}; test AUC-Judd at full '
          f'fixation resolution.')


def format_table(summary):
  """The printed report of an `evaluate_run` summary, Table 2 style.

  A header (data set, halves, model, image size, resolutions), one line per
  row of `ROWS` with its mean AUC-Judd and chosen parameters, then the
  AUC-Judd of each row per category ('n/a' where a score is missing).
  """
  results = summary['results']
  model = summary['model']['model_type'].upper()
  width, height = summary['image_size']
  lines = [
      f'Saliency on {summary["dataset"]}: AUC-Judd on the second half '
      f'({summary["num_test"]} images, {len(summary["categories"])} '
      f'categories), parameters tuned on the first half '
      f'({summary["num_tune"]} images).',
      f'Model {summary["checkpoint"]} ({summary["model"]["model_type"]}, '
      f'{summary["model"]["family"]} units '
      f'{",".join(map(str, summary["model"]["units"]))}), images resized to '
      f'{width}x{height}; saliency = {summary["saliency_map"]}.',
      _resolution_line(summary),
      '',
      f'{"Method":<28}{"AUC-Judd":>9}  Parameters']

  def number(value):
    return '    n/a' if value is None or np.isnan(value) else f'{value:7.3f}'

  for key, label in ROWS:
    params = ', '.join(f'{k}={v:g}' for k, v in
                       sorted(results[key]['params'].items()))
    lines.append(f'{label.format(model=model):<28}'
                 f'{number(results[key]["auc"]):>9}  {params}')
  labels = ['Centre', model, f'{model}+centre']
  name_width = max([len('Category')] +
                   [len(c) for c in summary['categories']]) + 2
  lines += ['', 'AUC-Judd per category:',
            f'{"Category":<{name_width}}' +
            ''.join(f'{label:>14}' for label in labels)]
  for category in summary['categories']:
    lines.append(f'{category:<{name_width}}' + ''.join(
        f'{number(results[key]["per_category"][category]):>14}'
        for key, _ in ROWS))
  return '\n'.join(lines)


def _check_run(model_dir, checkpoint):
  """The run's config, checked to be an ACT/SACT run with a checkpoint."""
  config = config_lib.load(model_dir)
  if config is None:
    raise FileNotFoundError(
        f'No {config_lib.CONFIG_FILENAME} in {model_dir}: point '
        '--model_dir at the directory of an ACT/SACT training run '
        '(experiments.imagenet / cifar10) or of '
        'experiments.import_checkpoint.')
  if config.model.model_type == 'resnet':
    raise UnusableRunError(
        f'{model_dir} holds a plain ResNet, which has no ponder maps: '
        'saliency needs an ACT or SACT run (--model_type=act or sact).')
  checkpointing.resolve(checkpoint or model_dir)
  return config


def _image_count(builder, dataset, max_images):
  """The images the reader of `dataset` maps when it takes every image of
  its splits (`max_images` None), else None (unknown before reading)."""
  if max_images:
    return None
  splits = cat2000_data.SPLITS if dataset == 'cat2000' else ('test',)
  try:
    return sum(int(builder.info.splits[s].num_examples) for s in splits)
  except (KeyError, TypeError, ValueError, AttributeError):
    return None


def evaluate_run(model_dir, dataset='cat2000', *, checkpoint=None,
                 data_dir=None, manual_dir=None, image_size=None, output=None,
                 map_resolution=metrics.MAP_RESOLUTION,
                 tune_resolution=metrics.TUNE_RESOLUTION,
                 max_images_per_category=None):
  """Evaluates a run's ponder maps as saliency maps; writes the summary.

  Loads the run's model (config.json and its latest checkpoint, or
  `checkpoint`), computes the total ponder map of every image of `dataset`
  resized to exactly `image_size` (`PonderMapper`), then runs
  `evaluate_protocol`: parameters chosen on the first half of each
  category, AUC-Judd reported on the second half (`sact_tf.saliency.
  datasets` says what the halves and the fixations of each data set are).
  The data set is made ready before the model loads, so that a missing one
  is reported first.

  Args:
    model_dir: run directory of an ACT/SACT model.
    dataset: 'cat2000' (prepared from its manual download when needed, see
      `sact_tf.data.cat2000.prepare`) or 'clutter_digits' (generated offline
      when missing).
    checkpoint: checkpoint directory or prefix to restore instead of the
      latest of `model_dir`.
    data_dir: TFDS data directory (None: $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    manual_dir: cat2000: the folder holding trainSet.zip or trainSet/
      (None: <data_dir>/downloads/manual).
    image_size: `(width, height)` of the model's input (None:
      `DEFAULT_CAT2000_SIZE` for cat2000, the run's square training size for
      clutter_digits).
    output: JSON file to write (None: <model_dir>/saliency_<dataset>.json).
    map_resolution: longer side of the grid the maps are blurred and mixed
      on (0 or None: the fixation maps' size).
    tune_resolution: longer side of the pooled fixation maps the parameters
      are chosen on (0 or None: full resolution).
    max_images_per_category: images of each category used in each half
      (None: `DEFAULT_MAX_IMAGES` of the data set; 0: all).

  Returns:
    `(summary, output)`: the summary written (data set, model, settings,
    `results` as `evaluate_protocol` returns them with NaN written as None,
    timings) and the path of the JSON file.

  Raises:
    ValueError: an unknown data set, or a corrupt checkpoint.
    UnusableRunError (a ValueError): the run is a plain ResNet, or its
      checkpoint does not fit its config.
    FileNotFoundError, data.DatasetNotReadyError: no run, no checkpoint or
      no data set; the message says what to do.
  """
  if dataset not in DATASETS:
    raise ValueError(f'Unknown saliency data set {dataset!r}: choose one of '
                     f'{", ".join(DATASETS)}.')
  config = _check_run(model_dir, checkpoint)  # Fail early.
  if image_size is not None:
    width, height = image_size
  elif dataset == 'cat2000':
    width, height = DEFAULT_CAT2000_SIZE
  else:
    width = height = config.data.image_size
  max_images = max_images_per_category
  if max_images is None:
    max_images = DEFAULT_MAX_IMAGES[dataset]
  max_images = max_images or None  # 0: all.
  if dataset == 'cat2000':
    builder = cat2000_data.prepare(data_dir, manual_dir)
    read = datasets.read_cat2000
  else:
    builder = data.prepare('clutter_digits', data_dir, download=False)
    read = datasets.read_clutter_digits
  try:
    config, model, prefix = checkpointing.load_run(model_dir,
                                                   checkpoint=checkpoint)
  except ValueError as e:
    raise UnusableRunError(str(e)) from e
  mapper = PonderMapper(model, config.data.preprocessing, width, height,
                        total=_image_count(builder, dataset, max_images))
  started = time.time()
  with mapper:
    tune, test = read(builder, mapper, max_images)
  inference_seconds = time.time() - started
  logging.info('Ponder maps of %d images in %.1f s; tuning and scoring.',
               len(tune) + len(test), inference_seconds)
  with progress.Progress('Saliency scoring (2 tuning passes + test)',
                         2 * len(tune) + len(test), unit='image') as scoring:
    results = metrics.evaluate_protocol(
        tune, test, map_resolution=map_resolution or None,
        tune_resolution=tune_resolution or None, on_image=scoring.update)
  summary = dict(
      dataset=dataset, model_dir=model_dir, checkpoint=prefix,
      model=config.model_fields(), preprocessing=config.data.preprocessing,
      image_size=[width, height], saliency_map=SALIENCY_MAP,
      fixations=('digit pixels (brightest channel >= '
                 f'{datasets.DIGIT_THRESHOLD} inside the digit box)'
                 if dataset == 'clutter_digits' else 'fixLocs'),
      max_images_per_category=max_images or 0,
      map_resolution=map_resolution or 0,
      tune_resolution=tune_resolution or 0,
      num_tune=len(tune), num_test=len(test),
      categories=sorted({c for _, _, c in test}),
      grids=dict(blur=list(metrics.BLUR_GRID),
                 center_sigma=list(metrics.CENTER_SIGMA_GRID),
                 center_weight=list(metrics.CENTER_WEIGHT_GRID)),
      results=results,
      seconds=dict(ponder_maps=inference_seconds,
                   protocol=time.time() - started - inference_seconds))
  summary = evaluation.nan_to_none(summary)
  output = output or os.path.join(model_dir, f'saliency_{dataset}.json')
  config_lib.write_json(output, summary)
  return summary, output
