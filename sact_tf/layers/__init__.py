"""Keras layers: residual units, halting heads and ACT / SACT blocks."""

from sact_tf.layers import protocols
from sact_tf.layers.blocks import ACTBlock, ResNetBlock, SACTBlock
from sact_tf.layers.heads import ACTHaltingHead, SACTHaltingHead
from sact_tf.layers.protocols import HaltingHead, ResidualUnit
from sact_tf.layers.units import BottleneckUnit, CifarUnit

__all__ = ['ACTBlock', 'ResNetBlock', 'SACTBlock', 'ACTHaltingHead',
           'SACTHaltingHead', 'BottleneckUnit', 'CifarUnit', 'HaltingHead',
           'ResidualUnit', 'protocols']
