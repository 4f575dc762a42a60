r"""Build a SACT ResNet, run one image, print FLOPs and ponder cost per block.

  python -m experiments.quickstart                      # random weights
  python -m experiments.quickstart --image=photo.jpg --image_size=320
  python -m experiments.quickstart \
      --authors_checkpoint=path/to/model.ckpt --model=101 --model_type=sact

Without a checkpoint the weights are random (halting bias -3, so almost every
unit runs): the printout shows the mechanics, not a trained model's behaviour.
"""

import importlib.resources
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from experiments import startup
from sact_tf import checkpoints
from sact_tf import flops as flops_lib
from sact_tf import models

FLAGS = flags.FLAGS
flags.DEFINE_string('image', None, 'JPEG/PNG file; default: a photo that '
                    'ships with scikit-learn (china.jpg).')
flags.DEFINE_integer('image_size', 320, 'Resize so that the longer side has '
                     'this many pixels.', lower_bound=32)
flags.DEFINE_enum('model_type', 'sact', ['resnet', 'act', 'sact'], 'Model.')
flags.DEFINE_string('model', '101', 'ResNet depth (50, 101, 152, 200) or a '
                    'comma list of four unit counts.')
flags.DEFINE_integer('base_channels', 64, 'Bottleneck width of block 1.',
                     lower_bound=1)
flags.DEFINE_integer('num_classes', 1001, 'Classifier outputs.', lower_bound=1)
flags.DEFINE_string('authors_checkpoint', None, 'Optional checkpoint in the '
                    "authors' TF1 format to load.")


def parse_model(value):
  """'101' -> dict(depth=101); '3,4,6,3' -> dict(units=[3, 4, 6, 3])."""
  parts = [p.strip() for p in value.split(',') if p.strip()]
  try:
    numbers = [int(p) for p in parts]
  except ValueError:
    raise ValueError(f'--model must be a depth or a comma list of ints, got '
                     f'{value!r}.') from None
  return dict(depth=numbers[0]) if len(numbers) == 1 else dict(units=numbers)


def load_image(path, size):
  """An image as float `[1, H, W, 3]` in [-1, 1], longer side `size`."""
  if path is None:
    path = str(importlib.resources.files('sklearn.datasets') / 'images' /
               'china.jpg')
  if not tf.io.gfile.exists(path):
    raise app.UsageError(f'--image: no file at {path}.')
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
  height, width = image.shape[0], image.shape[1]
  scale = size / max(height, width)
  new_size = [max(1, round(height * scale)), max(1, round(width * scale))]
  image = tf.image.resize(tf.cast(image, tf.float32), new_size)
  return (image / 127.5 - 1.0)[tf.newaxis]


def main(argv):
  del argv
  model = models.imagenet_resnet(
      model_type=FLAGS.model_type, base_channels=FLAGS.base_channels,
      num_classes=FLAGS.num_classes, **parse_model(FLAGS.model))
  images = load_image(FLAGS.image, FLAGS.image_size)
  model(images[:, :32, :32])
  if FLAGS.authors_checkpoint:
    summary = checkpoints.load_authors_checkpoint(model,
                                                  FLAGS.authors_checkpoint)
    print(f'Loaded {summary.num_variables} variables from '
          f'{summary.checkpoint_path} (global step {summary.global_step}).')
  out = model(images, training=False)
  plain = flops_lib.imagenet_resnet_flops(
      units=model.units_per_block, height=images.shape[1],
      width=images.shape[2], num_classes=FLAGS.num_classes,
      base_channels=FLAGS.base_channels)
  total = int(out['flops'][0])
  print(f'Image {images.shape[1]}x{images.shape[2]}, {FLAGS.model_type} '
        f'ResNet, units per block {model.units_per_block}')
  print(f'{"block":8} {"units":>5} {"ponder cost":>11} {"min":>6} '
        f'{"max":>6} {"GFLOPs":>8}')
  for block, units in zip(model.block_names, model.units_per_block):
    line = f'{block:8} {units:5d} '
    if f'{block}/ponder_map' in out:
      ponder = out[f'{block}/ponder_map'][0].numpy()
      line += f'{ponder.mean():11.3f} {ponder.min():6.2f} {ponder.max():6.2f} '
    else:
      line += f'{"-":>11} {"-":>6} {"-":>6} '
    print(line + f'{int(out[f"{block}/flops"][0]) / 1e9:8.3f}')
  print(f'Total: {total / 1e9:.3f} GFLOPs, {100 * total / plain:.1f} % of the '
        f'plain ResNet ({plain / 1e9:.3f} GFLOPs); top class '
        f'{int(np.argmax(out["logits"][0]))}.')


if __name__ == '__main__':
  startup.show_in_help(sys.argv[0])
  app.run(main)
