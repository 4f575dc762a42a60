"""`tf.distribute` strategies by name, and who writes what in a cluster."""

import json
import os

import tensorflow as tf

STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')

_MIRRORED = {}  # {device names: the process's MirroredStrategy over them}


def _check(name):
  if name not in STRATEGIES:
    raise ValueError(f'Unknown strategy {name!r}: allowed values are '
                     f'{STRATEGIES}.')


def _tf_config():
  raw = os.environ.get('TF_CONFIG', '')
  if not raw:
    return {}
  try:
    return json.loads(raw)
  except json.JSONDecodeError as e:
    raise ValueError(f'TF_CONFIG is not valid JSON: {e}') from e


def _logical_cpus():
  """Logical CPU devices configured on the first CPU (0 if not split).

  Reading the configuration does not initialise the runtime.
  """
  cpus = tf.config.list_physical_devices('CPU')
  if not cpus:
    return 0
  return len(tf.config.get_logical_device_configuration(cpus[0]) or ())


def _local_devices():
  # Listing physical devices does not initialise the runtime, so this is safe
  # before a MultiWorkerMirroredStrategy is created.
  return max(1, len(tf.config.list_physical_devices('GPU')))


def mirrored_devices():
  """The devices 'mirrored' replicates over: every local GPU; without one,
  every logical CPU device when the CPU is split into several
  (`tf.config.set_logical_device_configuration`, e.g. to test several
  replicas on one machine); else None (TensorFlow's choice: the CPU)."""
  if tf.config.list_physical_devices('GPU'):
    return None
  if _logical_cpus() > 1:
    return [d.name for d in tf.config.list_logical_devices('CPU')]
  return None


def expected_replicas(name):
  """Replicas `name` will have here, without creating it; None if unknown.

  TPU replicas are only known once connected.
  """
  _check(name)
  if name == 'default':
    return 1
  if name == 'mirrored':
    if tf.config.list_physical_devices('GPU'):
      return _local_devices()
    return max(1, _logical_cpus())
  if name == 'multi_worker':
    cluster = _tf_config().get('cluster', {})
    workers = len(cluster.get('worker', [])) + len(cluster.get('chief', []))
    return max(1, workers) * _local_devices()
  return None


def make_strategy(name, tpu=None):
  """The strategy called `name` ('default', 'mirrored', 'multi_worker', 'tpu').

  'mirrored' replicates over `mirrored_devices()`: the local GPUs, or the
  logical CPU devices where there is no GPU.

  'multi_worker' reads the cluster from TF_CONFIG; 'tpu' connects to `tpu`
  (a name or grpc:// address; None or '' for the local TPU).
  """
  _check(name)
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    # One per process: the collective keys of a second MirroredStrategy
    # over the same devices collide with the first's (synchronised batch
    # norm then fails with a shape mismatch).
    devices = mirrored_devices()
    key = tuple(devices or ())
    if key not in _MIRRORED:
      _MIRRORED[key] = tf.distribute.MirroredStrategy(devices)
    return _MIRRORED[key]
  if name == 'multi_worker':
    if not _tf_config().get('cluster'):
      raise ValueError(
          '--strategy=multi_worker needs the cluster in TF_CONFIG, e.g. '
          '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": '
          '{"type": "worker", "index": 0}}.')
    return tf.distribute.MultiWorkerMirroredStrategy()
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or '')
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def evaluation_strategy(strategy):
  """The strategy evaluation runs under: `strategy`, except for a
  multi-worker one (the chief evaluates alone, on the default strategy)."""
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return tf.distribute.get_strategy()
  return strategy


def is_chief(strategy):
  """Whether this task writes summaries, checkpoints and results."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type is None:
    return True
  return task_type == 'chief' or (
      task_type == 'worker' and task_id == 0 and
      'chief' not in resolver.cluster_spec().as_dict())


def write_dir(model_dir, strategy):
  """Where this task saves: model_dir on the chief, a scratch dir elsewhere.

  Every worker must take part in a save, but only the chief's copy is kept.
  """
  if is_chief(strategy):
    return model_dir
  resolver = strategy.cluster_resolver
  return os.path.join(model_dir, 'workers',
                      f'{resolver.task_type}_{resolver.task_id}')
