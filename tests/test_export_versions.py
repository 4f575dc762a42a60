"""experiments.export's serving layout, precision and plain ResNets.

One small SACT run (checkpoint at step 7) is exported twice into one
`ram://` base, as version 7 (its step, float32) and as version 8
(--version, mixed_bfloat16), from an empty working directory; the tests read
those exports. The folder rules themselves are tested with a stand-in
archive in `tests/test_export_safety.py`.
"""

import json
import os
import uuid

from absl import app
from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import export as export_binary
from sact_tf import export
from sact_tf.detection import config as detection_config
from sact_tf.detection import export as detection_export
from sact_tf.detection import training as detection_training
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib

STEP = 7
OUTPUTS = {'probabilities', 'top_classes', 'top_scores', 'flops',
           'ponder_cost', 'ponder_map', 'ponder_map_resized'}


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  export_binary.FLAGS.unparse_flags()


def _run(model_dir, model_type='sact', step=STEP):
  """A CIFAR run of 1, 2, 1 units with a checkpoint at `step`: the model."""
  config = config_lib.ExperimentConfig(
      model=dict(family='cifar', units=[1, 2, 1], model_type=model_type,
                 num_classes=10, base_channels=4),
      data=dict(dataset='cifar10', preprocessing='cifar', image_size=32,
                eval_image_sizes=[32]),
      run=dict(model_dir=str(model_dir)))
  keras.utils.set_random_seed(step)
  model = config.build_model(image_size=32)
  checkpointing.write_model_checkpoint(model, str(model_dir), step=step)
  config_lib.save(config)
  return model


def _export(*args):
  export_binary.FLAGS.unparse_flags()
  return export_binary.main(['export', *args])


@pytest.fixture(name='exports', scope='module')
def _exports(tmp_path_factory):
  root = tmp_path_factory.mktemp('versions')
  run = root / 'run'
  model = _run(run)
  files = sorted(os.listdir(run))
  cwd = root / 'cwd'
  cwd.mkdir()
  base = f'ram://serving_{uuid.uuid4().hex[:8]}'
  previous = os.getcwd()
  os.chdir(cwd)
  try:
    default = _export(f'--model_dir={run}', f'--export_dir={base}')
    mixed = _export(f'--model_dir={run}', f'--export_dir={base}',
                    '--precision=mixed_bfloat16', '--version=8')
  finally:
    os.chdir(previous)
  yield dict(model=model, run=run, base=base, default=default, mixed=mixed,
             cwd=cwd, run_files=files)
  tf.io.gfile.rmtree(base)


def _images(count=8, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3),
                                              dtype=np.uint8)


def test_versions_default_to_the_step_and_sit_side_by_side(exports):
  base = exports['base']
  assert exports['default'] == f'{base}/{STEP}'
  assert exports['mixed'] == f'{base}/8'
  assert sorted(tf.io.gfile.listdir(base)) == [str(STEP), '8']
  default = export.read_marker(exports['default'])
  mixed = export.read_marker(exports['mixed'])
  assert default['precision'] == 'float32'
  assert mixed['precision'] == 'mixed_bfloat16'
  for marker in (default, mixed):
    assert marker['run_dir'] == os.path.realpath(exports['run'])
    assert marker['checkpoint'].endswith(f'ckpt-{STEP}')


def test_a_ram_export_serves_and_writes_nothing_locally(exports):
  assert os.listdir(exports['cwd']) == []
  assert sorted(os.listdir(exports['run'])) == exports['run_files']
  serve = tf.saved_model.load(exports['default']).signatures[
      'serving_default']
  images = _images()
  out = serve(images=tf.constant(images))
  expected = exports['model'](tf.image.per_image_standardization(
      tf.constant(images, tf.float32)), training=False)
  np.testing.assert_allclose(out['probabilities'].numpy(),
                             tf.nn.softmax(expected['logits']).numpy(),
                             rtol=1e-5, atol=1e-7)


def test_a_mixed_precision_export_serves_float32_close_to_float32(exports):
  default = tf.saved_model.load(exports['default'])
  mixed = tf.saved_model.load(exports['mixed'])
  images = _images(16, seed=1)
  png = tf.io.encode_png(images[0]).numpy()
  for name, inputs in [('serving_default', dict(images=images)),
                       ('serve_float', dict(images=images / 255.0)),
                       ('serve_encoded', dict(encoded=[png, png]))]:
    signature = mixed.signatures[name]
    assert {k: v.dtype for k, v in signature.structured_outputs.items()} == {
        k: v.dtype
        for k, v in default.signatures[name].structured_outputs.items()}
    out = signature(**{k: tf.constant(v, tf.float32 if name == 'serve_float'
                                      else None)
                       for k, v in inputs.items()})
    assert set(out) == OUTPUTS
    for key, value in out.items():
      assert value.dtype == {'top_classes': tf.int32,
                             'flops': tf.int64}.get(key, tf.float32), key
  expected = default.signatures['serving_default'](images=images)
  out = mixed.signatures['serving_default'](images=images)
  # bfloat16 keeps about 3 significant digits.
  np.testing.assert_allclose(out['probabilities'].numpy(),
                             expected['probabilities'].numpy(), atol=0.05)
  probabilities = np.sort(expected['probabilities'].numpy(), axis=-1)
  clear = probabilities[:, -1] - probabilities[:, -2] > 0.02
  np.testing.assert_array_equal(out['top_classes'].numpy()[clear, 0],
                                expected['top_classes'].numpy()[clear, 0])
  # Rounding may move a few positions across the halting threshold.
  np.testing.assert_allclose(out['flops'].numpy(), expected['flops'].numpy(),
                             rtol=0.05)
  np.testing.assert_allclose(out['ponder_cost'].numpy(),
                             expected['ponder_cost'].numpy(), atol=0.1)


def test_bad_precision_and_version_are_usage_errors(exports, tmp_path):
  run = exports['run']
  with pytest.raises(app.UsageError,
                     match=r"Unknown precision 'float64': allowed values are "
                           r'float32, mixed_bfloat16, mixed_float16'):
    _export(f'--model_dir={run}', f'--export_dir={tmp_path / "e"}',
            '--precision=float64')
  with pytest.raises(flags.IllegalFlagValueError, match='version'):
    _export(f'--model_dir={run}', f'--export_dir={tmp_path / "e"}',
            '--version=0')
  # Nor is a version folder inside the run directory written.
  with pytest.raises(app.UsageError, match='is the run directory'):
    _export(f'--model_dir={run}', f'--export_dir={run}', '--version=3')
  assert not (tmp_path / 'e').exists()
  assert sorted(os.listdir(run)) == exports['run_files']


def test_a_plain_resnet_exports_like_sact(exports, tmp_path, capsys):
  run = tmp_path / 'plain'
  model = _run(run, model_type='resnet', step=3)
  base = tmp_path / 'serving'
  path = _export(f'--model_dir={run}', f'--export_dir={base}')
  assert path == str(base / '3')
  printed = capsys.readouterr().out
  assert f'as version 3 to {base / "3"}' in printed
  assert 'resnet cifar ResNet' in printed
  loaded = tf.saved_model.load(path)
  sact = tf.saved_model.load(exports['default'])
  for name in ('serving_default', 'serve_float', 'serve_encoded'):
    assert (loaded.signatures[name].structured_input_signature
            == sact.signatures[name].structured_input_signature)
    assert {k: v.dtype for k, v in
            loaded.signatures[name].structured_outputs.items()} == {
                k: v.dtype for k, v in
                sact.signatures[name].structured_outputs.items()}
  images = _images(2, 24)
  out = loaded.signatures['serving_default'](images=images)
  expected = model(tf.image.per_image_standardization(
      tf.constant(images, tf.float32)), training=False)
  np.testing.assert_allclose(out['probabilities'].numpy(),
                             tf.nn.softmax(expected['logits']).numpy(),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(out['flops'].numpy(),
                                expected['flops'].numpy())
  # L + 1 per block (1, 2 and 1 units), everywhere; CIFAR's first block
  # keeps the input's resolution.
  np.testing.assert_array_equal(out['ponder_cost'].numpy(), [7.0, 7.0])
  assert out['ponder_map'].shape == (2, 24, 24)
  np.testing.assert_array_equal(out['ponder_map'].numpy(), 7.0)
  np.testing.assert_array_equal(out['ponder_map_resized'].numpy(), 7.0)
  marker = json.loads((base / '3' / export.MARKER_FILENAME).read_text())
  assert marker['model'] == 'resnet cifar ResNet (units [1, 2, 1], 10 classes)'


class _FakeDetector(keras.Model):
  """Stands in for a FasterRCNN computing in bfloat16: its boxes, scores
  and FLOPs come out in the 16-bit compute dtype."""

  adaptive = False
  config = detection_config.ModelConfig(units=[1, 1, 1, 1])

  def call(self, images, training=None):
    del training
    batch = tf.shape(images)[0]
    mean = tf.cast(tf.reduce_mean(images, axis=[1, 2, 3]), tf.bfloat16)
    return {
        'detection_boxes': tf.zeros([batch, 3, 4], tf.bfloat16)
                           + mean[:, None, None],
        'detection_scores': tf.ones([batch, 3], tf.bfloat16),
        'detection_classes': tf.zeros([batch, 3], tf.int32),
        'num_detections': tf.fill([batch], 3),
        'flops': tf.fill([batch], tf.constant(10, tf.int64)),
    }


def test_a_detector_computing_in_16_bits_serves_float32(tmp_path):
  model = _FakeDetector(dtype='mixed_bfloat16', name='fake_detector')
  model(tf.zeros([1, 8, 8, 3]))
  path = detection_export.export_versioned(model, str(tmp_path / 'det'), 2,
                                           min_size=16, max_size=32)
  out = tf.saved_model.load(path).signatures['serving_default'](
      images=np.full([1, 20, 10, 3], 128, np.uint8))
  assert {k: v.dtype for k, v in out.items()} == {
      'detection_boxes': tf.float32, 'detection_scores': tf.float32,
      'detection_classes': tf.int32, 'num_detections': tf.int32,
      'flops': tf.int64, 'ponder_map': tf.float32}
  # A plain extractor: L + 1 over blocks 1-3.
  np.testing.assert_array_equal(out['ponder_map'].numpy(), 6.0)
  assert export.read_marker(path)['precision'] == 'mixed_bfloat16'


def test_a_detector_built_under_a_mixed_policy_exports(tmp_path):
  model = detection_training.build_model(detection_config.ModelConfig(
      units=[1, 1, 1, 1], model_type='sact', num_classes=3,
      base_channels=4, rpn_depth=8, anchor_base_size=32,
      anchor_scales=(1.0,), anchor_aspect_ratios=(1.0,), num_proposals=8,
      max_detections=5, max_detections_per_class=5), dtype='mixed_bfloat16')
  assert model.rpn_conv.dtype_policy.name == 'mixed_bfloat16'
  path = detection_export.export_versioned(model, str(tmp_path / 'det'), 1,
                                           min_size=48, max_size=64)
  out = tf.saved_model.load(path).signatures['serving_default'](
      images=np.full([1, 30, 50, 3], 128, np.uint8))
  for key, value in out.items():
    assert value.dtype in (tf.float32, tf.int32, tf.int64), key
