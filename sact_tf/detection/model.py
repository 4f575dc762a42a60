"""Faster R-CNN with a plain, ACT or SACT ResNet feature extractor (paper 4.2).

The three stages, as in the TF Object Detection API configuration the paper
used (faster_rcnn_resnet101_coco), on a pre-activation ResNet:

1. Feature extractor: the ResNet's stem and blocks 1-3 (output stride 16),
   plain, ACT or SACT; ACT/SACT blocks run sparsely at inference. Its FLOPs
   and ponder maps are the paper's Table 1 and fig. 10 quantities; the ponder
   loss tau applies to these blocks only.
2. Region proposal network on the block-3 output: BN + ReLU (pre-activation
   features are not normalised), a 3x3 conv with ReLU, then per anchor an
   objectness logit and a box code; proposals are the decoded, clipped boxes
   after NMS.
3. Box classifier: `crop_and_resize` of each proposal from the raw block-3
   output to 14x14, 2x2 max pool, ResNet block 4, the ResNet's final BN +
   ReLU, global average pooling, then class logits (background + classes)
   and per-class box codes; per-class NMS gives the detections.

Block 4 runs on 7x7 crops with stride 1 in its first unit (as the Object
Detection API's ResNet box classifier does), and as a plain block: the
crops are small, their computation is not part of the paper's FLOPs, and
halting there would make a proposal's features depend on the other
proposals' batch. Its weights have the shapes of the ImageNet ResNet's block
4 (stride changes no weight), so `--finetune_from` restores them.

Images are float `[B, H, W, 3]` in [-1, 1] (the ImageNet models' input);
boxes are `[ymin, xmin, ymax, xmax]`, in pixels inside the model and
normalised to [0, 1] at its interface.
"""

import keras
import tensorflow as tf

from sact_tf import architectures
from sact_tf import flops as flops_lib
from sact_tf import losses as losses_lib
from sact_tf.detection import anchors as anchors_lib
from sact_tf.detection import box_coder
from sact_tf.detection import box_ops
from sact_tf.detection import config as config_lib
from sact_tf.detection import losses
from sact_tf.detection import nms
from sact_tf.detection import roi
from sact_tf.detection import targets as targets_lib
from sact_tf.layers import blocks as blocks_lib
from sact_tf.layers import common
from sact_tf.layers import units as units_lib
from sact_tf.models import resnet

FEATURE_STRIDE = 16
FEATURE_BLOCKS = 3
# The feature extractor's outputs: per block and in total.
_OUTPUT_KEYS = ('ponder_cost', 'ponder_map', 'num_units', 'flops')
# Variable path prefixes (after the model's name) that come from the ImageNet
# ResNet: the stem, blocks 1-4 and the final batch norm.
BACKBONE_PREFIXES = ('conv1/', 'block1/', 'block2/', 'block3/', 'block4/',
                     'postnorm/')


def stem_flops(height, width):
  """FLOPs of the stem (7x7 stride-2 conv, 64 channels) on an image.

  The same for every model type and width: SACT never skips it.
  """
  return flops_lib.imagenet_stem_flops(height, width)


def feature_extractor_flops(units, height, width, base_channels=64):
  """FLOPs of a plain stem + blocks 1-3 on a `height` x `width` image.

  The reference of Table 1's relative FLOPs (with ResNet-101's units and 64
  base channels), counted by the convention of `sact_tf.flops`.

  Args:
    units: units per block (only the first three are used).
    height, width: the input image's size.
    base_channels: bottleneck width of block 1.

  Returns:
    Python int.
  """
  return flops_lib.imagenet_feature_flops(
      units, height, width, base_channels, num_blocks=FEATURE_BLOCKS)[0]


def _batch_norm_layers(layer):
  # pylint: disable=protected-access
  return [l for l in layer._flatten_layers()
          if isinstance(l, keras.layers.BatchNormalization)]


@keras.saving.register_keras_serializable('sact_tf')
class FasterRCNN(keras.Model):
  """The detector; see the module doc.

  `model(images)` returns the detections and the feature extractor's
  outputs (see `call`); `model.losses_and_metrics(...)` the training losses
  of one image.

  Args:
    config: a `sact_tf.detection.config.ModelConfig` (or its dict).
    loss_config: a `sact_tf.detection.config.LossConfig` (or its dict): the
      ponder cost weight tau and the weight decay (default: the paper's).
  """

  def __init__(self, config=None, loss_config=None, name='faster_rcnn',
               **kwargs):
    super().__init__(name=name, **kwargs)
    if config is None:
      config = config_lib.ModelConfig()
    elif isinstance(config, dict):
      config = dict(config)
      # Models saved by earlier versions held tau and weight_decay in their
      # model config.
      moved = {k: config.pop(k) for k in ('tau', 'weight_decay')
               if k in config}
      if loss_config is None and moved:
        loss_config = moved
      config = config_lib.ModelConfig.from_dict(config, 'model')
    if loss_config is None:
      loss_config = config_lib.LossConfig()
    elif isinstance(loss_config, dict):
      loss_config = config_lib.LossConfig.from_dict(loss_config, 'loss')
    self.config = config
    self.loss_config = loss_config
    c = config
    # The layers take the model's dtype policy (`dtype=`, default the
    # global one); outputs, boxes and losses are float32 (`_float`).
    with resnet.model_policy(self.dtype_policy):
      # Only the stem and blocks 1-3 of this ResNet are used (and built).
      self.backbone = resnet.imagenet_resnet(
          units=c.units, model_type=c.model_type, num_classes=1,
          base_channels=c.base_channels, halting_bias_init=c.halting_bias_init,
          eps=c.eps, weight_decay=loss_config.weight_decay, sparse=c.sparse,
          dense_fraction=c.dense_fraction)
      depth, bottleneck, _ = architectures.imagenet_block(3, c.base_channels)
      self.box_block = blocks_lib.ResNetBlock(
          [units_lib.BottleneckUnit(depth, bottleneck, 1,
                                    weight_decay=loss_config.weight_decay,
                                    name=f'unit_{u + 1}')
           for u in range(c.units[3])], name='block4')
      self.postnorm = common.batch_norm('postnorm', 0.997, 1e-5)
      if c.freeze_batch_norm:
        for layer in (_batch_norm_layers(self.backbone)
                      + _batch_norm_layers(self.box_block) + [self.postnorm]):
          layer.trainable = False
      # The RPN's own normalisation of the block-3 output always learns: it is
      # new, and its statistics over one image's positions are well defined.
      self.rpn_norm = keras.layers.BatchNormalization(
          momentum=0.99, epsilon=1e-5, name='rpn_norm')
      small = lambda: keras.initializers.TruncatedNormal(stddev=0.01)
      self.rpn_conv = keras.layers.Conv2D(
          c.rpn_depth, 3, padding='same', activation='relu',
          kernel_initializer=small(), name='rpn_conv')
      self.rpn_objectness = keras.layers.Conv2D(
          c.num_anchors, 1, kernel_initializer=small(), name='rpn_objectness')
      self.rpn_box = keras.layers.Conv2D(
          4 * c.num_anchors, 1, kernel_initializer=small(), name='rpn_box')
      self.class_logits = keras.layers.Dense(c.num_classes + 1,
                                             name='class_logits')
      self.box_codes = keras.layers.Dense(4 * c.num_classes, name='box_codes')

  @property
  def feature_blocks(self):
    """The feature extractor's blocks (ResNet blocks 1-3)."""
    return self.backbone.blocks[:FEATURE_BLOCKS]

  @property
  def adaptive(self):
    return self.config.model_type != 'resnet'

  def build(self, input_shape=None):
    shape = (None, None, None, 3)
    self.backbone.stem_conv.build(shape)
    shape = (None, None, None, architectures.IMAGENET_STEM_CHANNELS)
    for block in self.feature_blocks:
      block.build(shape)
      shape = tuple(block.compute_output_shape(shape))
    self.rpn_norm.build(shape)
    self.rpn_conv.build(shape)
    rpn_shape = (None, None, None, self.config.rpn_depth)
    self.rpn_objectness.build(rpn_shape)
    self.rpn_box.build(rpn_shape)
    self.box_block.build(shape)
    shape = tuple(self.box_block.compute_output_shape(shape))
    self.postnorm.build(shape)
    self.class_logits.build((None, shape[-1]))
    self.box_codes.build((None, shape[-1]))
    self.built = True

  # The stages.

  def extract_features(self, images, training=False):
    """Stem and blocks 1-3.

    Args:
      images: float `[B, H, W, 3]` in [-1, 1].
      training: the Keras training flag.

    Returns:
      (features `[B, ceil(H / 16), ceil(W / 16), C]`, the raw block-3
      output; a dict with `flops` int64 `[B]` (the feature extractor's),
      `ponder_cost` `[B]` summed over the blocks (ACT/SACT), and per block
      `blockK/ponder_map` `[B, h, w]`, `blockK/ponder_cost`,
      `blockK/num_units`, `blockK/flops`).
    """
    images = tf.convert_to_tensor(images)
    _check_images(images)
    x, outputs = self.backbone.features(images, training=training,
                                        num_blocks=FEATURE_BLOCKS)
    # The halting distributions stay inside: nothing downstream uses them.
    return x, {k: v for k, v in outputs.items()
               if k.rsplit('/', 1)[-1] in _OUTPUT_KEYS}

  def rpn(self, features, training=False):
    """(objectness logits `[B, N]`, box codes `[B, N, 4]`), N = h * w * A
    in `anchors_lib.grid_anchors` order."""
    x = tf.nn.relu(self.rpn_norm(features, training=training))
    x = self.rpn_conv(x)
    batch = tf.shape(features)[0]
    return (tf.reshape(_float(self.rpn_objectness(x)), [batch, -1]),
            tf.reshape(_float(self.rpn_box(x)), [batch, -1, 4]))

  def anchors(self, features, image_height, image_width):
    """(anchors `[N, 4]` clipped to the image, in pixels; valid bool `[N]`)."""
    shape = tf.shape(features)
    c = self.config
    anchors = anchors_lib.grid_anchors(
        shape[1], shape[2], FEATURE_STRIDE, c.anchor_base_size,
        c.anchor_scales, c.anchor_aspect_ratios)
    anchors = box_ops.clip(anchors, image_height, image_width)
    return anchors, box_ops.is_valid(anchors)

  def proposals(self, objectness, codes, anchors, anchor_valid, image_height,
                image_width):
    """One image's proposals (no gradient flows through them).

    Args:
      objectness: `[N]` logits; codes: `[N, 4]`; anchors, anchor_valid: as
        `anchors` returns.
      image_height, image_width: the image's size.

    Returns:
      (boxes `[P, 4]` in pixels, scores `[P]`, count int32): the
      `num_proposals` best boxes after NMS, zero-padded.
    """
    boxes = box_ops.clip(
        box_coder.decode(tf.stop_gradient(codes), anchors), image_height,
        image_width)
    keep = tf.logical_and(anchor_valid, box_ops.is_valid(boxes))
    scores = tf.sigmoid(tf.stop_gradient(objectness))
    c = self.config
    return nms.single_class_nms(
        tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep),
        c.num_proposals, c.rpn_nms_iou, pre_nms_top_k=c.pre_nms_top_k)

  def classify_boxes(self, features, boxes, box_indices, training=False):
    """Box classifier on pixel boxes `[K, 4]` of images `box_indices`.

    Returns:
      (class logits `[K, num_classes + 1]`, column 0 background; box codes
      `[K, num_classes, 4]`).
    """
    # crop_and_resize takes float32 features (the box block casts back).
    crops = roi.crop_features(_float(features), tf.stop_gradient(boxes),
                              box_indices, FEATURE_STRIDE,
                              self.config.crop_size)
    x = self.box_block(crops, training=training)['output']
    x = tf.nn.relu(self.postnorm(x, training=training))
    x = tf.reduce_mean(x, axis=[1, 2])
    codes = tf.reshape(_float(self.box_codes(x)),
                       [-1, self.config.num_classes, 4])
    return _float(self.class_logits(x)), codes

  # Inference.

  def call(self, images, training=False):
    """Detections for float images `[B, H, W, 3]` in [-1, 1].

    Returns:
      A dict:
        detection_boxes: `[B, D, 4]` normalised `[ymin, xmin, ymax, xmax]`,
          D = max_detections, zero-padded after num_detections.
        detection_scores: `[B, D]`.
        detection_classes: int32 `[B, D]`, 0-based (background excluded).
        num_detections: int32 `[B]`.
        proposal_boxes: `[B, P, 4]` normalised; num_proposals: int32 `[B]`.
        and the feature extractor's outputs (see `extract_features`).
    """
    features, outputs = self.extract_features(images, training=training)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    objectness, codes = self.rpn(features, training=training)
    anchors, anchor_valid = self.anchors(features, height, width)
    c = self.config
    proposals, _, counts = tf.map_fn(
        lambda args: self.proposals(args[0], args[1], anchors, anchor_valid,
                                    height, width),
        (objectness, codes),
        fn_output_signature=(tf.TensorSpec([c.num_proposals, 4], tf.float32),
                             tf.TensorSpec([c.num_proposals], tf.float32),
                             tf.TensorSpec([], tf.int32)))
    batch = shape[0]
    flat = tf.reshape(proposals, [-1, 4])
    image_of = tf.repeat(tf.range(batch), c.num_proposals)
    logits, box_codes = self.classify_boxes(features, flat, image_of,
                                            training=training)
    boxes = box_ops.clip(box_coder.decode(box_codes, flat[:, tf.newaxis]),
                         height, width)
    boxes = box_ops.scale(boxes, 1.0 / tf.cast(height, tf.float32),
                          1.0 / tf.cast(width, tf.float32))
    scores = tf.nn.softmax(logits)[:, 1:]
    # Padding proposals must never become detections: score 0 is dropped.
    real = tf.reshape(tf.range(c.num_proposals)[tf.newaxis]
                      < counts[:, tf.newaxis], [-1, 1])
    scores = tf.where(real, scores, 0.0)
    detections = nms.multiclass_nms(
        tf.reshape(boxes, [batch, c.num_proposals, c.num_classes, 4]),
        tf.reshape(scores, [batch, c.num_proposals, c.num_classes]),
        c.nms_iou, c.max_detections_per_class, c.max_detections,
        score_threshold=c.score_threshold)
    outputs.update(
        detection_boxes=detections[0], detection_scores=detections[1],
        detection_classes=detections[2], num_detections=detections[3],
        proposal_boxes=box_ops.scale(
            proposals, 1.0 / tf.cast(height, tf.float32),
            1.0 / tf.cast(width, tf.float32)),
        num_proposals=counts)
    return outputs

  # Training.

  def losses_and_metrics(self, images, gt_boxes, gt_classes, seed,
                         training=True):
    """The training losses of one image.

    Args:
      images: float `[1, H, W, 3]` in [-1, 1].
      gt_boxes: `[M, 4]` normalised ground-truth boxes, M >= 0.
      gt_classes: int `[M]` 0-based classes.
      seed: int32 `[2]` stateless seed of the two stages' sampling.
      training: the Keras training flag.

    Returns:
      A dict of float32 scalars: `loss` (what to minimise), its terms
      `rpn_objectness`, `rpn_localization`, `box_classification`,
      `box_localization` (unweighted), `ponder_loss` (tau * ponder cost),
      `regularization`; and `ponder_cost`, `flops` (feature extractor),
      `num_proposals`, `positive_anchors`, `foreground_proposals`.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 4 and images.shape[0] not in (None, 1):
      raise ValueError(f'Training takes one image at a time (batch 1, as in '
                       f'the paper: images have different sizes), got a '
                       f'batch of {images.shape[0]}.')
    seed = tf.convert_to_tensor(seed, tf.int32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    gt_boxes = box_ops.scale(
        tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4]), height, width)
    gt_classes = tf.reshape(tf.cast(gt_classes, tf.int32), [-1])
    c = self.config

    features, outputs = self.extract_features(images, training=training)
    objectness, codes = self.rpn(features, training=training)
    objectness, codes = objectness[0], codes[0]
    anchors, anchor_valid = self.anchors(features, height, width)
    rpn_targets = targets_lib.rpn_targets(
        anchors, anchor_valid, gt_boxes, seed, c.rpn_sample_size,
        c.rpn_positive_fraction, c.rpn_positive_iou, c.rpn_negative_iou)
    rpn = losses.rpn_losses(objectness, codes, rpn_targets)

    proposals, _, count = self.proposals(objectness, codes, anchors,
                                         anchor_valid, height, width)
    sample = targets_lib.classifier_targets(
        proposals, count, gt_boxes, gt_classes, seed + [1, 0],
        c.classifier_sample_size, c.classifier_positive_fraction,
        c.classifier_positive_iou, c.add_ground_truth_proposals)

    def classifier():
      logits, box_codes = self.classify_boxes(
          features, sample.boxes, tf.zeros_like(sample.classes),
          training=training)
      return tuple(losses.classifier_losses(logits, box_codes, sample))

    # A conv on an empty batch misbehaves under oneDNN: skip the box
    # classifier when nothing was sampled (no valid proposal at all).
    box_classification, box_localization = tf.cond(
        tf.size(sample.classes) > 0, classifier,
        lambda: (tf.constant(0.0), tf.constant(0.0)))

    ponder_cost = losses_lib.ponder_cost_mean(outputs)
    ponder_loss = losses_lib.ponder_loss(outputs, self.loss_config.tau)
    regularization = (tf.add_n(self.losses) if self.losses
                      else tf.constant(0.0))
    loss = (losses.RPN_OBJECTNESS_WEIGHT * rpn.classification
            + losses.RPN_LOCALIZATION_WEIGHT * rpn.localization
            + losses.CLASSIFIER_CLASSIFICATION_WEIGHT * box_classification
            + losses.CLASSIFIER_LOCALIZATION_WEIGHT * box_localization
            + ponder_loss + regularization)
    return {
        'loss': loss,
        'rpn_objectness': rpn.classification,
        'rpn_localization': rpn.localization,
        'box_classification': box_classification,
        'box_localization': box_localization,
        'ponder_loss': ponder_loss,
        'regularization': regularization,
        'ponder_cost': ponder_cost,
        'flops': tf.reduce_mean(tf.cast(outputs['flops'], tf.float32)),
        'num_proposals': tf.cast(count, tf.float32),
        'positive_anchors': tf.reduce_sum(rpn_targets.box_weights),
        'foreground_proposals': tf.reduce_sum(sample.box_weights),
    }

  def get_config(self):
    # The base config holds the name, `trainable` and the dtype policy.
    return keras.layers.Layer.get_config(self) | {
        'config': self.config.to_dict(),
        'loss_config': self.loss_config.to_dict()}


def _float(x):
  """`x` as float32 (the detector's outputs under a mixed policy)."""
  return tf.cast(x, tf.float32)


def _check_images(images):
  if images.shape.rank != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must have shape [batch, height, width, 3], got '
                     f'{images.shape}.')
  if not images.dtype.is_floating:
    raise ValueError(f'images must be float in [-1, 1], got dtype '
                     f'{images.dtype.name}: convert with tf.cast(images, '
                     'tf.float32) / 127.5 - 1.')
