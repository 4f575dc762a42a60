import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf import data
from sact_tf.data import clutter_digits


def _digits(count=60):
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  digits = datasets.load_digits()
  return (digits.images[:count].astype(np.float32) / 16.0,
          digits.target[:count])


def test_splits_use_disjoint_source_digits():
  train = clutter_digits.source_indices('train')
  test = clutter_digits.source_indices('test')
  assert not set(train) & set(test)
  assert sorted(set(train) | set(test)) == list(range(1797))
  assert len(test) == 359
  assert clutter_digits.num_examples('train') == 1438 * 5
  with pytest.raises(ValueError, match='Unknown split'):
    clutter_digits.source_indices('validation')


def test_generation_is_deterministic_and_boxes_hold_the_digit():
  images, labels = _digits()
  first = list(clutter_digits.generate('train', images, labels))
  second = list(clutter_digits.generate('train', images, labels))
  assert len(first) == len(second) > 0
  for (key_a, a), (key_b, b) in zip(first, second):
    assert key_a == key_b
    assert a['image'].getvalue() == b['image'].getvalue()
    assert a['bbox'] == b['bbox']
  for _, example in first:
    assert example['label'] == labels[example['source_index']]
    image = tf.io.decode_png(example['image'].getvalue()).numpy()
    assert image.shape == (64, 64, 3)
    ymin, xmin, ymax, xmax = (np.asarray(example['bbox']) * 64).round()
    assert 0 <= ymin < ymax <= 64 and 0 <= xmin < xmax <= 64
    # The digit's strokes are bright; the background is at most 0.2 * 255.
    box = image[int(ymin):int(ymax), int(xmin):int(xmax)]
    assert box.max() > 0.35 * 255
    # The tight box touches ink (alpha > 0.2 of a colour with a channel at
    # 255) on every side.
    edge = 0.2 * 255
    assert box[0].max() > edge and box[-1].max() > edge
    assert box[:, 0].max() > edge and box[:, -1].max() > edge


def test_clutter_stays_off_the_digit_box():
  rng = np.random.default_rng(0)
  digit = np.zeros((24, 24), np.float32)
  fragments = np.ones((3, 24, 24), np.float32)
  digit[6:18, 8:16] = 1.0
  image, bbox = clutter_digits.render(digit, fragments, rng)
  ymin, xmin, ymax, xmax = (bbox * 64).round().astype(int)
  assert (ymax - ymin, xmax - xmin) == (12, 8)
  # Inside the box only the digit (one colour) and nothing else was painted.
  colours = {tuple(p) for p in image[ymin:ymax, xmin:xmax].reshape(-1, 3)}
  assert len(colours) == 1
  # The clutter (full-ink fragments) did land somewhere else.
  outside = image.copy()
  outside[ymin:ymax, xmin:xmax] = 0
  assert outside.max() > 0.35 * 255


def test_encode_png_round_trips():
  image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), np.uint8)
  decoded = tf.io.decode_png(clutter_digits.encode_png(image)).numpy()
  np.testing.assert_array_equal(decoded, image)
  with pytest.raises(ValueError, match='uint8'):
    clutter_digits.encode_png(image.astype(np.float32))


@pytest.mark.slow
def test_tfds_builder_prepares_offline(tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  builder = data.prepare('clutter_digits', data_dir, download=False)
  assert builder.info.splits['train'].num_examples == (
      clutter_digits.num_examples('train'))
  assert builder.info.splits['test'].num_examples == (
      clutter_digits.num_examples('test'))
  example = next(iter(tfds.load('clutter_digits', split='test',
                                data_dir=data_dir)))
  assert example['image'].shape == (64, 64, 3)
  assert example['bbox'].shape == (4,)
  test_sources = set(
      tfds.as_numpy(tfds.load('clutter_digits', split='test',
                              data_dir=data_dir).map(
                                  lambda e: e['source_index'])))
  assert test_sources == set(clutter_digits.source_indices('test'))


def test_hard_style_splits_are_disjoint_and_validation_comes_from_train():
  hard = clutter_digits.HARD
  train = set(clutter_digits.source_indices('train', hard))
  validation = set(clutter_digits.source_indices('validation', hard))
  test = set(clutter_digits.source_indices('test', hard))
  assert not train & validation and not train & test
  assert not validation & test
  # Test is the standard dataset's test; validation is held out of train.
  assert test == set(clutter_digits.source_indices('test'))
  assert train | validation == set(clutter_digits.source_indices('train'))
  assert len(validation) == round(0.15 * 1438)
  assert [clutter_digits.num_examples(s, hard) for s in hard.splits] == [
      len(train) * 8, len(validation) * 5, 359 * 3]
  with pytest.raises(ValueError, match='Unknown split'):
    clutter_digits.source_indices('extra', hard)


def _clutter_share(example):
  """Share of the canvas outside the digit's box covered by bright ink."""
  image = tf.io.decode_png(example['image'].getvalue()).numpy()
  ymin, xmin, ymax, xmax = np.asarray(example['bbox']) * image.shape[0]
  outside = image.copy()
  outside[int(ymin):int(np.ceil(ymax)), int(xmin):int(np.ceil(xmax))] = 0
  return (outside.max(axis=-1) > 0.35 * 255).mean()


def test_hard_style_draws_small_digits_among_more_clutter():
  images, labels = _digits(200)
  hard = clutter_digits.HARD
  examples = [e for _, e in clutter_digits.generate(
      'validation', images, labels, style=hard)]
  assert len(examples) > 10
  for example in examples:
    image = tf.io.decode_png(example['image'].getvalue()).numpy()
    assert image.shape == (64, 64, 3)
    ymin, xmin, ymax, xmax = np.asarray(example['bbox']) * 64
    # The tight box of a digit upscaled to the style's sizes.
    largest = hard.digit_size[1] + 0.01
    assert 1 <= ymax - ymin <= largest and 1 <= xmax - xmin <= largest
  standard = [e for _, e in clutter_digits.generate('test', images, labels)]
  hard_share = np.mean([_clutter_share(e) for e in examples])
  standard_share = np.mean([_clutter_share(e) for e in standard])
  assert hard_share > 1.4 * standard_share
