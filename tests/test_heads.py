import numpy as np
import pytest
import tensorflow as tf

from sact_tf.layers import heads


def sact_head_reference(head, x, training):
  """Paper eq. (14) from plain TF ops: sigmoid(conv3x3(a(BN(x))) +
  W a(BN(pool(x))) + b), batch norm with the batch's moments in training,
  a the identity or the CIFAR heads' leaky ReLU."""
  def bn(values, layer, axes):
    if training:
      mean, variance = tf.nn.moments(values, axes)
    else:
      mean, variance = layer.moving_mean, layer.moving_variance
    normalised = tf.nn.batch_normalization(values, mean, variance, layer.beta,
                                           layer.gamma, layer.epsilon)
    if head.leakiness is None:
      return normalised
    return tf.nn.leaky_relu(normalised, head.leakiness)

  local = tf.nn.conv2d(bn(x, head.local_bn, [0, 1, 2]),
                       head.local_conv.kernel, 1, 'SAME')
  pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
  global_logit = tf.nn.conv2d(bn(pooled, head.global_bn, [0, 1, 2]),
                              head.global_conv.kernel, 1, 'SAME')
  return tf.sigmoid(local + head.local_conv.bias + global_logit)[..., 0]


def randomised_head(channels, seed, leakiness):
  rng = np.random.default_rng(seed)
  head = heads.SACTHaltingHead(halting_bias_init=0.2, leakiness=leakiness)
  head.build((None, None, None, channels))
  for variable in head.trainable_variables + head.non_trainable_variables:
    shape = variable.shape
    if 'variance' in variable.path or 'gamma' in variable.path:
      variable.assign(rng.uniform(0.5, 2.0, shape))
    else:
      variable.assign(rng.normal(0, 0.5, shape))
  return head


@pytest.mark.parametrize('context', ['eager', 'function', 'loop'])
@pytest.mark.parametrize('leakiness', [None, 0.1])
@pytest.mark.parametrize('training', [True, False])
def test_sact_head_matches_eq_14_with_its_gradients(training, leakiness,
                                                    context):
  x = tf.constant(np.random.default_rng(0).normal(1.0, 2.0, (2, 5, 7, 6)),
                  tf.float32)
  head = randomised_head(6, seed=1, leakiness=leakiness)
  variables = head.trainable_variables
  loss_weights = tf.constant(
      np.random.default_rng(2).normal(size=(2, 5, 7)), tf.float32)

  def scores_and_gradients(fn):
    with tf.GradientTape() as tape:
      tape.watch(x)
      scores = fn()
      loss = tf.reduce_sum(scores * loss_weights)
    return scores, tape.gradient(loss, [x] + variables)

  if context == 'function':
    scores_and_gradients = tf.function(scores_and_gradients)
  if context == 'loop':
    # Inside control flow (as in the blocks' loop) the head's training
    # gradient is the written-out one.
    def in_loop(fn):
      return tf.while_loop(lambda i, s: i < 1, lambda i, s: (i + 1, fn()),
                           (0, tf.zeros([2, 5, 7])))[1]
    gradients_of = scores_and_gradients
    scores_and_gradients = tf.function(
        lambda fn: gradients_of(lambda: in_loop(fn)))

  expected, expected_grads = scores_and_gradients(
      lambda: sact_head_reference(head, x, training))
  bn = head.local_bn
  old_mean, old_variance = bn.moving_mean.numpy(), bn.moving_variance.numpy()
  got, got_grads = scores_and_gradients(lambda: head(x, training=training))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  for got_grad, expected_grad in zip(got_grads, expected_grads):
    np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-5)

  # Training updates the moving statistics as a Keras batch norm does.
  if training:
    momentum = bn.momentum
    np.testing.assert_allclose(
        bn.moving_mean.numpy(),
        old_mean * momentum + x.numpy().mean(axis=(0, 1, 2)) * (1 - momentum),
        rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(),
        old_variance * momentum
        + x.numpy().var(axis=(0, 1, 2)) * (1 - momentum), rtol=1e-5)
  else:
    np.testing.assert_array_equal(bn.moving_mean.numpy(), old_mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), old_variance)
