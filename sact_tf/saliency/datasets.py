"""The saliency protocol's data: fixation maps and the two data sets.

`evaluate_protocol` takes lists of `(ponder map, fixation map, category)`
triples, one list per half. The readers here make both lists from a
prepared TFDS builder and a function that turns an image into its ponder
map:

* `read_cat2000`: the CAT2000 training set (`sact_tf.data.cat2000`); the
  fixation maps are the benchmark's binary `fixLocs`, the halves are the
  builder's splits (the first and the second half of each category's images
  in file name order).
* `read_clutter_digits`: an offline stand-in on the clutter_digits test
  split. The fixations are the digit's pixels (`digit_fixations`), the
  categories the digit classes, and the examples of each class are cut
  into a first and a second half in data set order (`split_halves`).

Fixation maps are kept sparse (`SparseFixations`): CAT2000's are 1080x1920.
"""

import numpy as np
import tensorflow_datasets as tfds

from sact_tf.data import cat2000 as cat2000_data

# clutter_digits: a pixel of the digit's box is a fixation when its brightest
# channel reaches this value (the digit's colour has a channel at 255, the
# background is at most 0.2 * 255).
DIGIT_THRESHOLD = 128


class SparseFixations:
  """A binary fixation map kept as the flat indices of its fixated pixels.

  CAT2000's maps are 1080x1920 with a few hundred fixations each: dense
  copies of 2,000 of them would take gigabytes. `auc_judd` and
  `evaluate_protocol` use the indices directly; `np.asarray` gives the
  dense map back.

  Attributes:
    shape: `(height, width)` of the map.
    indices: sorted flat indices of the fixated pixels.
  """

  ndim = 2

  def __init__(self, fixation_map):
    """From a dense map, `[H, W]` or `[H, W, 1]`, nonzero where fixated."""
    fixation_map = np.asarray(fixation_map)
    if fixation_map.ndim == 3:
      fixation_map = fixation_map[..., 0]
    self.shape = tuple(fixation_map.shape)
    self.indices = np.flatnonzero(fixation_map > 0)

  @property
  def num_fixations(self):
    """The number of fixated pixels."""
    return int(self.indices.size)

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a new array.
    dense = np.zeros(self.shape, dtype=dtype or np.uint8)
    dense.flat[self.indices] = 1
    return dense


def digit_fixations(image, bbox, threshold=DIGIT_THRESHOLD):
  """clutter_digits' stand-in for fixations: the digit's stroke pixels.

  The pixels of the digit's box whose brightest channel is at least
  `threshold`: clutter never enters that box and the background is at most
  51, so these are the digit's strokes.

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


def split_halves(groups, max_per_category=None):
  """Cuts each category's items into a first and a second half.

  Each category's items are cut in two in their order, the first half
  getting `len // 2` of them (as the cat2000 builder's splits do), and at
  most `max_per_category` of each half are kept.

  Args:
    groups: `{category: [items]}`.
    max_per_category: items of each category kept in each half (None: all).

  Returns:
    `(first, second)`, two lists of `(category, item)`, categories in sorted
    order.
  """
  first, second = [], []
  for category in sorted(groups):
    items = groups[category]
    middle = len(items) // 2
    first += [(category, item)
              for item in items[:middle][:max_per_category]]
    second += [(category, item)
               for item in items[middle:][:max_per_category]]
  return first, second


def read_clutter_digits(builder, ponder_map, max_per_category=None):
  """The protocol's halves of the clutter_digits test split.

  Args:
    builder: the prepared clutter_digits TFDS builder.
    ponder_map: image (uint8 `[H, W, 3]`) -> its ponder map `[h, w]`.
    max_per_category: examples of each digit class kept in each half (None:
      all).

  Returns:
    `(tune, test)`: lists of `(ponder map, SparseFixations, category)`, the
    category being the digit class as a string; `tune` holds the first half
    of each class's examples in data set order, `test` the second.
  """
  groups = {}
  dataset = builder.as_dataset(split='test', shuffle_files=False)
  for example in tfds.as_numpy(dataset):
    groups.setdefault(str(int(example['label'])), []).append(
        (example['image'], example['bbox']))
  return tuple(
      [(ponder_map(image), SparseFixations(digit_fixations(image, bbox)),
        category) for category, (image, bbox) in half]
      for half in split_halves(groups, max_per_category))


def read_cat2000(builder, ponder_map, max_per_category=None):
  """The protocol's halves of the CAT2000 training set.

  Images are decoded and mapped one at a time; only their ponder maps and
  sparse fixation maps are kept.

  Args:
    builder: the prepared `sact_tf.data.cat2000.Cat2000` builder.
    ponder_map: image (uint8 `[H, W, 3]`) -> its ponder map `[h, w]`.
    max_per_category: images of each category kept in each half, the first
      ones in file name order (None: all).

  Returns:
    `(tune, test)`: lists of `(ponder map, SparseFixations, category)` from
    the `first_half` and `second_half` splits, sorted by category and file
    name.
  """
  halves = []
  for split in cat2000_data.SPLITS:
    found = {}
    for category, name, image, fixation_map in cat2000_data.examples(
        builder, split, max_per_category):
      found[category, name] = (ponder_map(image),
                               SparseFixations(fixation_map), category)
    halves.append([found[key] for key in sorted(found)])
  return tuple(halves)
