"""Input pipelines, preprocessing and dataset builders.

Importing this package registers the `clutter_digits` TFDS builder.
"""

from sact_tf.data import clutter_digits
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.data import preprocessing
from sact_tf.data.datasets import DatasetNotReadyError
from sact_tf.data.datasets import DatasetSpec
from sact_tf.data.datasets import get_spec
from sact_tf.data.datasets import prepare

__all__ = ['clutter_digits', 'datasets', 'pipelines', 'preprocessing',
           'DatasetNotReadyError', 'DatasetSpec', 'get_spec', 'prepare']
