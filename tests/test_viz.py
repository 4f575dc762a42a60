import os

import numpy as np
import pytest
import tensorflow as tf

from sact_tf import viz


def test_colorize_uses_the_viridis_ends():
  rgb = viz.colorize(tf.constant([[0.0, 5.0, 10.0, 20.0]]), 0.0, 10.0).numpy()
  table = viz.colormap_table('viridis')
  np.testing.assert_allclose(rgb[0, 0], table[0])
  np.testing.assert_allclose(rgb[0, 2], table[-1])
  np.testing.assert_allclose(rgb[0, 3], table[-1])  # clipped
  with pytest.raises(ValueError, match='colour map'):
    viz.colormap_table('no-such-map')


def test_total_ponder_map_sums_nearest_upsampled_blocks():
  outputs = {
      'block1/ponder_map': tf.fill([1, 4, 4], 2.0),
      'block2/ponder_map': tf.constant([[[1.0, 3.0], [5.0, 7.0]]]),
      'logits': tf.zeros([1, 3]),
  }
  total = viz.total_ponder_map(outputs, (4, 4)).numpy()[0]
  np.testing.assert_array_equal(total[:2, :2], 3.0)
  np.testing.assert_array_equal(total[2:, 2:], 9.0)
  with pytest.raises(ValueError, match='no ponder maps'):
    viz.total_ponder_map({'logits': tf.zeros([1, 3])}, (4, 4))


def test_summary_image_layout():
  images = tf.fill([2, 8, 10, 3], -1.0)  # black
  image = viz.summary_image(images, tf.zeros([2, 2, 2]), 10.0, border=3)
  assert image.shape == (2, 8, 23, 3)
  np.testing.assert_array_equal(image[:, :, :10].numpy(), 0.0)
  np.testing.assert_array_equal(image[:, :, 10:13].numpy(), 1.0)
  np.testing.assert_allclose(image[0, 0, 13].numpy(),
                             viz.OVERLAY_ALPHA * viz.colormap_table()[0],
                             rtol=1e-6)
  assert viz.max_ponder_value([3, 4, 23, 3]) == 37.0


def test_pngs_are_written_whole(tmp_path):
  path = os.path.join(tmp_path, 'map.png')
  viz.write_png(path, np.zeros((5, 7, 3), np.float32))
  assert tf.io.decode_png(tf.io.read_file(path)).shape == (5, 7, 3)
  bar = os.path.join(tmp_path, 'bar.png')
  viz.colorbar_png(bar, 2.0, 9.0)
  decoded = tf.io.decode_png(tf.io.read_file(bar))
  assert decoded.shape[0] > decoded.shape[1] > 50
  assert sorted(os.listdir(tmp_path)) == ['bar.png', 'map.png']


def test_flops_accuracy_plot(tmp_path):
  path = os.path.join(tmp_path, 'fig7.png')
  viz.plot_flops_accuracy([
      dict(label='ResNet-101', flops=15.6e9, accuracy=0.760, group='resnet'),
      dict(label='tau=0.005', flops=11.1e9, accuracy=0.756, group='sact'),
      dict(label='tau=0.01', flops=9.0e9, accuracy=0.745, group='sact'),
  ], path)
  image = tf.io.decode_png(tf.io.read_file(path)).numpy()
  assert image.shape == (450, 600, 3) and image.std() > 0
  # A range (e.g. over seeds, inside the axis span) adds an error bar.
  viz.plot_flops_accuracy([
      dict(label='ResNet-101', flops=15.6e9, accuracy=0.760, group='resnet'),
      dict(label='tau=0.005', flops=11.1e9, accuracy=0.756, group='sact',
           accuracy_range=(0.748, 0.758)),
      dict(label='tau=0.01', flops=9.0e9, accuracy=0.745, group='sact'),
  ], path)
  with_bar = tf.io.decode_png(tf.io.read_file(path)).numpy()
  assert (with_bar.min(axis=-1) < 200).sum() > (image.min(axis=-1) < 200).sum()
  with pytest.raises(ValueError, match='empty'):
    viz.plot_flops_accuracy([], path)
