"""Ponder maps as saliency maps (paper section 4.3).

* `metrics`: AUC-Judd as the MIT saliency benchmark defines it, the centre
  baseline, the post-processing of a ponder map (`ponder_saliency`) and the
  protocol on ready-made maps (`evaluate_protocol`). NumPy and SciPy only.
* `datasets`: sparse fixation maps and the readers that turn CAT2000 and
  the clutter_digits stand-in into the protocol's two halves.
* `experiment`: a run directory's evaluation from start to end
  (`evaluate_run`) and its printed report (`format_table`).

Every public name of the three modules is importable from here.
"""

from sact_tf.saliency import datasets
from sact_tf.saliency import experiment
from sact_tf.saliency import metrics
from sact_tf.saliency.datasets import DIGIT_THRESHOLD
from sact_tf.saliency.datasets import digit_fixations
from sact_tf.saliency.datasets import read_cat2000
from sact_tf.saliency.datasets import read_clutter_digits
from sact_tf.saliency.datasets import SparseFixations
from sact_tf.saliency.datasets import split_halves
from sact_tf.saliency.experiment import DATASETS
from sact_tf.saliency.experiment import DEFAULT_CAT2000_SIZE
from sact_tf.saliency.experiment import DEFAULT_MAX_IMAGES
from sact_tf.saliency.experiment import evaluate_run
from sact_tf.saliency.experiment import format_table
from sact_tf.saliency.experiment import parse_image_size
from sact_tf.saliency.experiment import PonderMapper
from sact_tf.saliency.experiment import resize_image
from sact_tf.saliency.experiment import ROWS
from sact_tf.saliency.experiment import SALIENCY_MAP
from sact_tf.saliency.experiment import UnusableRunError
from sact_tf.saliency.metrics import auc_judd
from sact_tf.saliency.metrics import blur
from sact_tf.saliency.metrics import BLUR_GRID
from sact_tf.saliency.metrics import center_baseline
from sact_tf.saliency.metrics import CENTER_SIGMA_GRID
from sact_tf.saliency.metrics import CENTER_WEIGHT_GRID
from sact_tf.saliency.metrics import evaluate_protocol
from sact_tf.saliency.metrics import JITTER_SCALE
from sact_tf.saliency.metrics import MAP_RESOLUTION
from sact_tf.saliency.metrics import normalize
from sact_tf.saliency.metrics import ponder_saliency
from sact_tf.saliency.metrics import resize
from sact_tf.saliency.metrics import TUNE_RESOLUTION
from sact_tf.saliency.metrics import working_shape

__all__ = [
    'datasets', 'experiment', 'metrics',
    # metrics
    'JITTER_SCALE', 'MAP_RESOLUTION', 'TUNE_RESOLUTION', 'BLUR_GRID',
    'CENTER_SIGMA_GRID', 'CENTER_WEIGHT_GRID', 'auc_judd', 'blur',
    'center_baseline', 'evaluate_protocol', 'normalize', 'ponder_saliency',
    'resize', 'working_shape',
    # datasets
    'DIGIT_THRESHOLD', 'SparseFixations', 'digit_fixations', 'read_cat2000',
    'read_clutter_digits', 'split_halves',
    # experiment
    'DATASETS', 'DEFAULT_CAT2000_SIZE', 'DEFAULT_MAX_IMAGES', 'ROWS',
    'SALIENCY_MAP', 'PonderMapper', 'UnusableRunError', 'evaluate_run',
    'format_table', 'parse_image_size', 'resize_image',
]
