"""experiments.coco end to end: mocked COCO, the clutter demo data, export."""

import glob
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing import event_accumulator

from experiments import coco
from sact_tf.detection import clutter_detection
from sact_tf.detection import coco_eval
from sact_tf.detection import data
from sact_tf.detection import evaluation
from tests import helpers

# Base width 4 or more: see tests/test_detection_model.py.
TINY = ['--model=1,1,1,1', '--base_channels=4', '--rpn_depth=8',
        '--anchor_base_size=32', '--anchor_scales=1',
        '--anchor_aspect_ratios=1', '--num_proposals=12', '--min_size=48',
        '--max_size=64', '--learning_rate=0.01']

# Three COCO-like images: two objects and a crowd box; no objects; an
# object and a zero-area box. Every objects/* field has one entry per object.
_COCO_OBJECTS = [
    ([[.1, .1, .6, .5], [.5, .4, .9, .9], [0., 0., 1., 1.]], [0, 79, 2],
     [False, False, True]),
    ([], [], []),
    ([[.2, .2, .7, .8], [.3, .3, .3, .5]], [11, 5], [False, False]),
]


_coco_as_dataset = helpers.coco_as_dataset(
    _COCO_OBJECTS, lambda index: (40 + 8 * index, 56, 3))


def _tensors(log_dir, tag):
  files = glob.glob(os.path.join(log_dir, 'events.out.tfevents.*'))
  assert files, f'no events in {log_dir}'
  values = []
  for path in sorted(files):
    accumulator = event_accumulator.EventAccumulator(
        path, size_guidance={'tensors': 0})
    accumulator.Reload()
    if tag in accumulator.Tags()['tensors']:
      values += [tf.make_ndarray(e.tensor_proto)
                 for e in accumulator.Tensors(tag)]
  return values


@pytest.mark.slow
def test_coco_train_eval_export_and_resume(tmp_path, caplog):
  model_dir = str(tmp_path / 'run')
  export_dir = str(tmp_path / 'export')
  args = ['coco', '--dataset=coco/2017', f'--data_dir={tmp_path / "data"}',
          f'--model_dir={model_dir}', '--summary_every=1',
          '--summary_images=2', *TINY]
  caplog.set_level(logging.INFO)
  with tfds.testing.mock_data(as_dataset_fn=_coco_as_dataset):
    coco.main(args + ['--train_steps=3', f'--export_dir={export_dir}'])
    # The zero-area box is dropped once per epoch, and logged.
    assert 'Dropped 1 degenerate (zero-area)' in caplog.text
    result = json.loads((tmp_path / 'run' / 'eval_validation.json')
                        .read_text())
    assert result['num_images'] == 3 and result['step'] == 3
    for key in coco_eval.METRICS[:3]:
      assert 0.0 <= result[key] <= 1.0
    assert result['flops_mean'] > 0
    # One unit per block: nothing to skip.
    assert result['flops_ratio_mean'] == pytest.approx(1.0)
    assert result['flops_blocks_ratio_mean'] == pytest.approx(1.0)
    assert 0 < result['flops_stem_mean'] < result['flops_mean']
    assert result['flops_resnet101_ratio_mean'] < 0.05
    assert result['ponder_cost_mean'] > 0
    detections = json.loads(
        (tmp_path / 'run' / 'detections_validation.json').read_text())
    assert {d['image_id'] for d in detections} <= {100, 101, 102}
    assert {d['category_id'] for d in detections} <= {
        i for i, _ in coco_eval.COCO_CATEGORIES}
    eval_dir = os.path.join(model_dir, 'eval_validation')
    assert len(_tensors(eval_dir, 'AP50')) == 1
    image = _tensors(eval_dir, 'detections_and_ponder_map/1')
    assert len(image) == 1
    assert np.all(np.isfinite(_tensors(os.path.join(model_dir, 'train'),
                                       'loss')))

    # Resumes from step 3 with the same flags: one more step.
    coco.main(args + ['--train_steps=4', '--mode=train'])
    assert os.path.exists(os.path.join(model_dir, 'ckpt-4.index'))
    assert len(_tensors(os.path.join(model_dir, 'train'), 'loss')) == 4

  # TF Serving's layout: <export_dir>/<step>/, step 3 when exported.
  assert os.listdir(export_dir) == ['3']
  loaded = tf.saved_model.load(os.path.join(export_dir, '3'))
  # Grey: an all-black image is refused (what float [0, 1] pixels become).
  out = loaded.signatures['serving_default'](
      images=tf.fill([1, 30, 50, 3], tf.constant(128, tf.uint8)))
  assert out['detection_boxes'].shape == (1, 300, 4)
  assert out['ponder_map'].shape == (1, 30, 50)
  assert out['num_detections'].dtype == tf.int32


def test_another_model_in_the_same_directory_is_refused(tmp_path):
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  with tfds.testing.mock_data(as_dataset_fn=_coco_as_dataset):
    coco.main(['coco', '--dataset=coco/2017', f'--model_dir={model_dir}',
               f'--data_dir={tmp_path / "data"}', '--train_steps=0',
               '--mode=train', *TINY])
    with pytest.raises(ValueError, match='different detector.*units'):
      coco.main(['coco', '--dataset=coco/2017', f'--model_dir={model_dir}',
                 f'--data_dir={tmp_path / "data"}', '--train_steps=0',
                 '--mode=train', *TINY, '--model=1,1,2,1'])


def test_set_detector_fields(tmp_path):
  model_dir = tmp_path / 'run'
  with tfds.testing.mock_data(as_dataset_fn=_coco_as_dataset):
    coco.main(['coco', '--dataset=coco/2017', f'--model_dir={model_dir}',
               f'--data_dir={tmp_path / "data"}', '--train_steps=0',
               '--mode=train', *TINY, '--set=model.rpn_nms_iou=0.6',
               '--set=data.flip=false', '--set=loss.tau=0.02'])
  saved = json.loads((model_dir / 'config.json').read_text())
  assert saved['model']['rpn_nms_iou'] == 0.6
  assert saved['data']['flip'] is False and saved['loss']['tau'] == 0.02
  assert saved['model']['num_proposals'] == 12  # From --num_proposals.
  # A field's own flag and --set together are refused.
  from absl import app  # pylint: disable=import-outside-toplevel
  with pytest.raises(app.UsageError, match='model.num_proposals is also set '
                     'by --num_proposals'):
    coco.main(['coco', f'--model_dir={model_dir}', *TINY,
               '--set=model.num_proposals=20'])


def test_missing_coco_names_the_remedy(tmp_path):
  with pytest.raises(data.DatasetNotReadyError, match='tfds build coco/2017'):
    coco.main(['coco', '--dataset=coco/2017', '--nodownload',
               f'--data_dir={tmp_path}', f'--model_dir={tmp_path / "run"}',
               *TINY])


def test_bad_flags_are_usage_errors(tmp_path):
  from absl import app  # pylint: disable=import-outside-toplevel
  with pytest.raises(app.UsageError, match='--model_dir is required'):
    coco.main(['coco', *TINY])
  with pytest.raises(app.UsageError, match='anchor_scales'):
    coco.main(['coco', f'--model_dir={tmp_path}', *TINY,
               '--anchor_scales=big'])
  with pytest.raises(app.UsageError, match='max_size'):
    coco.main(['coco', f'--model_dir={tmp_path}', *TINY, '--max_size=10'])


@pytest.mark.slow
def test_training_loss_falls_on_clutter_digits_detection(tmp_path,
                                                         monkeypatch):
  monkeypatch.setitem(clutter_detection.NUM_EXAMPLES, 'train', 24)
  monkeypatch.setitem(clutter_detection.NUM_EXAMPLES, 'test', 4)
  model_dir = str(tmp_path / 'run')
  coco.main(['coco', '--dataset=clutter_digits_detection',
             f'--data_dir={tmp_path / "data"}', f'--model_dir={model_dir}',
             '--model=1,1,2,1', '--base_channels=4', '--rpn_depth=16',
             '--anchor_base_size=32', '--anchor_scales=0.5,1',
             '--anchor_aspect_ratios=0.5,1', '--min_size=96',
             '--max_size=96', '--num_proposals=30', '--train_steps=120',
             '--summary_every=30', '--learning_rate=0.02',
             '--add_ground_truth_proposals', '--mode=train_and_eval'])
  losses = [float(v) for v in _tensors(os.path.join(model_dir, 'train'),
                                       'loss')]
  assert len(losses) == 4
  # Detection training on CPU is not bit-reproducible from run to run (a
  # single 30-step window's mean moves by 10-20 %): the mean of the last 90
  # steps against the first 30.
  assert np.mean(losses[1:]) < 0.8 * losses[0]
  result = json.loads((tmp_path / 'run' / 'eval_test.json').read_text())
  assert result['num_images'] == 4


def test_table_one_in_miniature():
  plain = dict(AP=0.5, AP50=0.8, flops_mean=2.0e8, flops_std=0.0,
               flops_ratio_mean=1.0, flops_ratio_std=0.0,
               flops_blocks_ratio_mean=1.0, flops_blocks_ratio_std=0.0)
  sact = dict(AP=0.45, AP50=0.79, flops_mean=1.5e8, flops_std=1.0e6,
              flops_ratio_mean=0.75, flops_ratio_std=0.005,
              flops_blocks_ratio_mean=0.5, flops_blocks_ratio_std=0.01)
  table = evaluation.format_comparison([('ResNet', plain), ('SACT', sact)])
  lines = table.splitlines()
  assert lines[1].split()[:3] == ['ResNet', '50.0', '80.0']
  assert lines[2].split() == ['SACT', '45.0', '79.0', '1.5e+08', '+-',
                              '1e+06', '75.0', '+-', '0.5', '50.0', '+-',
                              '1.0']
