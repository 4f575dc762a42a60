"""Thin absl-flag binaries that reproduce the paper's experiments.

Importing the package starts quietly (`experiments.startup`): TensorFlow's
C++ start-up messages are hidden unless --tf_logs is on the command line.
"""

from experiments import startup as _startup

_startup.configure()
_startup.define_flags()
