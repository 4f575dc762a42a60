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

from absl import app
from absl import flags

from experiments import common
from sact_tf import saliency

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('model_dir', None, 'Run directory of an ACT/SACT model '
                    '(config.json and checkpoints).', **_fv)
flags.DEFINE_string('checkpoint', None, 'Checkpoint (directory or prefix) to '
                    'restore instead of the latest of --model_dir.', **_fv)
flags.DEFINE_enum('dataset', 'cat2000', saliency.DATASETS, 'cat2000 (manual '
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


def _check_image_size(value):
  if value is not None:
    try:
      saliency.parse_image_size(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
  return True


flags.register_validator('image_size', _check_image_size, flag_values=FLAGS)


def main(argv):
  """Runs the evaluation; `argv` may carry flags (tests pass a command line).

  Returns the summary that `sact_tf.saliency.evaluate_run` wrote.

  Raises:
    app.UsageError: no --model_dir, or the run cannot give ponder maps.
  """
  common.parse(FLAGS, argv)
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required: the directory of an '
                         'ACT/SACT training run.')
  image_size = (None if FLAGS.image_size is None
                else saliency.parse_image_size(FLAGS.image_size))
  try:
    summary, output = saliency.evaluate_run(
        FLAGS.model_dir, FLAGS.dataset, checkpoint=FLAGS.checkpoint,
        data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir,
        image_size=image_size, output=FLAGS.output,
        map_resolution=FLAGS.map_resolution,
        tune_resolution=FLAGS.tune_resolution,
        max_images_per_category=FLAGS.max_images_per_category)
  except saliency.UnusableRunError as e:
    raise app.UsageError(str(e)) from e
  print(saliency.format_table(summary), flush=True)
  print(f'Results: {output}', flush=True)
  return summary


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)
