import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing import event_accumulator

from sact_tf import models, summaries, train


@pytest.fixture(scope='module')
def log_dir(tmp_path_factory):
  model = models.imagenet_resnet(units=[1, 2, 1, 2], base_channels=2,
                                 model_type='sact', num_classes=5)
  images = tf.random.uniform([3, 48, 64, 3], -1, 1, seed=0)
  outputs = model(images, training=False)
  directory = str(tmp_path_factory.mktemp('logs') / 'eval')
  with tf.summary.create_file_writer(directory).as_default():
    summaries.write_ponder_images(images, outputs, model.block_names,
                                  model.units_per_block, step=7,
                                  max_outputs=2)
    summaries.write_block_statistics(outputs, model.block_names, step=7)
  return directory


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A real training run (tiny ImageNet-layout SACT, 2 steps on mock data)
  and its evaluation: logs in train/ and eval_test_32px/."""
  model_dir = tmp_path_factory.mktemp('run')
  config = train.ExperimentConfig(
      model=dict(family='imagenet', units=[1, 2, 1, 1], model_type='sact',
                 num_classes=10, base_channels=2),
      loss=dict(tau=0.01),
      data=dict(dataset='cifar10', data_dir='/nonexistent',
                preprocessing='inception', image_size=32,
                eval_image_sizes=[32], batch_size=4, eval_batch_size=3),
      optimizer=dict(train_steps=2, learning_rate=0.05),
      run=dict(model_dir=str(model_dir), checkpoint_every=2,
               summary_every=1))
  with tfds.testing.mock_data(num_examples=5):
    train.train(config)
    train.evaluate(config)
  return str(model_dir)


def read_tensors(directory):
  accumulator = event_accumulator.EventAccumulator(
      directory, size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return {tag: accumulator.Tensors(tag)
          for tag in accumulator.Tags()['tensors']}


def test_summaries_are_written(log_dir):
  tensors = read_tensors(log_dir)
  for tag in ('ponder_map/total', 'ponder_map/block1', 'ponder_map/block4',
              'ponder_map/legend', 'ponder_cost/block2', 'num_units/block3',
              'flops_per_image', 'ponder_cost_per_position/block1'):
    assert tag in tensors, tag
  assert tensors['ponder_cost/block2'][0].step == 7
  value = tf.make_ndarray(tensors['num_units/block2'][0].tensor_proto)
  assert 1.0 <= float(value) <= 2.0
  # Image summaries hold [width, height, png...] strings.
  images = tf.make_ndarray(tensors['ponder_map/total'][0].tensor_proto)
  assert images[:2].tolist() == [b'132', b'48'] and len(images) == 4


def test_display_images_and_histograms():
  images = tf.random.normal([2, 5, 6, 3], 3.0, 2.0, seed=1)
  shown = summaries.display_images(images, 'cifar').numpy()
  np.testing.assert_allclose(shown.min(axis=(1, 2, 3)), [-1, -1], atol=1e-6)
  np.testing.assert_allclose(shown.max(axis=(1, 2, 3)), [1, 1], atol=1e-6)
  np.testing.assert_array_equal(
      summaries.display_images(images, 'inception'), images)
  histograms = summaries.PonderHistograms(['a', 'b'], [2, 1], bins=4)
  histograms.add({'a/ponder_map': np.array([[[1.0, 1.2], [2.9, 3.0]]]),
                  'b/ponder_map': np.full([2, 3, 3], 1.5)})
  histograms.add({'a/ponder_map': np.array([[[0.999, 3.001]]])})
  counts, edges = histograms.counts('a')
  np.testing.assert_allclose(edges, [1.0, 1.5, 2.0, 2.5, 3.0])
  np.testing.assert_array_equal(counts, [3, 0, 0, 3])
  assert histograms.counts('b')[0].sum() == 18


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def fetch(url, timeout=5):
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return response.read()


def _fetch_image(base, run, tag, sample):
  query = urllib.parse.urlencode({'run': run, 'tag': tag, 'sample': sample})
  entries = json.loads(fetch(f'{base}/images?{query}'))
  data = fetch(f'{base}/individualImage?{entries[-1]["query"]}')
  return entries[-1]['step'], tf.io.decode_png(data).numpy()


@pytest.mark.slow
def test_tensorboard_serves_the_ponder_map_images(run_dir):
  """A real server on a real run's log directory (training and evaluation)."""
  port = free_port()
  tensorboard = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  server = subprocess.Popen(
      [tensorboard, '--logdir', run_dir, '--host', '127.0.0.1', '--port',
       str(port), '--reload_interval', '1'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  base = f'http://127.0.0.1:{port}/data/plugin/images'
  runs = {'train': (2, 4), 'eval_test_32px': (2, 3)}  # last step, images
  try:
    deadline = time.time() + 90
    tags = None
    while time.time() < deadline:
      try:
        tags = json.loads(fetch(f'{base}/tags'))
        if all('ponder_map/total' in tags.get(run, {}) for run in runs):
          break
      except OSError:
        pass
      time.sleep(1)
    for run in runs:
      assert {'ponder_map/total', 'ponder_map/block1', 'ponder_map/block4',
              'ponder_map/legend'} <= set(tags.get(run, {})), tags
    for run, (step, count) in runs.items():
      for tag in ('ponder_map/total', 'ponder_map/block1'):
        for sample in range(count):
          at, image = _fetch_image(base, run, tag, sample)
          assert at == step
          assert image.shape == (32, 68, 3)  # [image | 4 px | overlay]
          assert image.std() > 0
      at, legend = _fetch_image(base, run, 'ponder_map/legend', 0)
      assert legend.shape == (400, 140, 3) and at == step
  finally:
    os.kill(server.pid, signal.SIGTERM)
    try:
      server.wait(timeout=10)
    except subprocess.TimeoutExpired:
      server.kill()
