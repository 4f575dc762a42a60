import numpy as np
import tensorflow as tf

from sact_tf.train import metrics


def _reference(ponder_map, bbox, upsample=60):
  """Upsamples the map nearest-neighbour and integrates over pixel centres."""
  ponder_map = np.asarray(ponder_map, np.float64)
  batch, height, width = ponder_map.shape
  size = height * width * upsample
  ys = (np.arange(size) + 0.5) / size
  xs = ys
  rows = np.minimum((ys * height).astype(int), height - 1)
  cols = np.minimum((xs * width).astype(int), width - 1)
  inside, total = [], []
  for b in range(batch):
    image = ponder_map[b][rows][:, cols]
    mask = ((ys[:, None] >= bbox[b][0]) & (ys[:, None] < bbox[b][2]) &
            (xs[None, :] >= bbox[b][1]) & (xs[None, :] < bbox[b][3]))
    inside.append((image * mask).mean())
    total.append(image.mean())
  return np.asarray(inside), np.asarray(total)


def test_mass_in_box_matches_an_upsampled_reference():
  rng = np.random.default_rng(0)
  ponder_map = rng.uniform(1, 4, size=(3, 3, 4)).astype(np.float32)
  bbox = np.asarray([[0.1, 0.2, 0.7, 0.55], [0.0, 0.0, 1.0, 1.0],
                     [0.5, 0.5, 0.75, 1.0]], np.float32)
  inside, total = metrics.ponder_mass_in_box(ponder_map, bbox)
  ref_inside, ref_total = _reference(ponder_map, bbox)
  np.testing.assert_allclose(inside.numpy(), ref_inside, atol=2e-3)
  np.testing.assert_allclose(total.numpy(), ref_total, atol=1e-5)


def test_ratio_is_one_for_uniform_maps_and_above_for_focused_ones():
  bbox = tf.constant([[0.25, 0.25, 0.75, 0.75]] * 2)
  uniform = tf.fill([2, 4, 4], 2.5)
  inside, total = metrics.ponder_mass_in_box(uniform, bbox)
  np.testing.assert_allclose(
      metrics.ponder_on_object(inside, total, bbox).numpy(), [1.0, 1.0],
      rtol=1e-6)
  focused = np.ones((2, 4, 4), np.float32)
  focused[:, 1:3, 1:3] = 3.0
  inside, total = metrics.ponder_mass_in_box(focused, bbox)
  # Box share 1/4; its mass share (4 * 3) / (4 * 3 + 12 * 1) = 1/2.
  np.testing.assert_allclose(
      metrics.ponder_on_object(inside, total, bbox).numpy(), [2.0, 2.0],
      rtol=1e-6)


def test_summing_blocks_weights_them_by_area():
  bbox = tf.constant([[0.0, 0.0, 0.5, 0.5]])
  coarse = tf.constant([[[4.0, 0.0], [0.0, 0.0]]])
  fine = tf.ones([1, 8, 8])
  in_c, tot_c = metrics.ponder_mass_in_box(coarse, bbox)
  in_f, tot_f = metrics.ponder_mass_in_box(fine, bbox)
  ratio = metrics.ponder_on_object(in_c + in_f, tot_c + tot_f, bbox)
  # Mass 1 + 0.25 inside of 1 + 1 in total, over a quarter of the image.
  np.testing.assert_allclose(ratio.numpy(), [(1.25 / 2.0) / 0.25], rtol=1e-6)


def test_empty_boxes_give_nan():
  bbox = tf.constant([[0.5, 0.5, 0.5, 0.9]])
  inside, total = metrics.ponder_mass_in_box(tf.ones([1, 2, 2]), bbox)
  assert np.isnan(metrics.ponder_on_object(inside, total, bbox).numpy()[0])
