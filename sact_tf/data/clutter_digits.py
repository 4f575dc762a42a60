"""clutter_digits: offline demo datasets of digits hidden in clutter.

Each example is a 64x64 RGB canvas holding one of the 1,797 8x8 handwritten
digits that scikit-learn ships (`sklearn.datasets.load_digits`), upscaled and
put at a random position, plus distractor clutter: fragments of other digits of
the same split, kept off the digit itself. The label is the digit's class and
`bbox` its tight box, `[ymin, xmin, ymax, xmax]` normalised to [0, 1].

Two datasets share the generator and differ by their `Style`:

- `clutter_digits` (`STANDARD`): large digits (19-27 px) among 4-8 small
  pieces; splits train / test. Easy: the demo of the code path.
- `clutter_digits_hard` (`HARD`): small digits (13-17 px) among 10-16
  pieces of other digits at the digit's scale, 3-5 eighths of a digit a
  side, which look like parts of digits; splits train / validation / test,
  the validation digits held out of train's sources. Built so that network
  depth and where the network looks matter (the fig. 7 miniature): at 32x32
  and the demo's budget (600 steps of batch 128), a plain CIFAR ResNet-8
  reached 88.8 % on validation and a ResNet-32 95.3 %.

Nothing is downloaded and generation takes seconds. Train (and validation)
and test are drawn from disjoint source digits (80 % / 20 % of them), and
everything is deterministic: the same package versions give the same images.
"""

import dataclasses
import io
import struct
from typing import Dict, Tuple
import zlib

import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
TEST_FRACTION = 0.2
_SOURCE_PERMUTATION_SEED = 0


@dataclasses.dataclass(frozen=True)
class Style:
  """How one clutter_digits dataset is drawn.

  Attributes:
    canvas: image height and width.
    digit_size: (min, max) side in pixels the 8x8 digit is upscaled to.
    fragments: (min, max) clutter pieces per image.
    fragment_size: (min, max) eighths of a source digit per side of a piece.
    renderings: split -> renderings of each of its source digits.
    seeds: split -> seed of its random drawing.
    validation_fraction: share of train's source digits held out as the
      'validation' split (0: no validation split).
  """

  canvas: int
  digit_size: Tuple[int, int]
  fragments: Tuple[int, int]
  fragment_size: Tuple[int, int]
  renderings: Dict[str, int]
  seeds: Dict[str, int]
  validation_fraction: float = 0.0

  @property
  def splits(self):
    return tuple(self.renderings)


# Renderings per source digit: 1,438 train sources -> 7,190 train images,
# 359 test sources -> 1,077 test images.
STANDARD = Style(canvas=64, digit_size=(19, 27), fragments=(4, 8),
                 fragment_size=(2, 4), renderings={'train': 5, 'test': 3},
                 seeds={'train': 1, 'test': 2})
# 1,222 train sources -> 9,776 images, 216 validation sources -> 1,080,
# 359 test sources -> 1,077.
HARD = Style(canvas=64, digit_size=(13, 17), fragments=(10, 16),
             fragment_size=(3, 5),
             renderings={'train': 8, 'validation': 5, 'test': 3},
             seeds={'train': 21, 'validation': 22, 'test': 23},
             validation_fraction=0.15)

# The standard style's values, as module constants.
CANVAS = STANDARD.canvas
RENDERINGS = STANDARD.renderings
DIGIT_SIZE = STANDARD.digit_size
FRAGMENTS = STANDARD.fragments
FRAGMENT_SIZE = STANDARD.fragment_size


# Ink above this alpha belongs to a digit's box.
INK_THRESHOLD = 0.2


def load_digits(dataset='clutter_digits'):
  """scikit-learn's digits: (`[1797, 8, 8]` ink in [0, 1], int64 labels).

  `dataset` names what is being built in the error raised without
  scikit-learn.
  """
  try:
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f'{dataset} is built from scikit-learn\'s bundled digits: '
        'install it with `pip install scikit-learn`.') from e
  digits = datasets.load_digits()
  # Ink intensity in [0, 1] (the source pixels are 0..16).
  return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def source_indices(split, style=STANDARD):
  """Indices into `load_digits()` of the source digits of `split`.

  A fixed permutation puts 20 % of the digits in 'test' and the rest in
  'train' (the same for every style), so no handwritten digit appears in
  both; a style with a validation split holds the first
  `validation_fraction` of train's share out of 'train' for it.
  """
  if split not in style.renderings:
    raise ValueError(f'Unknown split {split!r}: allowed values are '
                     f'{sorted(style.renderings)}.')
  num_digits = 1797
  order = np.random.default_rng(_SOURCE_PERMUTATION_SEED).permutation(
      num_digits)
  num_test = int(round(TEST_FRACTION * num_digits))
  if split == 'test':
    return np.sort(order[:num_test])
  rest = order[num_test:]
  num_validation = int(round(style.validation_fraction * len(rest)))
  chosen = rest[:num_validation] if split == 'validation' else (
      rest[num_validation:])
  return np.sort(chosen)


def num_examples(split, style=STANDARD):
  """How many examples `split` has."""
  return len(source_indices(split, style)) * style.renderings[split]


def _resize_bilinear(patch, height, width):
  """Resizes a 2-D array with bilinear interpolation (pixel-centre aligned)."""
  in_h, in_w = patch.shape
  ys = np.clip((np.arange(height) + 0.5) * in_h / height - 0.5, 0, in_h - 1)
  xs = np.clip((np.arange(width) + 0.5) * in_w / width - 0.5, 0, in_w - 1)
  y0 = np.floor(ys).astype(int)
  x0 = np.floor(xs).astype(int)
  y1 = np.minimum(y0 + 1, in_h - 1)
  x1 = np.minimum(x0 + 1, in_w - 1)
  wy = (ys - y0)[:, None]
  wx = (xs - x0)[None, :]
  top = patch[y0][:, x0] * (1 - wx) + patch[y0][:, x1] * wx
  bottom = patch[y1][:, x0] * (1 - wx) + patch[y1][:, x1] * wx
  return top * (1 - wy) + bottom * wy


def random_colour(rng):
  """A bright float32 RGB colour in [0.35, 1], one channel at 1.

  Digits and clutter draw their colours alike, so that colour says nothing
  about the class and strokes stand out on the dark background.
  """
  colour = rng.uniform(0.35, 1.0, size=3)
  colour[rng.integers(3)] = 1.0
  return colour.astype(np.float32)


def paste(canvas, alpha, top, left, colour):
  """Blends `colour` into `canvas` (in place) with `alpha` at (top, left)."""
  h, w = alpha.shape
  region = canvas[top:top + h, left:left + w]
  a = alpha[..., None]
  region *= 1 - a
  region += colour * a


def ink_box(alpha):
  """Tight `[ymin, xmin, ymax, xmax]` (pixels, end exclusive) of the ink."""
  rows = np.nonzero(alpha.max(axis=1) > INK_THRESHOLD)[0]
  cols = np.nonzero(alpha.max(axis=0) > INK_THRESHOLD)[0]
  return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])


def cut_fragment(source, rng, fragment_size):
  """A random piece of a square digit `source` to use as clutter.

  Its sides are `fragment_size` (min, max) eighths of the source's; None
  when the piece holds too little ink to show.
  """
  size = source.shape[0]
  ph, pw = (rng.integers(fragment_size[0], fragment_size[1] + 1, size=2)
            * size) // 8
  fy = int(rng.integers(0, size - ph + 1))
  fx = int(rng.integers(0, size - pw + 1))
  piece = source[fy:fy + ph, fx:fx + pw]
  return None if piece.max() < 0.3 else piece


def _overlaps(box, top, left, h, w):
  ymin, xmin, ymax, xmax = box
  return not (top + h <= ymin or top >= ymax or left + w <= xmin or
              left >= xmax)


def render(digit, fragments_from, rng, canvas=None, style=STANDARD):
  """Renders one example.

  Args:
    digit: `[S, S]` ink intensities in [0, 1] of the digit to show, already
      upscaled from 8x8.
    fragments_from: `[N, S, S]` digits (same scale) to cut clutter from.
    rng: a `np.random.Generator`.
    canvas: output height and width (default: the style's).
    style: the `Style` (clutter count and piece sizes).

  Returns:
    `(image, bbox)`: uint8 `[canvas, canvas, 3]` and the digit's tight box
    `[ymin, xmin, ymax, xmax]` as float32 fractions of the canvas.
  """
  canvas = canvas or style.canvas
  image = np.empty((canvas, canvas, 3), np.float32)
  image[:] = rng.uniform(0.0, 0.2, size=3)

  size = digit.shape[0]
  top = int(rng.integers(0, canvas - size + 1))
  left = int(rng.integers(0, canvas - size + 1))
  box = ink_box(digit) + [top, left, top, left]

  # Clutter goes on first and never over the digit's box, so the digit stays
  # readable and its box exact.
  for _ in range(int(rng.integers(style.fragments[0],
                                  style.fragments[1] + 1))):
    piece = cut_fragment(fragments_from[rng.integers(len(fragments_from))],
                         rng, style.fragment_size)
    if piece is None:
      continue
    ph, pw = piece.shape
    for _ in range(20):
      py = int(rng.integers(0, canvas - ph + 1))
      px = int(rng.integers(0, canvas - pw + 1))
      if not _overlaps(box, py, px, ph, pw):
        paste(image, piece, py, px, random_colour(rng))
        break
  paste(image, digit, top, left, random_colour(rng))

  image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
  bbox = np.asarray(box, np.float32) / canvas
  return image, bbox


def encode_png(image):
  """PNG bytes of a uint8 `[H, W, 3]` image.

  TFDS would encode arrays one TF call at a time, which made generation take
  several times longer than drawing the images; zlib does it in microseconds.
  """
  height, width, channels = image.shape
  if channels != 3 or image.dtype != np.uint8:
    raise ValueError(f'encode_png needs a uint8 [H, W, 3] image, got '
                     f'{image.dtype} {image.shape}.')
  # Each row starts with its filter type, 0 (none).
  rows = np.concatenate([np.zeros((height, 1), np.uint8),
                         image.reshape(height, width * 3)], axis=1)

  def chunk(tag, data):
    return (struct.pack('>I', len(data)) + tag + data +
            struct.pack('>I', zlib.crc32(tag + data) & 0xffffffff))

  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(rows.tobytes(), 1)) +
          chunk(b'IEND', b''))


def generate(split, images=None, labels=None, style=STANDARD):
  """Yields `(key, example)` pairs of `split` (one of `style.splits`).

  `images` (`[N, 8, 8]` in [0, 1]) and `labels` default to scikit-learn's
  digits; tests may pass fewer.
  """
  if images is None:
    images, labels = load_digits()
  indices = source_indices(split, style)
  indices = indices[indices < len(images)]
  # Upscaling every source once per size keeps generation at a few seconds.
  sizes = np.arange(style.digit_size[0], style.digit_size[1] + 1)
  scaled = {int(s): np.clip(np.stack([_resize_bilinear(images[i], s, s)
                                      for i in indices]), 0, 1)
            for s in sizes}
  rng = np.random.default_rng(style.seeds[split])
  key = 0
  for _ in range(style.renderings[split]):
    for position, index in enumerate(indices):
      stack = scaled[int(rng.choice(sizes))]
      others = rng.integers(len(indices) - 1, size=style.fragments[1])
      others += others >= position  # never the digit itself
      image, bbox = render(stack[position], stack[others], rng, style=style)
      yield key, {
          'image': io.BytesIO(encode_png(image)),
          'label': int(labels[index]),
          'bbox': tfds.features.BBox(*bbox.tolist()),
          'source_index': int(index),
      }
      key += 1


class ClutterDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits at random positions among clutter (offline)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  STYLE = STANDARD

  def _info(self):
    canvas = self.STYLE.canvas
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(canvas, canvas, 3),
                                         encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'bbox': tfds.features.BBoxFeature(),
            'source_index': np.int64,
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split)
            for split in self.STYLE.splits}

  def _generate_examples(self, split):
    return generate(split, style=self.STYLE)


class ClutterDigitsHard(ClutterDigits):
  """Small digits among many digit-like pieces; train / validation / test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  STYLE = HARD
