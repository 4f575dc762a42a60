"""The Faster R-CNN model: outputs, FLOPs, sparse inference, losses, init."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sact_tf import architectures
from sact_tf.detection import config as config_lib
from sact_tf.detection import data
from sact_tf.detection import export
from sact_tf.detection import model as model_lib
from sact_tf.detection import training
from sact_tf.models import resnet
from sact_tf.train import checkpointing


# Base width 4 or more: at batch 1, oneDNN's gradient of a 1x1 stride-2 conv
# with 8 or fewer input channels corrupts memory (TF 2.21 CPU).
def tiny_config(**overrides):
  values = dict(units=[1, 2, 2, 1], model_type='sact', num_classes=3,
                base_channels=4, rpn_depth=8, anchor_base_size=32,
                anchor_scales=(1.0,), anchor_aspect_ratios=(0.5, 1.0),
                num_proposals=16, max_detections=10,
                max_detections_per_class=5, rpn_sample_size=32,
                classifier_sample_size=8)
  values.update(overrides)
  return config_lib.ModelConfig(**values)


def images(height=70, width=90, seed=0):
  return tf.random.stateless_uniform([1, height, width, 3], [seed, 0], -1, 1)


GT_BOXES = tf.constant([[0.1, 0.1, 0.5, 0.4], [0.5, 0.5, 0.9, 0.95]])
GT_CLASSES = tf.constant([0, 2])


@pytest.fixture(scope='module')
def sact_model():
  return training.build_model(tiny_config())


def test_inference_outputs(sact_model):
  out = sact_model(images(), training=False)
  assert out['detection_boxes'].shape == (1, 10, 4)
  assert out['detection_scores'].shape == (1, 10)
  assert out['detection_classes'].dtype == tf.int32
  count = int(out['num_detections'][0])
  assert 0 < count <= 10
  boxes = out['detection_boxes'].numpy()[0, :count]
  assert np.all((boxes >= 0) & (boxes <= 1))
  assert np.all(boxes[:, 2:] >= boxes[:, :2])
  assert np.all(out['detection_classes'].numpy()[0, :count] < 3)
  assert np.all(np.diff(out['detection_scores'].numpy()[0, :count]) <= 0)
  assert out['proposal_boxes'].shape == (1, 16, 4)
  # Stride 16 features: ceil(70 / 16) x ceil(90 / 16).
  assert out['block3/ponder_map'].shape == (1, 5, 6)
  assert out['block1/ponder_map'].shape == (1, 18, 23)
  assert out['flops'].dtype == tf.int64
  assert 'block4/ponder_map' not in out


def test_plain_feature_extractor_flops_match_the_static_count():
  model = training.build_model(tiny_config(model_type='resnet'))
  out = model(images(), training=False)
  expected = model_lib.feature_extractor_flops([1, 2, 2, 1], 70, 90, 4)
  assert int(out['flops'][0]) == expected
  assert 'ponder_cost' not in out


def test_sact_halting_at_once_costs_the_first_units_and_their_heads():
  model = training.build_model(tiny_config())
  for variable in model.variables:
    # Halting logit 20 everywhere, whatever the random weights.
    if variable.path.endswith('local_conv/bias'):
      variable.assign(tf.fill(variable.shape, 20.0))
    elif variable.path.endswith(('local_conv/kernel', 'global_conv/kernel')):
      variable.assign(tf.zeros(variable.shape))
  out = model(images(), training=False)
  # Blocks 2 and 3 (depths 32, 64 at 9x12 and 5x6) stop after their first
  # unit: its halting head's 3x3 conv to one channel runs everywhere, its
  # global linear term once.
  heads = (2 * 9 * 32 * 9 * 12 + 2 * 32) + (2 * 9 * 64 * 5 * 6 + 2 * 64)
  expected = model_lib.feature_extractor_flops([1, 1, 1, 1], 70, 90, 4)
  assert int(out['flops'][0]) == expected + heads
  np.testing.assert_allclose(out['block3/ponder_map'].numpy(), 1.0 + 1.0)


def test_resnet101_feature_extractor_flops_bracket_the_paper():
  # The paper's 1.42e11 is a mean over COCO val, mostly 640x480 images
  # (600x800 after resizing) and some 640x427 ones (600x899).
  low = model_lib.feature_extractor_flops(
      architectures.IMAGENET_DEPTHS[101], 600, 800)
  high = model_lib.feature_extractor_flops(
      architectures.IMAGENET_DEPTHS[101], 600, 899)
  assert low < 1.42e11 < high
  assert low == pytest.approx(1.35e11, rel=0.01)


def test_sparse_inference_gives_the_dense_detections():
  # The mixed halting below depends on the initial weights too: seeded, so
  # that it does not depend on which tests ran before.
  keras.utils.set_random_seed(0)
  dense = training.build_model(tiny_config(sparse=False))
  # dense_fraction 1: every partly active unit gathers.
  sparse = training.build_model(tiny_config(sparse=True, dense_fraction=1.0))
  rng = np.random.default_rng(0)
  for variable in dense.variables:
    # Halting heads that stop some positions early exercise the gathering:
    # a large random local term spreads the scores over the positions.
    if variable.path.endswith('local_conv/bias'):
      variable.assign(tf.fill(variable.shape, 0.0))
    elif variable.path.endswith('local_conv/kernel'):
      variable.assign(rng.normal(0, 1, variable.shape))
  for variable, other in zip(sparse.variables, dense.variables):
    variable.assign(other)
  x = images(seed=3)
  a, b = dense(x, training=False), sparse(x, training=False)
  units = a['block2/num_units'].numpy()
  assert units.min() == 1 and units.max() == 2, 'needs mixed halting'
  np.testing.assert_array_equal(a['flops'].numpy(), b['flops'].numpy())
  np.testing.assert_allclose(a['detection_scores'].numpy(),
                             b['detection_scores'].numpy(), atol=1e-4)
  np.testing.assert_allclose(a['detection_boxes'].numpy(),
                             b['detection_boxes'].numpy(), atol=1e-4)


def test_losses_and_gradients_are_finite(sact_model):
  with tf.GradientTape() as tape:
    values = sact_model.losses_and_metrics(images(), GT_BOXES, GT_CLASSES,
                                           [1, 2])
  for key, value in values.items():
    assert np.isfinite(value.numpy()), key
  grads = tape.gradient(values['loss'], sact_model.trainable_variables)
  # Units after the last one the batch ran (random weights can halt early)
  # were never executed, so they alone may lack a gradient.
  out = sact_model(images(), training=False)
  skipped = [f'{block}/unit_{u}/' for block in ('block1', 'block2', 'block3')
             for u in range(int(out[f'{block}/num_units'].numpy().max()) + 1,
                            10)]
  missing = [v.path for v, g in zip(sact_model.trainable_variables, grads)
             if g is None and not any(s in v.path for s in skipped)]
  assert not missing
  assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)
  assert values['positive_anchors'] >= 2  # each box claims an anchor
  np.testing.assert_allclose(values['ponder_loss'].numpy(),
                             0.005 * values['ponder_cost'].numpy(), rtol=1e-6)


def test_an_image_without_objects_trains_without_nan(sact_model):
  with tf.GradientTape() as tape:
    values = sact_model.losses_and_metrics(
        images(), tf.zeros([0, 4]), tf.zeros([0], tf.int32), [1, 2])
  assert float(values['rpn_localization']) == 0.0
  assert float(values['box_localization']) == 0.0
  grads = tape.gradient(values['loss'], sact_model.trainable_variables)
  assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)


def test_ponder_loss_reaches_the_feature_extractor_only(sact_model):
  with tf.GradientTape() as tape:
    values = sact_model.losses_and_metrics(images(), GT_BOXES, GT_CLASSES,
                                           [1, 2])
    ponder = values['ponder_loss']
  grads = tape.gradient(ponder, sact_model.trainable_variables)
  reached = {v.path.split('/')[1] for v, g in
             zip(sact_model.trainable_variables, grads)
             if g is not None and float(tf.reduce_max(tf.abs(g))) > 0}
  assert reached and reached <= {'conv1', 'block1', 'block2', 'block3'}
  assert not any('halting' in v.path for v in sact_model.box_block.variables)


def test_frozen_batch_norm_keeps_its_statistics(sact_model):
  assert not any('moving' in v.path or 'gamma' in v.path
                 for v in sact_model.trainable_variables
                 if not v.path.startswith('faster_rcnn/rpn_norm'))
  moving = [v for v in sact_model.variables
            if 'block1/unit_1/preact/moving_mean' in v.path][0]
  before = moving.numpy().copy()
  sact_model.losses_and_metrics(images(), GT_BOXES, GT_CLASSES, [1, 2])
  np.testing.assert_array_equal(moving.numpy(), before)


def test_training_takes_one_image_at_a_time(sact_model):
  with pytest.raises(ValueError, match='one image at a time'):
    sact_model.losses_and_metrics(tf.zeros([2, 64, 64, 3]), GT_BOXES,
                                  GT_CLASSES, [1, 2])


def test_images_must_be_float_rgb(sact_model):
  with pytest.raises(ValueError, match='float'):
    sact_model(tf.zeros([1, 64, 64, 3], tf.uint8))
  with pytest.raises(ValueError, match='height, width, 3'):
    sact_model(tf.zeros([1, 64, 64]))


def _imagenet_checkpoint(tmp_path, model_type):
  source = resnet.imagenet_resnet(units=[1, 2, 2, 1], base_channels=4,
                                  model_type=model_type)
  source(tf.zeros([1, 32, 32, 3]))
  for variable in source.variables:
    variable.assign(tf.random.stateless_uniform(variable.shape, [7, 0]))
  directory = str(tmp_path / model_type)
  checkpointing.write_model_checkpoint(source, directory)
  return source, directory


def _by_name(model):
  return {v.path.split('/', 1)[1]: v for v in model.variables}


@pytest.mark.parametrize('source_type', ['resnet', 'sact'])
def test_init_from_an_imagenet_checkpoint(tmp_path, source_type):
  source, directory = _imagenet_checkpoint(tmp_path, source_type)
  detector = training.build_model(tiny_config())
  fresh_bias = _by_name(detector)['block2/unit_1_halting/local_conv/bias']
  fresh_bias = fresh_bias.numpy().copy()
  rpn_before = _by_name(detector)['rpn_conv/kernel'].numpy().copy()
  summary = training.init_from_imagenet(detector, directory)
  theirs, ours = _by_name(source), _by_name(detector)
  for name in ('conv1/kernel', 'block1/unit_1/conv1/kernel',
               'block3/unit_2/conv3/bias', 'block4/unit_1/conv2/kernel',
               'block4/unit_1/shortcut/kernel', 'postnorm/gamma',
               'block2/unit_1/preact/moving_variance'):
    np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy(),
                                  err_msg=name)
  np.testing.assert_array_equal(ours['rpn_conv/kernel'].numpy(), rpn_before)
  halting = ours['block2/unit_1_halting/local_conv/bias'].numpy()
  if source_type == 'sact':
    np.testing.assert_array_equal(
        halting, theirs['block2/unit_1_halting/local_conv/bias'].numpy())
    assert summary.kept == 0
  else:
    np.testing.assert_array_equal(halting, fresh_bias)
    assert summary.kept > 0


def test_init_from_a_smaller_imagenet_model_names_the_missing_weights(
    tmp_path):
  _, directory = _imagenet_checkpoint(tmp_path, 'resnet')
  detector = training.build_model(tiny_config(units=[1, 3, 2, 1]))
  with pytest.raises(ValueError, match='(?s)block2/unit_3.*--model'):
    training.init_from_imagenet(detector, directory)


@pytest.mark.slow
def test_export_serves_the_keras_detections(tmp_path):
  model = training.build_model(tiny_config())
  export_dir = export.export_saved_model(model, str(tmp_path / 'model'),
                                         min_size=48, max_size=80)
  image = np.random.default_rng(0).integers(0, 255, (1, 30, 60, 3),
                                            dtype=np.uint8)
  out = tf.saved_model.load(export_dir).signatures['serving_default'](
      images=tf.constant(image))
  # Resized keeping the aspect ratio: 30x60 -> 40x80 (the long side caps).
  expected = model(data.preprocess_image(image[0], 48, 80), training=False)
  for key in ('detection_boxes', 'detection_scores', 'detection_classes',
              'num_detections', 'flops'):
    np.testing.assert_allclose(out[key].numpy(), expected[key].numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=key)
  assert out['ponder_map'].shape == (1, 30, 60)
  with pytest.raises(Exception, match='RGB'):
    tf.saved_model.load(export_dir).signatures['serving_default'](
        images=tf.zeros([1, 30, 60, 1], tf.uint8))


def test_the_config_builds_its_detector():
  config = config_lib.DetectionConfig(model=tiny_config(),
                                      loss=dict(tau=0.02))
  model = config.build_model(sparse=False)
  assert isinstance(model, model_lib.FasterRCNN) and model.built
  assert not model.config.sparse and config.model.sparse
  assert model.loss_config.tau == 0.02
