"""The two stages' losses (TF Object Detection API weighting).

Each stage has a classification loss over its sampled examples and a
smooth-L1 box loss over the sampled positives, both divided by the number of
sampled examples (at least 1, so an image without objects or samples gives
finite, zero-gradient terms).
"""

import collections

import tensorflow as tf

# faster_rcnn_resnet101_coco: localization weight 2, classification weight 1
# in both stages.
RPN_LOCALIZATION_WEIGHT = 2.0
RPN_OBJECTNESS_WEIGHT = 1.0
CLASSIFIER_LOCALIZATION_WEIGHT = 2.0
CLASSIFIER_CLASSIFICATION_WEIGHT = 1.0

StageLosses = collections.namedtuple('StageLosses',
                                     ['classification', 'localization'])


def smooth_l1(predictions, targets, delta=1.0):
  """Huber loss summed over the last axis: `[..., 4]` -> `[...]`.

  0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), d = prediction -
  target.
  """
  diff = tf.abs(predictions - targets)
  quadratic = tf.minimum(diff, delta)
  return tf.reduce_sum(0.5 * quadratic**2 + delta * (diff - quadratic),
                       axis=-1)


def _normalizer(weights):
  return tf.maximum(tf.reduce_sum(weights), 1.0)


def rpn_losses(objectness_logits, box_codes, targets):
  """First-stage losses of one image.

  Args:
    objectness_logits: `[N]` logits of "object" per anchor.
    box_codes: `[N, 4]` predicted codes.
    targets: `sact_tf.detection.targets.RpnTargets`.

  Returns:
    `StageLosses(classification, localization)`, float32 scalars, each
    normalised by the number of sampled anchors.
  """
  normalizer = _normalizer(targets.label_weights)
  objectness = tf.nn.sigmoid_cross_entropy_with_logits(
      labels=targets.labels, logits=objectness_logits)
  localization = smooth_l1(box_codes, targets.box_targets)
  return StageLosses(
      tf.reduce_sum(objectness * targets.label_weights) / normalizer,
      tf.reduce_sum(localization * targets.box_weights) / normalizer)


def classifier_losses(class_logits, box_codes, targets):
  """Second-stage losses of one image's sampled proposals.

  Args:
    class_logits: `[S, C + 1]` logits, column 0 background.
    box_codes: `[S, C, 4]` predicted codes per class.
    targets: `sact_tf.detection.targets.ClassifierTargets`.

  Returns:
    `StageLosses(classification, localization)`, normalised by S. Only the
    code of each foreground proposal's own class enters the box loss.
  """
  count = tf.shape(targets.classes)[0]
  normalizer = tf.maximum(tf.cast(count, tf.float32), 1.0)
  classification = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=targets.classes, logits=class_logits)
  own = tf.gather(box_codes, tf.maximum(targets.classes - 1, 0), axis=1,
                  batch_dims=1)
  localization = smooth_l1(own, targets.box_targets)
  return StageLosses(
      tf.reduce_sum(classification) / normalizer,
      tf.reduce_sum(localization * targets.box_weights) / normalizer)
