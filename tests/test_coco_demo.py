"""experiments.coco_demo at toy size: pretraining, the plain and SACT
detectors, the Markdown table; and the default setting's FLOPs split."""

import os

from absl import app
import pytest

from experiments import coco
from experiments import coco_demo
from experiments import imagenet
from sact_tf import flops
from sact_tf.detection import clutter_detection


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  for binary in (coco_demo, coco, imagenet):
    binary.FLAGS.unparse_flags()


def test_blocks_carry_most_of_the_default_extractor_flops():
  size = coco_demo.FLAGS['image_size'].default
  width = coco_demo.FLAGS['base_channels'].default
  total, _ = flops.imagenet_feature_flops([2, 2, 3, 1], size, size,
                                          base_channels=width, num_blocks=3)
  stem = flops.imagenet_stem_flops(size, size)
  assert (total - stem) / total > 0.65


def test_bad_taus_are_a_usage_error(tmp_path):
  with pytest.raises(app.UsageError, match='--taus'):
    coco_demo.main(['coco_demo', f'--work_dir={tmp_path}', '--taus=x'])
  with pytest.raises(app.UsageError, match='--seeds'):
    coco_demo.main(['coco_demo', f'--work_dir={tmp_path}', '--seeds=-1'])


def test_toy_demo_writes_table_one(tmp_path, monkeypatch):
  monkeypatch.setitem(clutter_detection.NUM_EXAMPLES, 'train', 6)
  monkeypatch.setitem(clutter_detection.NUM_EXAMPLES, 'test', 2)
  work_dir = str(tmp_path / 'demo')
  result = coco_demo.main([
      'coco_demo', f'--work_dir={work_dir}', f'--data_dir={tmp_path / "d"}',
      # base_channels >= 4: oneDNN corrupts memory in the batch-1 gradient
      # of a 1x1 stride-2 conv with <= 8 input channels.
      '--pretrain_steps=1', '--train_steps=1', '--base_channels=4',
      '--image_size=64', '--taus=0.01', '--seeds=0,3'])
  names = [name for name, _ in result['rows']]
  assert names == ['ResNet (plain)', 'SACT tau=0.01', 'ResNet (plain) seed 3',
                   'SACT tau=0.01 seed 3']
  for folder in ('pretrain', 'resnet', 'sact_tau0.01', 'resnet_seed3',
                 'sact_tau0.01_seed3'):
    assert os.path.exists(os.path.join(work_dir, folder, 'config.json'))
  with open(os.path.join(work_dir, 'table1.md')) as f:
    text = f.read()
  assert text == result['text']
  # One row per detector, its seeds pooled.
  rows = [line for line in text.splitlines() if line.startswith('| ')]
  assert len(rows) == 3
  assert rows[1].startswith('| ResNet (plain) | 2 |')
  assert '100.0 +- 0.0' in rows[1]
  assert rows[2].startswith('| SACT tau=0.01 | 2 |')
  for _, summary in result['rows']:
    assert summary['num_images'] == 2
