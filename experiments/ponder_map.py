r"""Draw ponder maps of an ACT/SACT model on your own images.

  python -m experiments.ponder_map --model_dir=/tmp/sact101 \
      --images='photos/*.jpg' --output_dir=/tmp/ponder --image_size=640

For each image it writes, to --output_dir:

  <name>_ponder.png    the ponder cost per position, summed over blocks and
                       nearest-upsampled to the image, in viridis;
  <name>_overlay.png   the image with the map laid over it
                       (image * 0.25 + 0.75 * colour, as the authors drew);
  <name>_colorbar.png  the colour scale of both;

and prints the minimum, mean and maximum ponder cost of the map, the FLOPs
spent and the top class. An image that cannot be read (corrupt, truncated,
empty, not an image) is reported in one line and skipped; the others are
drawn, and the run then ends with an error naming the skipped files (exit
status 1). The colour scale runs from the map's minimum to its
maximum (--scale=image, the authors' choice) or from 0 to the largest
possible summed ponder cost (--scale=model, comparable across images).

Any image size works (the models are fully convolutional); --image_size
resizes the longer side first. ImageNet models give the clearest maps on
images between 320x240 and 640x480.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np

from experiments import common
from sact_tf import fileio
from sact_tf import inference
from sact_tf import viz
from sact_tf.train import checkpointing

FLAGS = flags.FlagValues()
flags.DEFINE_string('model_dir', None, 'Run directory holding config.json '
                    'and checkpoints.', flag_values=FLAGS)
flags.DEFINE_string('images', None, 'Image files: a glob or comma-separated '
                    'globs (JPEG, PNG, BMP, GIF).', flag_values=FLAGS)
flags.DEFINE_string('output_dir', None, 'Where the PNGs go (created).',
                    flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, 'Resize each image so that its '
                     'longer side has this many pixels (default: keep).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum('scale', 'image', ['image', 'model'], 'Colour scale: each '
                  'map\'s own min..max, or 0..the largest possible value.',
                  flag_values=FLAGS)
flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix or directory '
                    'instead of the latest in --model_dir.', flag_values=FLAGS)


def find_images(patterns):
  """Sorted, distinct files matched by comma-separated globs."""
  paths, empty = [], []
  for pattern in (p.strip() for p in patterns.split(',') if p.strip()):
    matched = sorted(p for p in fileio.glob(fileio.expanduser(pattern))
                     if fileio.exists(p) and not fileio.isdir(p))
    if not matched:
      empty.append(pattern)
    paths.extend(matched)
  if empty:
    raise ValueError(f'No image files match {", ".join(empty)}: check the '
                     'path and quote the glob so the shell does not expand '
                     'it.')
  return list(dict.fromkeys(paths))


def output_names(paths):
  """A distinct file stem per input path (a.jpg, dir2/a.png -> a, a_2)."""
  names, used = [], set()
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = stem, 1
    while name in used:
      k += 1
      name = f'{stem}_{k}'
    used.add(name)
    names.append(name)
  return names


def draw(image, ponder_map, vmin, vmax):
  """(ponder PNG, overlay PNG) arrays, float RGB in [0, 1]."""
  heat = viz.colorize(ponder_map, vmin, vmax).numpy()
  return heat, viz.overlay(image.astype(np.float32) / 255.0, heat)


class SkippedImagesError(ValueError):
  """Some images could not be read; the others were drawn."""

  def __init__(self, failures, total):
    self.failures = dict(failures)
    names = ', '.join(self.failures)
    super().__init__(f'{len(self.failures)} of {total} images could not be '
                     f'read and were skipped: {names}')


def main(argv):
  """Draws the ponder maps of --images; returns {path: PonderResult}.

  Raises:
    app.UsageError: missing flags, no matching image, or an unusable run.
    SkippedImagesError: after drawing the others, when some images could
      not be read (each is reported as it is met).
  """
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'model_dir', 'images', 'output_dir')
  try:
    paths = find_images(FLAGS.images)
    config, model, _ = checkpointing.load_run(FLAGS.model_dir,
                                              FLAGS.checkpoint)
    if model.model_type == 'resnet':
      raise ValueError(f'{FLAGS.model_dir} holds a plain ResNet, which has '
                       'no ponder maps: use an ACT or SACT run.')
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  fileio.makedirs(FLAGS.output_dir)
  predict = inference.make_predict_fn(model, config.data.preprocessing)
  model_max = viz.max_ponder_value(model.units_per_block)
  results, failures = {}, {}
  print(f'{"image":<28}{"size":>11}{"min":>8}{"mean":>8}{"max":>8}'
        f'{"FLOPs":>11}  top class (p)', flush=True)
  for path, name in zip(paths, output_names(paths)):
    try:
      image = inference.resize_longer_side(inference.read_image(path),
                                           FLAGS.image_size)
    except (ValueError, FileNotFoundError) as e:
      failures[path] = str(e)
      print(f'Skipped: {e}', file=sys.stderr, flush=True)
      continue
    result = inference.ponder_maps(model, image, config.data.preprocessing,
                                   predict_fn=predict)
    ponder = result.ponder_map
    low, high = float(ponder.min()), float(ponder.max())
    vmin, vmax = (low, max(high, low + 1e-6)) if FLAGS.scale == 'image' else (
        0.0, model_max)
    heat, overlaid = draw(image, ponder, vmin, vmax)
    stem = os.path.join(FLAGS.output_dir, name)
    viz.write_png(stem + '_ponder.png', heat)
    viz.write_png(stem + '_overlay.png', overlaid)
    viz.colorbar_png(stem + '_colorbar.png', vmin, vmax,
                     label='ponder cost (sum over blocks)')
    top = int(result.probabilities.argmax())
    print(f'{os.path.basename(path)[:27]:<28}'
          f'{f"{image.shape[1]}x{image.shape[0]}":>11}{low:8.2f}'
          f'{float(ponder.mean()):8.2f}{high:8.2f}{result.flops:11.3g}  '
          f'{top} ({result.probabilities[top]:.2f})', flush=True)
    results[path] = result
  skipped = f'; skipped {len(failures)} unreadable' if failures else ''
  print(f'Wrote {3 * len(results)} PNGs for {len(results)} of {len(paths)} '
        f'images to {FLAGS.output_dir}{skipped}.', flush=True)
  if failures:
    raise SkippedImagesError(failures, len(paths))
  return results


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)
