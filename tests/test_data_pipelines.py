import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sact_tf import data
from sact_tf.data import pipelines

NUM_EXAMPLES = 10


@pytest.fixture(name='mock_cifar')
def _mock_cifar():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    yield data.prepare('cifar10', '/nonexistent/tfds')


def _take(dataset, count):
  return [{k: v.numpy() for k, v in batch.items()}
          for batch in dataset.take(count)]


def test_train_batches_resume_where_they_stopped(mock_cifar):
  spec = data.get_spec('cifar10')
  # Batches of 4 over 10 examples: step 3 starts in the second epoch.
  make = lambda start: pipelines.train_dataset(
      mock_cifar, spec, 'cifar', 32, 4, start_step=start, end_step=6,
      seed=5)
  straight = _take(make(0), 10)
  resumed = _take(make(3), 10)
  # Whole epochs are kept: at least the requested steps are there.
  assert len(straight) >= 6 and len(resumed) >= 3
  for a, b in zip(straight[3:6], resumed[:3]):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])
  assert straight[0]['image'].shape == (4, 32, 32, 3)
  assert straight[0]['label'].dtype == np.int32


def test_each_epoch_is_a_permutation_and_epochs_differ(mock_cifar):
  spec = data.get_spec('cifar10')
  batches = _take(pipelines.train_dataset(mock_cifar, spec, 'cifar', 32, 5,
                                          end_step=4, seed=1), 4)
  # Images identify examples: an epoch shows each of them once.
  keys = [tuple(np.round(img.ravel()[:16], 4)) for b in batches
          for img in b['image']]
  first, second = keys[:10], keys[10:]
  assert len(set(first)) == 10
  assert len(set(second)) == 10
  other_seed = _take(pipelines.train_dataset(mock_cifar, spec, 'cifar', 32, 5,
                                             end_step=2, seed=2), 2)
  assert not all(np.array_equal(a['image'], b['image'])
                 for a, b in zip(batches, other_seed))


def test_input_pipelines_split_the_batch(mock_cifar):
  spec = data.get_spec('cifar10')
  context = tf.distribute.InputContext(num_input_pipelines=2,
                                       input_pipeline_id=1,
                                       num_replicas_in_sync=2)
  batch = _take(pipelines.train_dataset(mock_cifar, spec, 'cifar', 32, 8,
                                        input_context=context), 1)[0]
  assert batch['image'].shape == (4, 32, 32, 3)
  with pytest.raises(ValueError, match='divisible'):
    pipelines.train_dataset(mock_cifar, spec, 'cifar', 32, 7,
                            input_context=context)


def test_eval_order_is_fixed_and_the_last_batch_kept(mock_cifar):
  spec = data.get_spec('cifar10')
  first = _take(pipelines.eval_dataset(mock_cifar, spec, 'cifar', 32, 4), 10)
  again = _take(pipelines.eval_dataset(mock_cifar, spec, 'cifar', 32, 4), 10)
  assert [len(b['label']) for b in first] == [4, 4, 2]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  limited = _take(pipelines.eval_dataset(mock_cifar, spec, 'cifar', 32, 4,
                                         num_examples=5), 10)
  assert sum(len(b['label']) for b in limited) == 5


def test_imagenet_labels_are_shifted_for_the_background_class():
  spec = data.get_spec('imagenet2012')
  with tfds.testing.mock_data(num_examples=4):
    builder = data.prepare('imagenet2012', '/nonexistent/tfds')
    raw = [int(e['label']) for e in tfds.load(
        'imagenet2012', split='validation', data_dir='/nonexistent/tfds')]
    batch = _take(pipelines.eval_dataset(builder, spec, 'inception', 24, 4),
                  1)[0]
  np.testing.assert_array_equal(batch['label'], np.asarray(raw) + 1)
  assert batch['image'].shape == (4, 24, 24, 3)
  assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0


def test_unknown_style_is_rejected(mock_cifar):
  with pytest.raises(ValueError, match='preprocessing style'):
    pipelines.eval_dataset(mock_cifar, data.get_spec('cifar10'), 'vgg', 32, 4)
