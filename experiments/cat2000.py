r"""Ponder maps as saliency maps: AUC-Judd on CAT2000 (paper section 4.3).

  python -m experiments.cat2000 --model_dir=RUN --image_size=320x180 \
      --data_dir=~/tensorflow_datasets --manual_dir=DIR_WITH_trainSet.zip
  python -m experiments.cat2000 --model_dir=RUN --dataset=clutter_digits

Loads an ACT/SACT run (config.json + latest checkpoint of --model_dir),
resizes every image to exactly --image_size (WIDTHxHEIGHT; the paper uses
320x180 for its ImageNet model and 640x360 for its COCO model) and runs the
model with the run's input normalisation. The saliency map of an image is its
total ponder map: the per-position ponder cost summed over the blocks, each
block's map nearest-upsampled to the model's input size
(`sact_tf.inference.ponder_maps`). `sact_tf.saliency.evaluate_protocol` then
blurs, normalises and mixes it with a centre Gaussian on a working grid
(longer side --map_resolution, 320x180 for CAT2000; AUC-Judd resizes the map
to the fixation map, as the benchmark does), choosing blur width, centre
width and centre weight on the first half of each category's images and
reporting AUC-Judd on the second half. Tuning scores against fixation maps
pooled to a longer side of --tune_resolution (a cell is fixated if any of
its pixels is; 0 tunes at full resolution, ~10x slower); the reported scores
are exact AUC-Judd at the fixation maps' full resolution. The whole CAT2000
protocol takes about 5 minutes on 2 CPU cores
(`python -m benchmarks.saliency_speed`), after the ponder maps.
It prints a table like the paper's Table 2 (centre baseline, ponder map,
ponder map + centre baseline; mean and per-category AUC-Judd, chosen
parameters) and writes it as JSON to --output (default
<model_dir>/saliency_<dataset>.json).

--dataset=cat2000 (default) reads the CAT2000 training set with the `cat2000`
TFDS builder, preparing it from trainSet.zip in --manual_dir (default
<data_dir>/downloads/manual) when needed; its splits are the first and the
second half of each category (file name order).

--dataset=clutter_digits is an offline demo on the clutter_digits test split
(generated on the spot if missing): the fixations are the digit's pixels (the
pixels of the digit's box whose brightest channel is at least 128; clutter
never enters that box and the background is at most 51, so these are the
digit's strokes), the categories are the digit classes, and the examples of
each class are cut into a first and a second half in dataset order. The
fixation maps are at the 64x64 canvas resolution; --image_size defaults to
the run's training size (square), the scale the model saw in training.
"""

import os
import re
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import common
from sact_tf import data
from sact_tf import inference
from sact_tf import saliency
from sact_tf.data import cat2000 as cat2000_data
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import evaluation

DATASETS = ('cat2000', 'clutter_digits')
# Images per category and half used by default (None: all of them).
DEFAULT_MAX_IMAGES = {'cat2000': None, 'clutter_digits': 25}
DEFAULT_CAT2000_SIZE = (320, 180)
# clutter_digits: a pixel of the digit's box is a fixation when its brightest
# channel reaches this value (the digit's colour has a channel at 255, the
# background is at most 0.2 * 255).
DIGIT_THRESHOLD = 128
SALIENCY_MAP = ('total ponder map: per-position ponder cost summed over the '
                'blocks, nearest-upsampled to the model input size')
ROWS = (('center_baseline', 'Centre baseline'),
        ('ponder', '{model} ponder map'),
        ('ponder_center', '{model} + centre baseline'))

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('model_dir', None, 'Run directory of an ACT/SACT model '
                    '(config.json and checkpoints).', **_fv)
flags.DEFINE_string('checkpoint', None, 'Checkpoint (directory or prefix) to '
                    'restore instead of the latest of --model_dir.', **_fv)
flags.DEFINE_enum('dataset', 'cat2000', DATASETS, 'cat2000 (manual '
                  'download) or the offline clutter_digits demo.', **_fv)
flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: '
                    '$TFDS_DATA_DIR or ~/tensorflow_datasets).', **_fv)
flags.DEFINE_string('manual_dir', None, 'cat2000: folder holding '
                    'trainSet.zip or the extracted trainSet/ (default: '
                    '<data_dir>/downloads/manual).', **_fv)
flags.DEFINE_string('image_size', None, 'WIDTHxHEIGHT the images are resized '
                    'to before the model, e.g. 320x180 (ImageNet model, as in '
                    'the paper) or 640x360 (COCO model); a single N means NxN. '
                    'Default: 320x180 for cat2000, the run\'s training size '
                    'for clutter_digits.', **_fv)
flags.DEFINE_string('output', None, 'JSON results (default: '
                    '<model_dir>/saliency_<dataset>.json).', **_fv)
flags.DEFINE_integer('map_resolution', saliency.MAP_RESOLUTION, 'Longer '
                     'side (pixels) of the grid the saliency maps are blurred '
                     'and mixed on before AUC-Judd resizes them to the '
                     'fixation maps (0: the fixation maps\' size, very slow '
                     'at 1920x1080).', lower_bound=0, **_fv)
flags.DEFINE_integer('tune_resolution', saliency.TUNE_RESOLUTION, 'Longer '
                     'side (pixels) of the pooled fixation maps the '
                     'parameters are chosen on (0: full resolution). The '
                     'reported test scores are always at full resolution.',
                     lower_bound=0, **_fv)
flags.DEFINE_integer('max_images_per_category', None, 'Use at most N images '
                     'of each category in each half (0: all). Default: all '
                     'for cat2000, 25 for clutter_digits.', lower_bound=0,
                     **_fv)


def parse_image_size(text):
  """'WIDTHxHEIGHT' (or 'N' for NxN) -> (width, height)."""
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


def _check_image_size(value):
  if value is not None:
    try:
      parse_image_size(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
  return True


flags.register_validator('image_size', _check_image_size, flag_values=FLAGS)


class SparseFixations:
  """A binary fixation map kept as the flat indices of its fixated pixels.

  CAT2000's maps are 1080x1920 with a few hundred fixations each: dense
  copies of 2,000 of them would take gigabytes. `np.asarray` (which
  `sact_tf.saliency` applies) gives the dense map back.
  """

  ndim = 2

  def __init__(self, fixation_map):
    fixation_map = np.asarray(fixation_map)
    if fixation_map.ndim == 3:
      fixation_map = fixation_map[..., 0]
    self.shape = tuple(fixation_map.shape)
    self.indices = np.flatnonzero(fixation_map > 0)

  @property
  def num_fixations(self):
    return int(self.indices.size)

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a new array.
    dense = np.zeros(self.shape, dtype=dtype or np.uint8)
    dense.flat[self.indices] = 1
    return dense


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


def digit_fixations(image, bbox, threshold=DIGIT_THRESHOLD):
  """clutter_digits' stand-in for fixations: the digit's stroke pixels.

  Args:
    image: uint8 `[H, W, 3]` canvas.
    bbox: the digit's tight box `[ymin, xmin, ymax, xmax]` in [0, 1].
    threshold: brightest-channel value from which a pixel of the box counts
      as ink.

  Returns:
    bool `[H, W]`, True on the digit's pixels.
  """
  image = np.asarray(image)
  height, width = image.shape[:2]
  ymin, xmin, ymax, xmax = np.round(
      np.asarray(bbox, np.float64) * [height, width, height, width]).astype(
          int)
  fixations = np.zeros((height, width), bool)
  box = image[ymin:ymax, xmin:xmax].max(axis=-1) >= threshold
  fixations[ymin:ymax, xmin:xmax] = box
  return fixations


def _halves(groups, max_images):
  """{category: [items]} -> (first half, second half) of each category.

  Each category's items are cut in two in order (the first half gets
  len // 2, as the cat2000 builder does) and at most `max_images` of each
  half are kept. Returns two lists of `(category, item)`.
  """
  first, second = [], []
  for category in sorted(groups):
    items = groups[category]
    middle = len(items) // 2
    first += [(category, item) for item in items[:middle][:max_images]]
    second += [(category, item) for item in items[middle:][:max_images]]
  return first, second


class _PonderMapper:
  """Image -> total ponder map of a run's model at a fixed input size."""

  def __init__(self, model, preprocessing, width, height):
    self.model = model
    self.preprocessing = preprocessing
    self.size = (width, height)
    self.predict = inference.make_predict_fn(model, preprocessing)
    self.count = 0
    self.started = time.time()

  def __call__(self, image):
    result = inference.ponder_maps(self.model, resize_image(image, *self.size),
                                   self.preprocessing, self.predict)
    self.count += 1
    if self.count % 100 == 0:
      logging.info('Ponder maps of %d images (%.1f s).', self.count,
                   time.time() - self.started)
    return result.ponder_map.astype(np.float32)


def _clutter_digits_triples(mapper, builder, max_images):
  groups = {}
  dataset = builder.as_dataset(split='test', shuffle_files=False)
  for example in tfds.as_numpy(dataset):
    groups.setdefault(str(int(example['label'])), []).append(
        (example['image'], example['bbox']))
  return [[(mapper(image), SparseFixations(digit_fixations(image, bbox)),
            category) for category, (image, bbox) in half]
          for half in _halves(groups, max_images)]


def _prepare_cat2000(data_dir, manual_dir):
  data_dir = data.datasets.default_data_dir(data_dir)
  builder = cat2000_data.Cat2000(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  manual_dir = os.path.expanduser(
      manual_dir or os.path.join(data_dir, 'downloads', 'manual'))
  logging.info('Preparing cat2000 in %s from %s.', data_dir, manual_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except ValueError as e:  # A corrupt or wrong archive.
    raise data.DatasetNotReadyError(f'Could not prepare cat2000 in '
                                    f'{data_dir}: {e}') from e
  return builder


def _cat2000_triples(mapper, builder, max_images):
  skip = {'image': tfds.decode.SkipDecoding(),
          'fixation_map': tfds.decode.SkipDecoding()}
  halves = []
  for split in ('first_half', 'second_half'):
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders=skip)
    names = {}
    for category, name in tfds.as_numpy(
        dataset.map(lambda e: (e['category'], e['file_name']))):
      names.setdefault(category.decode(), []).append(name.decode())
    chosen = {(category, name)
              for category, items in names.items()
              for name in sorted(items)[:max_images]}
    found = {}
    for example in tfds.as_numpy(dataset):
      key = (example['category'].decode(), example['file_name'].decode())
      if key not in chosen:
        continue
      image = tf.io.decode_image(example['image'], channels=3,
                                 expand_animations=False).numpy()
      fixations = tf.io.decode_png(example['fixation_map']).numpy()
      found[key] = (mapper(image), SparseFixations(fixations), key[0])
    halves.append([found[key] for key in sorted(found)])
  return halves


def _resolution_line(summary):
  def side(value):
    return f'longer side {value}' if value else 'the fixation map size'
  return (f'Maps blurred and mixed at {side(summary.get("map_resolution"))}; '
          f'parameters chosen against fixations pooled to '
          f'{side(summary.get("tune_resolution"))}; test AUC-Judd at full '
          f'fixation resolution.')


def format_table(summary):
  """The printed report of a `run` summary: Table 2 style."""
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


def run(fv):
  """Evaluates a run's ponder maps as saliency; returns the summary dict.

  Raises:
    app.UsageError: bad flags, or the run is not an ACT/SACT model.
    FileNotFoundError, data.DatasetNotReadyError: no run or no dataset, with
      what to do.
  """
  if not fv.model_dir:
    raise app.UsageError('--model_dir is required: the directory of an '
                         'ACT/SACT training run.')
  config = config_lib.load(fv.model_dir)
  if config is None:
    raise FileNotFoundError(
        f'No {config_lib.CONFIG_FILENAME} in {fv.model_dir}: point '
        '--model_dir at the directory of an ACT/SACT training run '
        '(experiments.imagenet / cifar10) or of '
        'experiments.import_checkpoint.')
  if config.model_type == 'resnet':
    raise app.UsageError(
        f'{fv.model_dir} holds a plain ResNet, which has no ponder maps: '
        'saliency needs an ACT or SACT run (--model_type=act or sact).')
  checkpointing.resolve(fv.checkpoint or fv.model_dir)  # Fail early.
  if fv.image_size is not None:
    width, height = parse_image_size(fv.image_size)
  elif fv.dataset == 'cat2000':
    width, height = DEFAULT_CAT2000_SIZE
  else:
    width = height = config.image_size
  max_images = fv.max_images_per_category
  if max_images is None:
    max_images = DEFAULT_MAX_IMAGES[fv.dataset]
  max_images = max_images or None  # 0: all.
  # The data first: a missing dataset is reported before the model loads.
  if fv.dataset == 'cat2000':
    builder = _prepare_cat2000(fv.data_dir, fv.manual_dir)
  else:
    builder = data.prepare('clutter_digits', fv.data_dir, download=False)
  try:
    config, model, prefix = checkpointing.load_run(fv.model_dir,
                                                   checkpoint=fv.checkpoint)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  mapper = _PonderMapper(model, config.preprocessing, width, height)
  started = time.time()
  if fv.dataset == 'cat2000':
    tune, test = _cat2000_triples(mapper, builder, max_images)
  else:
    tune, test = _clutter_digits_triples(mapper, builder, max_images)
  inference_seconds = time.time() - started
  logging.info('Ponder maps of %d images in %.1f s; tuning and scoring.',
               len(tune) + len(test), inference_seconds)
  results = saliency.evaluate_protocol(
      tune, test, map_resolution=fv.map_resolution or None,
      tune_resolution=fv.tune_resolution or None)
  summary = dict(
      dataset=fv.dataset, model_dir=fv.model_dir, checkpoint=prefix,
      model=config.model_fields(), preprocessing=config.preprocessing,
      image_size=[width, height], saliency_map=SALIENCY_MAP,
      fixations=('digit pixels (brightest channel >= '
                 f'{DIGIT_THRESHOLD} inside the digit box)'
                 if fv.dataset == 'clutter_digits' else 'fixLocs'),
      max_images_per_category=max_images or 0,
      map_resolution=fv.map_resolution, tune_resolution=fv.tune_resolution,
      num_tune=len(tune), num_test=len(test),
      categories=sorted({c for _, _, c in test}),
      grids=dict(blur=list(saliency.BLUR_GRID),
                 center_sigma=list(saliency.CENTER_SIGMA_GRID),
                 center_weight=list(saliency.CENTER_WEIGHT_GRID)),
      results=results,
      seconds=dict(ponder_maps=inference_seconds,
                   protocol=time.time() - started - inference_seconds))
  summary = evaluation.nan_to_none(summary)
  output = fv.output or os.path.join(fv.model_dir,
                                     f'saliency_{fv.dataset}.json')
  config_lib.write_json(output, summary)
  print(format_table(summary), flush=True)
  print(f'Results: {output}', flush=True)
  return summary


def main(argv):
  """Runs the evaluation; `argv` may carry flags (tests pass a command line)."""
  common.parse(FLAGS, argv)
  return run(FLAGS)


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)
