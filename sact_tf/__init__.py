"""Spatially Adaptive Computation Time for residual networks (TF2 / Keras 3).

Figurnov et al., "Spatially Adaptive Computation Time for Residual Networks",
CVPR 2017.
"""

from sact_tf import flops, halting, layers, losses, models

__version__ = '0.1.0'

__all__ = ['flops', 'halting', 'layers', 'losses', 'models']
