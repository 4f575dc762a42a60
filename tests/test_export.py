import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sact_tf import export, models, viz


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  model = models.imagenet_resnet(units=[1, 2, 1, 2], base_channels=2,
                                 model_type='sact', num_classes=7)
  model(tf.zeros([1, 32, 32, 3]))
  export_dir = os.path.join(tmp_path_factory.mktemp('export'), 'model')
  export.export_saved_model(model, export_dir, image_size=64)
  return model, export_dir


def reference(model, images):
  out = model(tf.cast(images, tf.float32) / 127.5 - 1.0, training=False)
  return out, tf.nn.softmax(out['logits']).numpy()


def test_reloaded_image_signature_gives_the_keras_numbers(exported):
  model, export_dir = exported
  images = np.random.default_rng(0).integers(0, 255, (2, 50, 70, 3),
                                             dtype=np.uint8)
  loaded = tf.saved_model.load(export_dir)
  out = loaded.signatures['serving_default'](images=tf.constant(images))
  ref, probabilities = reference(model, images)
  np.testing.assert_allclose(out['probabilities'].numpy(), probabilities,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(out['flops'].numpy(), ref['flops'].numpy())
  np.testing.assert_allclose(out['ponder_cost'].numpy(),
                             ref['ponder_cost'].numpy(), rtol=1e-6)
  np.testing.assert_array_equal(out['top_classes'].numpy()[:, 0],
                                probabilities.argmax(-1))
  assert out['ponder_map'].shape == (2, 13, 18)
  assert out['ponder_map_resized'].shape == (2, 50, 70)
  expected_map = viz.total_ponder_map(ref, (13, 18)).numpy()
  np.testing.assert_allclose(out['ponder_map'].numpy(), expected_map,
                             rtol=1e-6)


def test_encoded_signature_applies_eval_preprocessing(exported):
  model, export_dir = exported
  image = np.random.default_rng(1).integers(0, 255, (80, 60, 3),
                                            dtype=np.uint8)
  png = tf.io.encode_png(image).numpy()
  loaded = tf.saved_model.load(export_dir)
  out = loaded.signatures['serve_encoded'](encoded=tf.constant([png, png]))
  expected = model(export.central_crop_and_resize(image, 64)[tf.newaxis],
                   training=False)
  np.testing.assert_allclose(out['probabilities'].numpy()[0],
                             tf.nn.softmax(expected['logits'])[0].numpy(),
                             rtol=1e-5, atol=1e-7)
  assert out['ponder_map_resized'].shape == (2, 64, 64)


def test_bad_requests_fail_clearly_and_serving_goes_on(exported):
  _, export_dir = exported
  loaded = tf.saved_model.load(export_dir)
  serve = loaded.signatures['serving_default']
  with pytest.raises(tf.errors.InvalidArgumentError, match='Unknown image'):
    loaded.signatures['serve_encoded'](encoded=tf.constant([b'not an image']))
  with pytest.raises(tf.errors.InvalidArgumentError, match='Empty batch'):
    serve(images=tf.zeros([0, 32, 32, 3], tf.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='must be RGB'):
    serve(images=tf.zeros([1, 32, 32, 4], tf.uint8))
  out = serve(images=tf.zeros([1, 40, 40, 3], tf.uint8))
  assert out['probabilities'].shape == (1, 7)


def test_saved_model_cli_runs_the_signature(exported, tmp_path):
  model, export_dir = exported
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  inputs = os.path.join(tmp_path, 'images.npy')
  images = np.random.default_rng(2).integers(0, 255, (1, 40, 48, 3),
                                             dtype=np.uint8)
  np.save(inputs, images)
  out_dir = os.path.join(tmp_path, 'out')
  result = subprocess.run(
      [cli, 'run', '--dir', export_dir, '--tag_set', 'serve',
       '--signature_def', 'serving_default', '--inputs', f'images={inputs}',
       '--outdir', out_dir], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  _, probabilities = reference(model, images)
  np.testing.assert_allclose(
      np.load(os.path.join(out_dir, 'probabilities.npy')), probabilities,
      rtol=1e-5, atol=1e-7)


def test_plain_resnet_cannot_be_exported(tmp_path):
  model = models.imagenet_resnet(units=[1, 1, 1, 1], base_channels=1,
                                 model_type='resnet', num_classes=3)
  with pytest.raises(ValueError, match='ACT or SACT'):
    export.export_saved_model(model, os.path.join(tmp_path, 'x'))
