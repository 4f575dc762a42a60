"""clutter_digits: an offline demo dataset of digits hidden in clutter.

Each example is a 64x64 RGB canvas holding one of the 1,797 8x8 handwritten
digits that scikit-learn ships (`sklearn.datasets.load_digits`), upscaled and
put at a random position, plus distractor clutter: fragments of other digits of
the same split, kept off the digit itself. The label is the digit's class and
`bbox` its tight box, `[ymin, xmin, ymax, xmax]` normalised to [0, 1].

Nothing is downloaded and generation takes seconds. Train and test are drawn
from disjoint source digits (80 % / 20 % of them), and everything is
deterministic: the same package versions give the same images.
"""

import io
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds

CANVAS = 64
NUM_CLASSES = 10
# Renderings per source digit: 1,438 train sources -> 7,190 train images,
# 359 test sources -> 1,077 test images.
RENDERINGS = {'train': 5, 'test': 3}
TEST_FRACTION = 0.2
DIGIT_SIZE = (19, 27)  # the 8x8 sources are upscaled to 19-27 px
FRAGMENTS = (4, 8)  # clutter pieces per image
FRAGMENT_SIZE = (2, 4)  # source pixels per side of a clutter piece
_SPLIT_SEEDS = {'train': 1, 'test': 2}
_SOURCE_PERMUTATION_SEED = 0


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


def source_indices(split):
  """Indices into `load_digits()` of the source digits of `split`.

  A fixed permutation puts 20 % of the digits in 'test' and the rest in
  'train', so no handwritten digit appears in both.
  """
  if split not in RENDERINGS:
    raise ValueError(f'Unknown split {split!r}: allowed values are '
                     f'{sorted(RENDERINGS)}.')
  num_digits = 1797
  order = np.random.default_rng(_SOURCE_PERMUTATION_SEED).permutation(
      num_digits)
  num_test = int(round(TEST_FRACTION * num_digits))
  chosen = order[:num_test] if split == 'test' else order[num_test:]
  return np.sort(chosen)


def num_examples(split):
  """How many examples `split` has."""
  return len(source_indices(split)) * RENDERINGS[split]


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


def render(digit, fragments_from, rng, canvas=CANVAS):
  """Renders one example.

  Args:
    digit: `[S, S]` ink intensities in [0, 1] of the digit to show, already
      upscaled from 8x8.
    fragments_from: `[N, S, S]` digits (same scale) to cut clutter from.
    rng: a `np.random.Generator`.
    canvas: output height and width.

  Returns:
    `(image, bbox)`: uint8 `[canvas, canvas, 3]` and the digit's tight box
    `[ymin, xmin, ymax, xmax]` as float32 fractions of the canvas.
  """
  image = np.empty((canvas, canvas, 3), np.float32)
  image[:] = rng.uniform(0.0, 0.2, size=3)

  size = digit.shape[0]
  top = int(rng.integers(0, canvas - size + 1))
  left = int(rng.integers(0, canvas - size + 1))
  box = ink_box(digit) + [top, left, top, left]

  # Clutter goes on first and never over the digit's box, so the digit stays
  # readable and its box exact.
  for _ in range(int(rng.integers(FRAGMENTS[0], FRAGMENTS[1] + 1))):
    piece = cut_fragment(fragments_from[rng.integers(len(fragments_from))],
                         rng, FRAGMENT_SIZE)
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


def generate(split, images=None, labels=None):
  """Yields `(key, example)` pairs of `split` ('train' or 'test').

  `images` (`[N, 8, 8]` in [0, 1]) and `labels` default to scikit-learn's
  digits; tests may pass fewer.
  """
  if images is None:
    images, labels = load_digits()
  indices = source_indices(split)
  indices = indices[indices < len(images)]
  # Upscaling every source once per size keeps generation at a few seconds.
  sizes = np.arange(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1)
  scaled = {int(s): np.clip(np.stack([_resize_bilinear(images[i], s, s)
                                      for i in indices]), 0, 1)
            for s in sizes}
  rng = np.random.default_rng(_SPLIT_SEEDS[split])
  key = 0
  for _ in range(RENDERINGS[split]):
    for position, index in enumerate(indices):
      stack = scaled[int(rng.choice(sizes))]
      others = rng.integers(len(indices) - 1, size=FRAGMENTS[1])
      others += others >= position  # never the digit itself
      image, bbox = render(stack[position], stack[others], rng)
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

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(CANVAS, CANVAS, 3),
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
            for split in ('train', 'test')}

  def _generate_examples(self, split):
    return generate(split)
