import dataclasses
import os
import subprocess
import sys
import textwrap

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


class SactPipelineTestImages(tfds.core.GeneratorBasedBuilder):
  """12 random 8x8 PNG images per split: small enough for TFDS to cache."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 3)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0),
            'test': self._generate_examples(1)}

  def _generate_examples(self, seed):
    rng = np.random.default_rng(seed)
    for i in range(12):
      yield i, {'image': rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                'label': i % 10}


# A training shuffle buffer smaller than the split: the last epoch of a
# stream is read partially.
_TINY_SPEC = dataclasses.replace(
    data.get_spec('cifar10'), name='sact_pipeline_test_images',
    num_train_examples=12, image_size=8, shuffle_buffer=4)


@pytest.fixture(name='tiny_data_dir', scope='module')
def _tiny_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = SactPipelineTestImages(data_dir=data_dir)
  builder.download_and_prepare()
  return builder.data_dir


def _dataset_ops(dataset):
  """The op types of a dataset's graph, its functions' included."""
  variant = dataset._variant_tensor  # pylint: disable=protected-access
  graph = tf.compat.v1.GraphDef()
  graph.ParseFromString(
      tf.raw_ops.DatasetToGraphV2(input_dataset=variant).numpy())
  return ({node.op for node in graph.node}
          | {node.op for function in graph.library.function
             for node in function.node_def})


def _partial_reads(builder):
  return {
      'eval first batch': pipelines.eval_dataset(
          builder, _TINY_SPEC, 'cifar', 8, 4, num_examples=4),
      'eval all': pipelines.eval_dataset(builder, _TINY_SPEC, 'cifar', 8, 5),
      'train': pipelines.train_dataset(builder, _TINY_SPEC, 'cifar', 8, 4,
                                       end_step=5),
  }


def test_pipelines_do_not_read_through_a_tfds_cache(tiny_data_dir):
  builder = tfds.builder_from_directory(tiny_data_dir)
  # TFDS would cache this dataset by itself (it is small)...
  assert 'CacheDatasetV2' in _dataset_ops(builder.as_dataset(split='test'))
  # ... and a cache read partially logs "The calling iterator did not fully
  # read the dataset being cached" and discards what it cached.
  for name, dataset in _partial_reads(builder).items():
    ops = _dataset_ops(dataset)
    assert not {op for op in ops if op.startswith('CacheDataset')}, name


# What the README's demo runs: the summaries' first batch of the evaluation
# split, then part of a training stream. The warning comes from TensorFlow's
# C++ logging, which TF_CPP_MIN_LOG_LEVEL (read at start-up) silences, hence
# a process of its own.
_PARTIAL_READS_SCRIPT = textwrap.dedent("""
    import gc
    import sys
    import tensorflow_datasets as tfds
    from tests import test_data_pipelines as t
    builder = tfds.builder_from_directory(sys.argv[1])
    datasets = t._partial_reads(builder)
    assert next(iter(datasets['eval first batch']))['image'].shape[0] == 4
    assert sum(int(b['label'].shape[0]) for b in datasets['eval all']) == 12
    for step, _ in enumerate(datasets['train']):
      if step == 3:
        break
    del datasets, _
    gc.collect()
    print('read')
""")


@pytest.mark.slow
def test_partial_reads_log_no_cache_warning(tiny_data_dir):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = [root] + [p for p in os.environ.get('PYTHONPATH', '').split(
      os.pathsep) if p]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0',
             PYTHONPATH=os.pathsep.join(paths))
  result = subprocess.run(
      [sys.executable, '-c', _PARTIAL_READS_SCRIPT, tiny_data_dir],
      capture_output=True, text=True, env=env, cwd=root, timeout=300,
      check=False)
  assert result.returncode == 0 and 'read' in result.stdout, result.stderr
  assert 'did not fully read the dataset being cached' not in result.stderr
