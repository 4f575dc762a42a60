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
from tensorboard.backend.event_processing import event_accumulator

from sact_tf import models, summaries


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


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def fetch(url, timeout=5):
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return response.read()


@pytest.mark.slow
def test_tensorboard_serves_the_ponder_map_images(log_dir):
  port = free_port()
  tensorboard = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  server = subprocess.Popen(
      [tensorboard, '--logdir', os.path.dirname(log_dir), '--host',
       '127.0.0.1', '--port', str(port), '--reload_interval', '1'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  base = f'http://127.0.0.1:{port}/data/plugin/images'
  try:
    deadline = time.time() + 90
    tags = None
    while time.time() < deadline:
      try:
        tags = json.loads(fetch(f'{base}/tags'))
        if 'eval' in tags and 'ponder_map/total' in tags['eval']:
          break
      except OSError:
        pass
      time.sleep(1)
    assert tags and 'ponder_map/total' in tags.get('eval', {}), tags
    query = urllib.parse.urlencode({'run': 'eval', 'tag': 'ponder_map/total'})
    entries = json.loads(fetch(f'{base}/images?{query}'))
    assert entries and entries[-1]['step'] == 7
    for sample in range(2):
      query = urllib.parse.urlencode({'run': 'eval', 'tag': 'ponder_map/total',
                                      'sample': sample})
      entry = json.loads(fetch(f'{base}/images?{query}'))[-1]
      data = fetch(f'{base}/individualImage?{entry["query"]}')
      image = tf.io.decode_png(data).numpy()
      assert image.shape[:2] == (48, 132)  # [image | 4 px | overlay]
      assert image.std() > 0
  finally:
    os.kill(server.pid, signal.SIGTERM)
    try:
      server.wait(timeout=10)
    except subprocess.TimeoutExpired:
      server.kill()
