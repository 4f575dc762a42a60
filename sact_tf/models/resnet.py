"""Pre-activation ResNets for ImageNet and CIFAR, plain, ACT or SACT.

Calling a model on float images `[B, H, W, 3]` (any H and W) returns a dict:
  logits: `[B, num_classes]`.
  flops: int64 `[B]`, FLOPs of the whole network for each image.
  ponder_cost: `[B]`, the block ponder costs summed (ACT/SACT only).
  blockK/ponder_cost, blockK/ponder_map, blockK/num_units,
  blockK/halting_distribution, blockK/flops: the block's outputs (see
  `sact_tf.layers.blocks`); a plain ResNet gives num_units and flops.

Dtypes under a mixed-precision policy (`mixed_bfloat16`, `mixed_float16`:
the global Keras policy when the model is built, or `dtype=`): the
convolutions and states compute in bfloat16 / float16 with float32
variables; the halting heads compute in float32; logits, ponder costs and
maps and halting distributions are float32, num_units int32 and FLOPs int64
under every policy. `features()`' state is in the compute dtype.
"""

import contextlib

import keras
import tensorflow as tf

from sact_tf import architectures
from sact_tf import flops as flops_lib
from sact_tf import halting
from sact_tf import losses
from sact_tf import sparse as sparse_lib
from sact_tf.layers import blocks as blocks_lib
from sact_tf.layers import common
from sact_tf.layers import heads as heads_lib
from sact_tf.layers import units as units_lib

_BLOCK_KEYS = ('ponder_cost', 'ponder_map', 'num_units',
               'halting_distribution', 'flops')
_EMPTY_IMAGES = ('images must have height and width >= 1 and at least one '
                 'image; got shape')


@contextlib.contextmanager
def model_policy(policy):
  """Layers created within take `policy` (Keras layers take the global
  policy when created, not their model's)."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _make_block(model, units, make_head, name):
  if model.model_type == 'resnet':
    return blocks_lib.ResNetBlock(units, name=name)
  halting_heads = [make_head(f'unit_{i + 1}_halting')
                   for i in range(len(units) - 1)]
  # The blocks take the execution settings from the model (`features`).
  if model.model_type == 'act':
    return blocks_lib.ACTBlock(units, halting_heads, eps=model.eps,
                               name=name)
  return blocks_lib.SACTBlock(units, halting_heads, eps=model.eps, name=name)


@keras.saving.register_keras_serializable('sact_tf')
class ResNet(keras.Model):
  """A pre-activation ResNet whose blocks are plain, ACT or SACT.

  Use `imagenet_resnet` or `cifar_resnet` to build one. Training with `fit`
  adds the ponder loss tau * sum over blocks of the batch-mean ponder cost to
  the compiled loss, which is applied to `logits`; Keras L2 regularisation is
  on every conv kernel (`weight_decay`).

  Integer arguments must be positive ints (Python or NumPy ints; not floats
  or bools), float ones finite numbers; anything else raises ValueError
  naming the argument. Images must have at least one image of at least one
  pixel (checked from the static shape, or in the graph where it is not
  known).

  Args:
    family: 'imagenet' (bottleneck units, 64-channel stem) or 'cifar'.
    units: units per block (4 ints for ImageNet, 3 for CIFAR).
    model_type: 'resnet', 'act' or 'sact'.
    num_classes: classifier outputs.
    base_channels: ImageNet: bottleneck width of block 1 (64 for the real
      models); CIFAR: width of block 1 (16).
    halting_bias_init: initial halting bias (-3).
    eps: halting threshold 1 - eps, in (0, 1).
    tau: ponder cost weight in the training loss, >= 0.
    weight_decay: Keras L2 factor on conv kernels, >= 0.
    sparse: at inference, ACT blocks run their units on the active images
      only and SACT blocks at the active positions only (see
      `sact_tf.layers.blocks`); False computes densely and masks. Same
      outputs up to float rounding, same ponder costs and FLOPs.
    dense_fraction: SACT only: active fraction of a batch's positions from
      which units compute densely and mask instead of gathering, in (0, 1]
      (`sact_tf.sparse.DEFAULT_DENSE_FRACTION` was measured as the
      break-even on a CPU).
    The model holds its execution settings (`sparse`, `dense_fraction`)
    once; its blocks, units and heads read them when called. A call within
    `sact_tf.sparse.execution(...)` overrides them for that call.
  """

  def __init__(self, family, units, model_type='sact', num_classes=1001,
               base_channels=64, halting_bias_init=-3.0, eps=0.01, tau=0.0,
               weight_decay=0.0, sparse=True,
               dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION, **kwargs):
    kwargs.setdefault('name', 'resnet_v2' if family == 'imagenet'
                      else 'resnet_residual')
    super().__init__(**kwargs)
    if family not in ('imagenet', 'cifar'):
      raise ValueError(f"Unknown family {family!r}: allowed values are "
                       "'imagenet' and 'cifar'.")
    self.family = family
    self.model_type = architectures.validate_model_type(model_type)
    self.units_per_block = (architectures.imagenet_units(units=units)
                            if family == 'imagenet' else
                            architectures.cifar_units(units))
    self.num_classes = architectures.positive_int('num_classes', num_classes)
    self.base_channels = architectures.positive_int('base_channels',
                                                    base_channels)
    self.halting_bias_init = architectures.finite_float(
        'halting_bias_init', halting_bias_init, ' (the initial halting logit)')
    self.eps = halting.validate_eps(eps)
    self.tau = losses.validate_tau(tau)
    self.weight_decay = architectures.validate_weight_decay(weight_decay)
    self.sparse = sparse_lib.validate_sparse(sparse)
    self.dense_fraction = sparse_lib.validate_dense_fraction(dense_fraction)
    # The layers take the model's dtype policy (`dtype=`, default the global
    # one).
    with model_policy(self.dtype_policy):
      if family == 'imagenet':
        self._build_imagenet()
      else:
        self._build_cifar()

  def _build_imagenet(self):
    wd = self.weight_decay
    bn = dict(bn_momentum=0.997, bn_epsilon=1e-5)
    self.stem_conv = common.conv(architectures.IMAGENET_STEM_CHANNELS, 7,
                                 'conv1', strides=2, padding='valid',
                                 weight_decay=wd)
    make_head = lambda name: (
        heads_lib.SACTHaltingHead if self.model_type == 'sact' else
        heads_lib.ACTHaltingHead)(halting_bias_init=self.halting_bias_init,
                                  weight_decay=wd, name=name, **bn)
    self.blocks = []
    for b, num_units in enumerate(self.units_per_block):
      depth, bottleneck, stride = architectures.imagenet_block(
          b, self.base_channels)
      units = [units_lib.BottleneckUnit(
          depth, bottleneck, stride if u == 0 else 1, weight_decay=wd,
          name=f'unit_{u + 1}', **bn) for u in range(num_units)]
      self.blocks.append(_make_block(self, units, make_head, f'block{b + 1}'))
    self.postnorm = common.batch_norm('postnorm', 0.997, 1e-5)
    self.logits_conv = common.conv(self.num_classes, 1, 'logits',
                                   weight_decay=wd)

  def _build_cifar(self):
    wd = self.weight_decay
    bn = dict(bn_momentum=0.9, bn_epsilon=1e-3)
    self.stem_conv = common.conv(self.base_channels, 3, 'conv', weight_decay=wd)
    make_head = lambda name: (
        heads_lib.SACTHaltingHead if self.model_type == 'sact' else
        heads_lib.ACTHaltingHead)(halting_bias_init=self.halting_bias_init,
                                  leakiness=0.1, weight_decay=wd, name=name,
                                  **bn)
    self.blocks = []
    for b, num_units in enumerate(self.units_per_block):
      depth, stride = architectures.cifar_block(b, self.base_channels)
      units = [units_lib.CifarUnit(
          depth, stride if u == 0 else 1,
          activate_before_residual=(b == 0 and u == 0), weight_decay=wd,
          name=f'unit_{u + 1}', **bn) for u in range(num_units)]
      self.blocks.append(_make_block(self, units, make_head, f'block_{b + 1}'))
    self.postnorm = common.batch_norm('postnorm', 0.9, 1e-3)
    self.logits_conv = common.conv(self.num_classes, 1, 'logits',
                                   weight_decay=wd)

  @property
  def block_names(self):
    """Output key prefixes of the blocks: 'block1'... ('block_1'... CIFAR)."""
    return [block.name for block in self.blocks]

  def _validate_images(self, images):
    """Raises ValueError unless `images` are float `[B, H, W, 3]` with B, H
    and W >= 1 as far as its static shape tells; returns `images`, behind an
    in-graph assertion on the dimensions that are not known statically
    (none when they all are, e.g. eagerly)."""
    if images.shape.rank != 4:
      raise ValueError(f'images must have shape [batch, height, width, 3] '
                       f'(rank 4), got shape {images.shape}.')
    if images.shape[-1] != 3:
      raise ValueError(f'images must have 3 channels (RGB) in the last '
                       f'dimension, got shape {images.shape}.')
    if not images.dtype.is_floating:
      raise ValueError(
          f'images must be float (e.g. scaled to [-1, 1]), got dtype '
          f'{images.dtype.name}; convert with tf.cast(images, tf.float32) and '
          'rescale first.')
    # Without this, an empty batch or image fails inside a convolution with
    # a message about unrelated shapes.
    sizes = images.shape[:3]
    if 0 in sizes:
      raise ValueError(f'{_EMPTY_IMAGES} {images.shape}.')
    if None in sizes:
      shape = tf.shape(images)
      check = tf.debugging.Assert(tf.reduce_all(shape[:3] > 0),
                                  [_EMPTY_IMAGES, shape], summarize=4)
      with tf.control_dependencies([check]):
        images = tf.identity(images)
    return images

  def _stem(self, images):
    if self.family == 'imagenet':
      x = self.stem_conv(common.fixed_padding(images, 7))
      flops = flops_lib.conv_flops(
          tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.int64), 7, 3,
          architectures.IMAGENET_STEM_CHANNELS)
      return tf.nn.max_pool2d(x, 3, 2, 'SAME'), flops
    x = self.stem_conv(images)
    flops = flops_lib.conv_flops(
        tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.int64), 3, 3,
        self.base_channels)
    return x, flops

  def _head(self, x, training):
    if self.family == 'imagenet':
      x = tf.nn.relu(self.postnorm(x, training=training))
      x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    else:
      x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
      x = common.leaky_relu(self.postnorm(x, training=training), 0.1)
    flops = flops_lib.conv_flops(1, 1, int(x.shape[-1]), self.num_classes)
    # Logits in float32 under a mixed-precision policy too (the loss and
    # the softmax need its range).
    return tf.cast(self.logits_conv(x)[:, 0, 0, :], tf.float32), flops

  def features(self, images, training=None, num_blocks=None):
    """The stem and the first `num_blocks` blocks (default: all of them).

    `call` adds the classifier; `sact_tf.detection` takes blocks 1-3 as its
    feature extractor.

    Args:
      images: float `[B, H, W, 3]`.
      training: the Keras training flag.
      num_blocks: how many blocks to run (None: all).

    Returns:
      (x, outputs): the last block's output and a dict with `flops` int64
      `[B]` (the stem's and the blocks'), `ponder_cost` `[B]` summed over
      the blocks (ACT/SACT only) and each block's `blockK/...` outputs.
    """
    images = self._validate_images(tf.convert_to_tensor(images))
    x, flops = self._stem(images)
    outputs = {}
    ponder_cost = 0.0
    for block in self.blocks[:num_blocks]:
      with sparse_lib.execution(self.sparse, self.dense_fraction):
        block_out = block(x, training=training)
      x = block_out['output']
      flops += block_out['flops']
      for key in _BLOCK_KEYS:
        if key in block_out:
          outputs[f'{block.name}/{key}'] = block_out[key]
      if 'ponder_cost' in block_out:
        ponder_cost += block_out['ponder_cost']
    outputs['flops'] = flops
    if self.model_type != 'resnet':
      outputs['ponder_cost'] = ponder_cost
    return x, outputs

  def call(self, images, training=None):
    x, features = self.features(images, training=training)
    logits, head_flops = self._head(x, training)
    outputs = {k: v for k, v in features.items()
               if k not in ('flops', 'ponder_cost')}
    outputs['logits'] = logits
    outputs['flops'] = features['flops'] + head_flops
    if 'ponder_cost' in features:
      outputs['ponder_cost'] = features['ponder_cost']
    return outputs

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                   training=True):
    loss = super().compute_loss(x, y, y_pred['logits'], sample_weight,
                                training=training)
    if self.model_type != 'resnet' and self.tau:
      loss += losses.ponder_loss(y_pred, self.tau)
    return loss

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    return super().compute_metrics(x, y, y_pred['logits'], sample_weight)

  def get_config(self):
    # The base config holds the name, `trainable` and the dtype policy.
    return keras.layers.Layer.get_config(self) | {
        'family': self.family,
        'units': list(self.units_per_block),
        'model_type': self.model_type,
        'num_classes': self.num_classes,
        'base_channels': self.base_channels,
        'halting_bias_init': self.halting_bias_init,
        'eps': self.eps,
        'tau': self.tau,
        'weight_decay': self.weight_decay,
        'sparse': self.sparse,
        'dense_fraction': self.dense_fraction,
    }


def imagenet_resnet(depth=None, units=None, model_type='sact',
                    num_classes=1001, base_channels=64, halting_bias_init=-3.0,
                    eps=0.01, tau=0.0, weight_decay=5e-5, sparse=True,
                    dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION,
                    name='resnet_v2', dtype=None):
  """ImageNet pre-activation ResNet, laid out as the authors' models.

  Give `depth` (50, 101, 152, 200) or `units` (four ints); with neither, the
  ResNet-101 layout [3, 4, 23, 3]. Downsampling is in the first unit of
  blocks 2-4; the stem is a 7x7 stride-2 conv with 64 channels and a 3x3
  stride-2 max pool; 1001 classes (0 = background) as in the authors' models.
  Weight decay 5e-5 (Keras L2) is the paper's 1e-4 in slim terms. `dtype`:
  a Keras dtype policy (e.g. 'mixed_bfloat16'; default: the global one).
  """
  if depth is None and units is None:
    depth = 101
  units = architectures.imagenet_units(depth, units)
  return ResNet('imagenet', units, model_type=model_type,
                num_classes=num_classes, base_channels=base_channels,
                halting_bias_init=halting_bias_init, eps=eps, tau=tau,
                weight_decay=weight_decay, sparse=sparse,
                dense_fraction=dense_fraction, name=name, dtype=dtype)


def cifar_resnet(units=5, model_type='sact', num_classes=10, base_channels=16,
                 halting_bias_init=-3.0, eps=0.01, tau=0.0, weight_decay=1e-4,
                 sparse=True, dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION,
                 name='resnet_residual', dtype=None):
  """CIFAR pre-activation ResNet-(6n+2) as in the authors' CIFAR code.

  `units` is n (5: ResNet-32, 18: ResNet-110) or three ints. Weight decay
  1e-4 (Keras L2) is the authors' 2e-4 in slim terms. `dtype`: as for
  `imagenet_resnet`.
  """
  return ResNet('cifar', architectures.cifar_units(units),
                model_type=model_type, num_classes=num_classes,
                base_channels=base_channels,
                halting_bias_init=halting_bias_init, eps=eps, tau=tau,
                weight_decay=weight_decay, sparse=sparse,
                dense_fraction=dense_fraction, name=name, dtype=dtype)
