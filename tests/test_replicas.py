"""Two replicas on two logical CPU devices: training and evaluation.

The logical devices must be set before TensorFlow starts, so the runs go in
one subprocess; it prints what the test checks as JSON.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from sact_tf import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from experiments import cifar10, coco
    from sact_tf.train import config as config_lib, evaluation
    from sact_tf.detection import config as detection_config
    from sact_tf.detection import clutter_detection
    from sact_tf.detection import evaluation as detection_evaluation
    work, data_dir = sys.argv[1], sys.argv[2]
    # A small detection dataset: what is tested is the replicas.
    clutter_detection.NUM_EXAMPLES.update(train=8, test=4)
    out = {}
    run = work + '/sact'
    summaries = cifar10.main([
        'cifar10', '--strategy=mirrored', '--dataset=clutter_digits',
        f'--data_dir={data_dir}', f'--model_dir={run}', '--model=1,2,1',
        '--base_channels=4', '--batch_size=4', '--train_steps=3',
        '--summary_every=1', '--checkpoint_every=2', '--eval_examples=10',
        '--eval_batch_size=4', '--steps_per_loop=2'])
    config = config_lib.load(run)
    one = evaluation.evaluate(config, write=False,
                              strategy=tf.distribute.get_strategy())
    out['sact'] = dict(two=summaries[0], one=one,
                       replicas=config.run.replicas)
    run = work + '/plain'
    cifar10.main([
        'cifar10', '--strategy=mirrored', '--dataset=clutter_digits',
        f'--data_dir={data_dir}', f'--model_dir={run}', '--model=1',
        '--model_type=resnet', '--base_channels=4', '--batch_size=4',
        '--train_steps=2', '--mode=train', '--sync_batch_norm'])
    config = config_lib.load(run)
    model = config.build_model()
    out['plain'] = dict(
        replicas=config.run.replicas, sync=config.run.sync_batch_norm,
        synchronized=[l.synchronized for l in model._flatten_layers()
                      if type(l).__name__ == "BatchNormalization"])
    run = work + '/detector'
    two = coco.main([
        'coco', '--strategy=mirrored', '--dataset=clutter_digits_detection',
        f'--data_dir={work}/tfds', f'--model_dir={run}', '--model=1,1,1,1',
        '--base_channels=4', '--rpn_depth=8', '--anchor_base_size=32',
        '--anchor_scales=1', '--anchor_aspect_ratios=1',
        '--num_proposals=12', '--min_size=48', '--max_size=64',
        '--train_steps=2', '--summary_every=1', '--eval_examples=3',
        '--summary_images=0'])
    config = detection_config.load(run)
    one = detection_evaluation.evaluate(
        config, write=False, strategy=tf.distribute.get_strategy())
    out['detector'] = dict(replicas=config.run.replicas, two=two, one=one)
    print('RESULT ' + json.dumps(out, default=str))
''')


@pytest.fixture(scope='module', name='runs')
def _runs(tmp_path_factory):
  work = tmp_path_factory.mktemp('replicas')
  # The clutter_digits folder the other modules share (prepared once).
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  data.prepare('clutter_digits', data_dir)
  env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES='',
             TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run([sys.executable, '-c', _SCRIPT, str(work), data_dir],
                        env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith('RESULT ')]
  assert done.returncode == 0 and lines, done.stderr[-5000:]
  return json.loads(lines[-1][len('RESULT '):])


def _same(a, b):
  """Equal, or both NaN (an AP without any valid box)."""
  return a == b or (math.isnan(a) and math.isnan(b))


def _evaluations(run, count_key, count):
  """(two-replica record, one-device record) of a run trained on two
  replicas, both of `count` examples."""
  assert run['replicas'] == 2
  two, one = run['two'], run['one']
  assert (two['replicas'], one['replicas']) == (2, 1)
  assert two[count_key] == one[count_key] == count
  return two, one


def test_sact_trains_and_evaluates_on_two_replicas(runs):
  two, one = _evaluations(runs['sact'], 'num_examples', 10)
  # Each replica evaluated a shard: the numbers are one device's.
  for key in ('top1', 'top5', 'flops_mean', 'flops_std'):
    assert two[key] == one[key], key
  for key in ('cross_entropy', 'ponder_cost_mean', 'ponder_cost_std'):
    assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
  for a, b in zip(two['blocks'], one['blocks']):
    assert a['units_mean'] == pytest.approx(b['units_mean'], rel=1e-6)


def test_plain_resnet_trains_with_synchronised_batch_norm(runs):
  plain = runs['plain']
  assert plain['replicas'] == 2 and plain['sync'] is True
  assert plain['synchronized'] and all(plain['synchronized'])


def test_detector_trains_and_evaluates_on_two_replicas(runs):
  two, one = _evaluations(runs['detector'], 'num_images', 3)
  # Each replica detected its own images: the numbers are one device's.
  for key in ('AP', 'AP50', 'flops_mean', 'flops_std'):
    assert _same(two[key], one[key]), key
  assert two['ponder_cost_mean'] == pytest.approx(one['ponder_cost_mean'],
                                                  rel=1e-5)
