"""clutter_digits_detection: several handwritten digits per cluttered canvas.

The detection variant of `sact_tf.data.clutter_digits`, for running the
whole detection pipeline offline: each 128x128 image shows 2-4 of
scikit-learn's 8x8 handwritten digits, upscaled to 24-40 px, at random
non-overlapping places among pieces of other digits (clutter). Each digit
is an object with its tight ink box and its class (0-9); clutter pieces are
not objects, so a detector must read the digits, not just find ink.

The features follow TFDS `coco/2017` (`image`, `image/id`, `objects` with
`bbox`, `label`, `area`, `is_crowd`), so the same input pipeline and
pycocotools evaluation serve both. Train and test digits come from disjoint
source digits (`sact_tf.data.clutter_digits.source_indices`), and generation
is deterministic and needs no download.
"""

import io

import numpy as np
from scipy import ndimage
import tensorflow_datasets as tfds

from sact_tf.data import clutter_digits

CANVAS = 128
NUM_CLASSES = 10
NUM_EXAMPLES = {'train': 4000, 'test': 500}
DIGITS_PER_IMAGE = (2, 4)
DIGIT_SIZE = (24, 40)
FRAGMENTS = (4, 8)
# Source pixels per side of a clutter piece (of 8).
FRAGMENT_SIZE = (3, 5)
# Ink above this alpha belongs to the digit's box.
INK_THRESHOLD = clutter_digits.INK_THRESHOLD
_SEEDS = {'train': 11, 'test': 12}
_PLACEMENT_TRIES = 50


def load_digits():
  """scikit-learn's digits: (`[1797, 8, 8]` ink in [0, 1], int64 labels)."""
  return clutter_digits.load_digits('clutter_digits_detection')


def upscale(digit, size):
  """An `[8, 8]` digit bilinearly upscaled to `[size, size]`, in [0, 1]."""
  return np.clip(ndimage.zoom(digit, size / digit.shape[0], order=1), 0, 1)


ink_box = clutter_digits.ink_box


def _overlaps(box, boxes, margin=0):
  return any(box[0] < b[2] + margin and b[0] < box[2] + margin and
             box[1] < b[3] + margin and b[1] < box[3] + margin
             for b in boxes)


def render(digits, sources, rng, canvas=CANVAS):
  """Draws one image.

  Args:
    digits: `[K, 8, 8]` the digits to show (ink in [0, 1]).
    sources: `[N, 8, 8]` digits to cut clutter pieces from.
    rng: a `np.random.Generator`.
    canvas: the image's height and width.

  Returns:
    (uint8 image `[canvas, canvas, 3]`, int64 `[k]` indices into `digits`
    of the digits placed, float32 `[k, 4]` their boxes in pixels); a digit
    that finds no free place after some tries is left out.
  """
  image = np.empty((canvas, canvas, 3), np.float32)
  image[:] = rng.uniform(0.0, 0.2, size=3)
  placed, boxes, layers = [], [], []
  for index, digit in enumerate(digits):
    size = int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1))
    alpha = upscale(digit, size)
    local = ink_box(alpha)
    for _ in range(_PLACEMENT_TRIES):
      top = int(rng.integers(0, canvas - size + 1))
      left = int(rng.integers(0, canvas - size + 1))
      box = local + [top, left, top, left]
      # A 2-pixel gap keeps every box free of other digits' ink.
      if not _overlaps(box, boxes, margin=2):
        placed.append(index)
        boxes.append(box)
        layers.append((alpha, top, left))
        break
  for _ in range(int(rng.integers(FRAGMENTS[0], FRAGMENTS[1] + 1))):
    size = int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1))
    piece = clutter_digits.cut_fragment(
        upscale(sources[rng.integers(len(sources))], size), rng,
        FRAGMENT_SIZE)
    if piece is None:
      continue
    ph, pw = piece.shape
    for _ in range(_PLACEMENT_TRIES):
      top = int(rng.integers(0, canvas - ph + 1))
      left = int(rng.integers(0, canvas - pw + 1))
      if not _overlaps((top, left, top + ph, left + pw), boxes, margin=1):
        clutter_digits.paste(image, piece, top, left,
                             clutter_digits.random_colour(rng))
        break
  for alpha, top, left in layers:
    clutter_digits.paste(image, alpha, top, left,
                         clutter_digits.random_colour(rng))
  image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return (image, np.asarray(placed, np.int64),
          np.asarray(boxes, np.float32).reshape(-1, 4))


def generate(split, images=None, labels=None, num_examples=None):
  """Yields `(key, example)` pairs of `split` ('train' or 'test').

  `images` (`[N, 8, 8]` in [0, 1]) and `labels` default to scikit-learn's
  digits; `num_examples` to `NUM_EXAMPLES[split]`. Tests may pass fewer.
  """
  if split not in NUM_EXAMPLES:
    raise ValueError(f'Unknown split {split!r}: allowed values are '
                     f'{sorted(NUM_EXAMPLES)}.')
  if images is None:
    images, labels = load_digits()
  indices = clutter_digits.source_indices(split)
  indices = indices[indices < len(images)]
  rng = np.random.default_rng(_SEEDS[split])
  count = NUM_EXAMPLES[split] if num_examples is None else num_examples
  for key in range(count):
    chosen = rng.choice(indices, size=int(rng.integers(
        DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1)), replace=False)
    image, placed, boxes = render(images[chosen], images[indices], rng)
    objects = [{
        'bbox': tfds.features.BBox(*(box / CANVAS).tolist()),
        'label': int(labels[chosen[i]]),
        'area': int((box[2] - box[0]) * (box[3] - box[1])),
        'is_crowd': False,
    } for i, box in zip(placed, boxes)]
    yield key, {
        'image': io.BytesIO(clutter_digits.encode_png(image)),
        # COCO image ids start at 1; so do these, split apart.
        'image/id': key + 1 + (0 if split == 'train' else 1_000_000),
        'objects': objects,
    }


class ClutterDigitsDetection(tfds.core.GeneratorBasedBuilder):
  """Several handwritten digits among clutter, with boxes (offline)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(CANVAS, CANVAS, 3),
                                         encoding_format='png'),
            'image/id': np.int64,
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(
                    names=[str(d) for d in range(NUM_CLASSES)]),
                'area': np.int64,
                'is_crowd': np.bool_,
            }),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in NUM_EXAMPLES}

  def _generate_examples(self, split):
    return generate(split)
