import numpy as np
import pytest
import tensorflow as tf

from sact_tf import halting
from tests import reference


def test_paper_worked_example():
  # Paper fig. 3: h = 0.1, 0.1, 0.2, then the cumulative sum passes 0.99 at
  # unit 4: R = 0.6, N = 4, rho = 4.6.
  h = tf.constant([[0.1, 0.1, 0.2, 0.7, 0.3]])
  ponder, num_units, dist = halting.halting_distribution(h, eps=0.01)
  assert int(num_units[0]) == 4
  np.testing.assert_allclose(ponder.numpy(), [4.6], rtol=1e-6)
  np.testing.assert_allclose(dist.numpy()[0], [0.1, 0.1, 0.2, 0.6, 0, 0],
                             atol=1e-7)


def test_halting_after_first_unit_thanks_to_eps():
  ponder, num_units, dist = halting.halting_distribution(
      tf.constant([[0.995, 0.0]]), eps=0.01)
  assert int(num_units[0]) == 1
  np.testing.assert_allclose(ponder.numpy(), [2.0])
  np.testing.assert_allclose(dist.numpy()[0], [1.0, 0.0, 0.0])


def test_never_halting_early_uses_all_units():
  ponder, num_units, dist = halting.halting_distribution(
      tf.zeros([1, 3]), eps=0.01)
  assert int(num_units[0]) == 4
  np.testing.assert_allclose(ponder.numpy(), [5.0])
  np.testing.assert_allclose(dist.numpy()[0], [0, 0, 0, 1.0])


@pytest.mark.parametrize('eps', [0.01, 0.3])
def test_matches_numpy_reference_any_leading_shape(eps):
  rng = np.random.default_rng(0)
  h = rng.uniform(0, 0.6, size=(3, 4, 5, 6)).astype(np.float32)
  ponder, num_units, dist = halting.halting_distribution(h, eps=eps)
  assert ponder.shape == (3, 4, 5) and dist.shape == (3, 4, 5, 7)
  assert num_units.dtype == tf.int32
  for index in np.ndindex(3, 4, 5):
    ref_ponder, ref_n, ref_p = reference.halting_distribution(h[index], eps)
    assert num_units.numpy()[index] == ref_n
    np.testing.assert_allclose(ponder.numpy()[index], ref_ponder, rtol=1e-5)
    np.testing.assert_allclose(dist.numpy()[index], ref_p, atol=1e-6)
  np.testing.assert_allclose(dist.numpy().sum(-1), 1.0, rtol=1e-5)


def test_gradient_is_minus_one_before_n_and_zero_after():
  h = tf.Variable([[0.1, 0.1, 0.2, 0.7, 0.3], [0.5, 0.6, 0.0, 0.0, 0.0]])
  with tf.GradientTape() as tape:
    ponder, num_units, _ = halting.halting_distribution(h)
    total = tf.reduce_sum(ponder)
  grad = tape.gradient(total, h).numpy()
  np.testing.assert_array_equal(num_units.numpy(), [4, 2])
  np.testing.assert_array_equal(grad[0], [-1, -1, -1, 0, 0])
  np.testing.assert_array_equal(grad[1], [-1, 0, 0, 0, 0])


@pytest.mark.parametrize('eps', [0.0, 1.0, -0.1, 2, 'x'])
def test_eps_outside_open_interval_is_rejected(eps):
  with pytest.raises(ValueError, match='eps'):
    halting.halting_distribution(tf.zeros([2, 3]), eps=eps)


def test_integer_input_is_rejected():
  with pytest.raises(ValueError, match='halting_proba'):
    halting.halting_distribution(tf.zeros([2, 3], tf.int32))
