"""Input pipelines and dataset builders.

Importing this package registers the `clutter_digits` TFDS builder.
"""

from sact_tf.data import clutter_digits
