"""Settings of the Faster R-CNN model and of a detection run.

`DetectionConfig` has the five sections of every run's config (see
`sact_tf.train.config`): `model` (`ModelConfig`: the network and both
stages; its defaults are the paper's, TF Object Detection API
faster_rcnn_resnet101_coco with a pre-activation ResNet-101), `loss` (tau,
weight decay), `optimizer`, `data` and `run`. It is saved as `config.json`
in the model directory so that evaluation and export rebuild the same
model, and so that a resumed run can check it is the same one.
"""

import dataclasses
from typing import List, Optional, Tuple

from sact_tf import architectures
from sact_tf import halting
from sact_tf import sparse as sparse_lib
from sact_tf.detection import anchors as anchors_lib
from sact_tf.train import config as train_config

CONFIG_FILENAME = train_config.CONFIG_FILENAME
MODES = ('train', 'eval', 'train_and_eval')


def _fraction(name, value, low_open=True):
  ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
  if not ok:
    raise ValueError(f'{name} must be in {"(0" if low_open else "[0"}, 1], '
                     f'got {value!r}.')


@dataclasses.dataclass
class ModelConfig(train_config.Section):
  """The detector (see `sact_tf.detection.model.FasterRCNN`).

  Attributes:
    units: units per ResNet block (4 ints); blocks 1-3 extract features,
      block 4 classifies boxes.
    model_type: feature extractor type, 'resnet', 'act' or 'sact'.
    num_classes: object classes, background excluded (COCO: 80).
    base_channels: bottleneck width of block 1 (64 for the real models).
    eps, halting_bias_init: halting settings.
    freeze_batch_norm: use the batch-norm statistics and scales as they are
      (ImageNet-trained ones when fine-tuning) instead of per-image batch
      statistics; the Object Detection API's setting for batch 1.
    sparse, dense_fraction: sparse execution of the ACT/SACT blocks at
      inference (see `sact_tf.models.ResNet`).
    anchor_base_size, anchor_scales, anchor_aspect_ratios: the anchor grid
      (stride 16: blocks 1-3's output stride).
    rpn_depth: channels of the RPN's 3x3 conv.
    rpn_sample_size, rpn_positive_fraction: the RPN loss' balanced sample.
    rpn_positive_iou, rpn_negative_iou: anchor matching thresholds.
    rpn_nms_iou: IoU threshold of the proposals' NMS.
    num_proposals: proposals kept per image.
    pre_nms_top_k: best-scoring anchors that enter the proposals' NMS.
    crop_size: side of the `crop_and_resize` crops (max-pooled 2x2 after).
    classifier_sample_size, classifier_positive_fraction: the box
      classifier's balanced sample of proposals in training.
    classifier_positive_iou: IoU from which a proposal is foreground.
    add_ground_truth_proposals: offer the ground-truth boxes to the box
      classifier as extra training proposals (not in the paper).
    nms_iou: IoU threshold of the per-class NMS of the detections.
    max_detections_per_class, max_detections: detections kept.
    score_threshold: detections scoring at most this are dropped.
  """

  units: List[int] = dataclasses.field(default_factory=lambda: [3, 4, 23, 3])
  model_type: str = 'sact'
  num_classes: int = 80
  base_channels: int = 64
  eps: float = 0.01
  halting_bias_init: float = -3.0
  freeze_batch_norm: bool = True
  sparse: bool = True
  dense_fraction: float = sparse_lib.DEFAULT_DENSE_FRACTION
  anchor_base_size: float = anchors_lib.BASE_SIZE
  anchor_scales: Tuple[float, ...] = anchors_lib.SCALES
  anchor_aspect_ratios: Tuple[float, ...] = anchors_lib.ASPECT_RATIOS
  rpn_depth: int = 512
  rpn_sample_size: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_positive_iou: float = 0.7
  rpn_negative_iou: float = 0.3
  rpn_nms_iou: float = 0.7
  num_proposals: int = 300
  pre_nms_top_k: int = 6000
  crop_size: int = 14
  classifier_sample_size: int = 64
  classifier_positive_fraction: float = 0.25
  classifier_positive_iou: float = 0.5
  add_ground_truth_proposals: bool = False
  nms_iou: float = 0.6
  max_detections_per_class: int = 100
  max_detections: int = 300
  score_threshold: float = 0.0

  def validate(self):
    """Raises ValueError naming the first bad field and how to fix it."""
    self.units = architectures.imagenet_units(units=self.units)
    architectures.validate_model_type(self.model_type)
    halting.validate_eps(self.eps)
    train_config.check_finite('halting_bias_init', self.halting_bias_init)
    sparse_lib.validate_dense_fraction(self.dense_fraction)
    self.anchor_scales = tuple(float(s) for s in self.anchor_scales)
    self.anchor_aspect_ratios = tuple(float(r)
                                      for r in self.anchor_aspect_ratios)
    anchors_lib.validate(self.anchor_base_size, self.anchor_scales,
                         self.anchor_aspect_ratios)
    for name in ('num_classes', 'base_channels', 'rpn_depth',
                 'rpn_sample_size', 'num_proposals', 'pre_nms_top_k',
                 'classifier_sample_size', 'max_detections_per_class',
                 'max_detections'):
      train_config.check_positive_int(name, getattr(self, name))
    if self.crop_size < 2 or self.crop_size % 2:
      raise ValueError(f'crop_size must be an even int >= 2 (the crops are '
                       f'max-pooled 2x2), got {self.crop_size!r}.')
    for name in ('rpn_positive_fraction', 'classifier_positive_fraction'):
      _fraction(name, getattr(self, name))
    for name in ('rpn_positive_iou', 'rpn_negative_iou', 'rpn_nms_iou',
                 'classifier_positive_iou', 'nms_iou'):
      _fraction(name, getattr(self, name), low_open=False)
    if self.rpn_negative_iou > self.rpn_positive_iou:
      raise ValueError(f'rpn_negative_iou ({self.rpn_negative_iou}) must not '
                       f'exceed rpn_positive_iou ({self.rpn_positive_iou}).')

  @property
  def num_anchors(self):
    """Anchors per feature position."""
    return len(self.anchor_scales) * len(self.anchor_aspect_ratios)



# Fields of ModelConfig that define the variables: a checkpoint only fits a
# model that agrees on them.
MODEL_FIELDS = ('units', 'model_type', 'num_classes', 'base_channels',
                'anchor_scales', 'anchor_aspect_ratios', 'rpn_depth')

# The detector's loss section: tau on the feature extractor's blocks only,
# weight decay 0 (the paper's detection configuration).
LossConfig = train_config.LossConfig


@dataclasses.dataclass
class OptimizerConfig(train_config.OptimizerConfig):
  """`sact_tf.train.config.OptimizerConfig` with the paper's detection
  schedule (batch 1) and gradient clipping.

  Attributes:
    clip_gradient_norm: global-norm gradient clipping (0: off).
  """

  train_steps: int = 1_500_000
  learning_rate: float = 3e-4
  lr_boundaries: List[int] = dataclasses.field(
      default_factory=lambda: [900_000, 1_200_000])
  clip_gradient_norm: float = 10.0

  def validate(self):
    super().validate()
    if self.clip_gradient_norm < 0:
      raise ValueError(f'clip_gradient_norm must be >= 0 (0: off), got '
                       f'{self.clip_gradient_norm}.')


@dataclasses.dataclass
class DataConfig(train_config.DataConfig):
  """`sact_tf.train.config.DataConfig` with the detector's image sizes.

  Attributes:
    dataset: 'coco/2017' or 'clutter_digits_detection'.
    min_size, max_size: images are resized keeping their aspect ratio so
      that the short side is min_size unless the long side would exceed
      max_size.
    flip: random horizontal flips in training.
  """

  dataset: str = 'coco/2017'
  min_size: int = 600
  max_size: int = 1024
  flip: bool = True

  def validate(self):
    super().validate()
    for name in ('min_size', 'max_size'):
      train_config.check_positive_int(name, getattr(self, name))
    if self.max_size < self.min_size:
      raise ValueError(f'max_size ({self.max_size}) must be >= min_size '
                       f'({self.min_size}).')


@dataclasses.dataclass
class RunConfig(train_config.RunConfig):
  """`sact_tf.train.config.RunConfig` with the detector's summaries and
  initialisation.

  Attributes:
    summary_images: evaluation images drawn to TensorBoard with their
      detections and ponder map.
    finetune_from: an experiments.imagenet checkpoint (directory or prefix)
      whose stem and blocks 1-4 initialise a new run, or None.
  """

  checkpoint_every: int = 5000
  summary_images: int = 4
  finetune_from: Optional[str] = None

  def validate(self):
    super().validate()
    train_config.check_non_negative('summary_images', self.summary_images)


@dataclasses.dataclass
class DetectionConfig(train_config.Config):
  """A detection run (see `experiments.coco` for the flags), in the five
  sections of `sact_tf.train.config`."""

  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  optimizer: OptimizerConfig = dataclasses.field(
      default_factory=OptimizerConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  run: RunConfig = dataclasses.field(default_factory=RunConfig)

  def build_model(self, image_size=None, **overrides):
    """The config's `FasterRCNN`, built (any image size: `image_size` is
    not used), in `run.precision` unless `overrides` has `dtype`."""
    del image_size
    from sact_tf.detection import training  # pylint: disable=g-import-not-at-top
    overrides = dict(dict(dtype=self.run.precision,
                          sync_batch_norm=self.run.sync_batch_norm),
                     **overrides)
    return training.build_model(self.model, self.loss, **overrides)


def save(config):
  """Writes `config` to `<model_dir>/config.json` atomically."""
  train_config.save(config)


def load(model_dir):
  """The `DetectionConfig` saved in `model_dir`, or None if there is none
  (an earlier layout is converted)."""
  return train_config.load(model_dir, DetectionConfig)


def check_same_model(config, saved, where):
  """Raises ValueError if `saved` has another network than `config`."""
  if saved is not None:
    train_config.check_same_fields(saved.model, config.model, MODEL_FIELDS,
                                   where, what='detector')
