"""Training and evaluation of ACT/SACT ResNets on TFDS datasets.

`ExperimentConfig` describes a run; `train` and `evaluate` carry it out and
write checkpoints, TensorBoard summaries and result JSON to its model
directory.
"""

from sact_tf.train import checkpointing
from sact_tf.train import config
from sact_tf.train import distribution
from sact_tf.train import evaluation
from sact_tf.train import metrics
from sact_tf.train.config import ExperimentConfig
from sact_tf.train.evaluation import baseline_units
from sact_tf.train.evaluation import evaluate
from sact_tf.train.evaluation import format_table
from sact_tf.train.loop import TrainingDivergedError
from sact_tf.train.loop import train

__all__ = ['checkpointing', 'config', 'distribution', 'evaluation', 'metrics',
           'ExperimentConfig', 'TrainingDivergedError', 'baseline_units',
           'evaluate', 'format_table', 'train']
