"""The anchor grid: sizes, centres and the order the RPN's outputs use."""

import math

import numpy as np
import pytest

from sact_tf.detection import anchors


def test_paper_anchor_sizes():
  sizes = anchors.anchor_sizes()
  assert sizes.shape == (12, 2)
  # Scale s keeps the area (256 s)^2 whatever the aspect ratio.
  areas = sizes[:, 0] * sizes[:, 1]
  expected = np.repeat([(256 * s)**2 for s in (0.25, 0.5, 1.0, 2.0)], 3)
  np.testing.assert_allclose(areas, expected, rtol=1e-5)
  # Scales major, ratios (width / height) minor.
  np.testing.assert_allclose(sizes[:3, 1] / sizes[:3, 0], [0.5, 1.0, 2.0],
                             rtol=1e-5)


def test_grid_centres_and_order():
  grid = anchors.grid_anchors(2, 3, stride=16, base_size=256,
                              scales=(0.5,), aspect_ratios=(0.5, 2.0))
  grid = grid.numpy()
  assert grid.shape == (2 * 3 * 2, 4)
  tall_h, tall_w = 128 / math.sqrt(0.5), 128 * math.sqrt(0.5)
  # Row (i * W + j) * A + k is anchor k at position (i, j), centred on
  # pixel (16 i, 16 j).
  row = (1 * 3 + 2) * 2 + 0
  np.testing.assert_allclose(
      grid[row], [16 - tall_h / 2, 32 - tall_w / 2, 16 + tall_h / 2,
                  32 + tall_w / 2], rtol=1e-5)
  np.testing.assert_allclose(grid[1], [-tall_w / 2, -tall_h / 2, tall_w / 2,
                                       tall_h / 2], rtol=1e-5)


@pytest.mark.parametrize('base, scales, ratios', [
    (0, (1.0,), (1.0,)), (16, (), (1.0,)), (16, (1.0,), (-1.0,))])
def test_bad_anchor_settings_are_refused(base, scales, ratios):
  with pytest.raises(ValueError, match='anchor|Anchor'):
    anchors.anchor_sizes(base, scales, ratios)
