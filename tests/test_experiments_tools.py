"""experiments.export_ponder (bulk NPZ export), plot_flops and ponder_map."""

import json
import os
import subprocess
import sys
import types

from absl import app
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import export_ponder
from experiments import plot_flops
from experiments import ponder_map
from sact_tf import inference
from sact_tf import train
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import export_maps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  export_ponder.FLAGS.unparse_flags()
  plot_flops.FLAGS.unparse_flags()
  ponder_map.FLAGS.unparse_flags()


def _make_run(model_dir, model=None, data=None):
  """A run directory as training leaves it (config.json + checkpoint),
  without the cost of training; `model` and `data` replace fields of those
  sections."""
  config = train.ExperimentConfig(
      model=dict(dict(family='imagenet', units=[1, 2, 1, 1],
                      model_type='sact', num_classes=10, base_channels=2),
                 **(model or {})),
      data=dict(dict(dataset='cifar10', data_dir='/nonexistent',
                     preprocessing='inception', image_size=32,
                     eval_image_sizes=[32], batch_size=4, eval_batch_size=3),
                **(data or {})),
      optimizer=dict(train_steps=2), run=dict(model_dir=str(model_dir)))
  model = config.build_model()
  checkpointing.write_model_checkpoint(model, str(model_dir), step=3)
  config_lib.save(config)
  return config


@pytest.fixture(name='sact_dir', scope='module')
def _sact_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('sact')
  _make_run(model_dir)
  return model_dir


def test_export_ponder_writes_per_example_maps(sact_dir, tmp_path, capsys):
  output = tmp_path / 'out' / 'maps.npz'
  with tfds.testing.mock_data(num_examples=7):
    export_ponder.main(['export_ponder', f'--model_dir={sact_dir}',
                        f'--output={output}', '--max_examples=5',
                        '--batch_size=2'])
    # The model on the same images, eagerly, for reference.
    config, model, _ = checkpointing.load_run(str(sact_dir))
    batch = next(iter(pipelines.eval_dataset(
        datasets.prepare('cifar10', '/nonexistent'),
        datasets.get_spec('cifar10'), 'inception', 32, 5, num_examples=5)))
  assert 'Wrote 5 examples of cifar10 test at 32px (step 3)' in (
      capsys.readouterr().out)
  assert os.listdir(output.parent) == ['maps.npz']
  arrays, metadata = export_maps.load(str(output))
  assert metadata['num_examples'] == 5 and metadata['step'] == 3
  assert metadata['model'] == config.model_fields()
  assert metadata['split'] == 'test' and metadata['image_size'] == 32
  assert metadata['block_names'] == ['block1', 'block2', 'block3', 'block4']
  assert metadata['checkpoint'].endswith('ckpt-3')
  expected_maps = {'block1': (8, 8), 'block2': (4, 4), 'block3': (2, 2),
                   'block4': (1, 1)}
  assert set(arrays) == {'labels', 'predictions', 'flops', 'ponder_cost'} | {
      f'{b}/{k}' for b in expected_maps
      for k in ('num_units', 'ponder_cost', 'ponder_map')}
  for name, shape in expected_maps.items():
    assert arrays[f'{name}/ponder_map'].shape == (5,) + shape
    assert arrays[f'{name}/ponder_map'].dtype == np.float32
  outputs = model(batch['image'], training=False)
  np.testing.assert_array_equal(arrays['labels'], batch['label'].numpy())
  np.testing.assert_array_equal(
      arrays['predictions'], np.argmax(outputs['logits'].numpy(), -1))
  np.testing.assert_array_equal(arrays['flops'], outputs['flops'].numpy())
  for name, units in zip(metadata['block_names'], [1, 2, 1, 1]):
    np.testing.assert_allclose(arrays[f'{name}/ponder_map'],
                               outputs[f'{name}/ponder_map'].numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(
        arrays[f'{name}/num_units'],
        outputs[f'{name}/num_units'].numpy().mean(axis=(1, 2)), rtol=1e-6)
    assert np.all((arrays[f'{name}/num_units'] >= 1)
                  & (arrays[f'{name}/num_units'] <= units))
  np.testing.assert_allclose(
      arrays['ponder_cost'],
      sum(arrays[f'{b}/ponder_cost'] for b in expected_maps), rtol=1e-5)


def test_export_of_a_plain_resnet_has_no_ponder_arrays(tmp_path):
  model_dir = tmp_path / 'plain'
  _make_run(model_dir,
            model=dict(family='cifar', units=[1, 1, 1], model_type='resnet'),
            data=dict(preprocessing='cifar'))
  with tfds.testing.mock_data(num_examples=3):
    result = export_maps.export_run(str(model_dir), str(tmp_path / 'p.npz'))
  arrays, metadata = export_maps.load(result['output'])
  assert metadata['num_examples'] == 3 and metadata['model']['model_type'] == (
      'resnet')
  assert sorted(arrays) == ['block_1/num_units', 'block_2/num_units',
                            'block_3/num_units', 'flops', 'labels',
                            'predictions']
  np.testing.assert_array_equal(arrays['block_2/num_units'], [1, 1, 1])


def test_export_errors_are_clear(tmp_path, sact_dir, monkeypatch):
  with pytest.raises(app.UsageError, match='--output is required'):
    export_ponder.main(['export_ponder', f'--model_dir={sact_dir}'])
  with pytest.raises(FileNotFoundError, match='No config.json'):
    export_maps.export_run(str(tmp_path), str(tmp_path / 'x.npz'))
  stub = types.SimpleNamespace(info=types.SimpleNamespace(
      splits={'train': None, 'test': None}))
  monkeypatch.setattr(datasets, 'prepare', lambda *args, **kwargs: stub)
  (tmp_path / 'old.npz').write_bytes(b'old')
  with pytest.raises(app.UsageError, match="no split 'validation'.*test"):
    export_ponder.main(['export_ponder', f'--model_dir={sact_dir}',
                        f'--output={tmp_path / "old.npz"}',
                        '--split=validation'])
  assert (tmp_path / 'old.npz').read_bytes() == b'old'


def test_npz_stream_failure_leaves_nothing(tmp_path):
  with pytest.raises(ValueError, match='one image size'):
    with export_maps.NpzStream(str(tmp_path / 'a.npz')) as stream:
      stream.append({'m': np.zeros([2, 4, 4], np.float32)})
      stream.append({'m': np.zeros([2, 8, 8], np.float32)})
  assert os.listdir(tmp_path) == []
  with export_maps.NpzStream(str(tmp_path / 'a.npz')) as stream:
    for start in (0, 3):
      stream.append({'x': np.arange(start, start + 3, dtype=np.int64),
                     'b/m': np.full([3, 2, 2], start, np.float32)})
    stream.close({'metadata': np.array('{"a": 1}')})
  with np.load(tmp_path / 'a.npz') as npz:
    np.testing.assert_array_equal(npz['x'], np.arange(6))
    assert npz['b/m'].shape == (6, 2, 2) and npz['b/m'][3:].min() == 3
    assert json.loads(str(npz['metadata'])) == {'a': 1}
  assert os.listdir(tmp_path) == ['a.npz']


def _eval_json(path, model_type, tau, image_size, flops, top1,
               units=(3, 4, 23, 3)):
  summary = {
      'dataset': 'imagenet2012', 'split': 'validation',
      'image_size': image_size, 'num_examples': 50000, 'step': 1,
      'checkpoint': '/x/ckpt-1', 'tau': tau, 'top1': top1, 'top5': 0.9,
      'flops_mean': flops, 'flops_std': 0.0, 'blocks': [],
      'model': {'family': 'imagenet', 'units': list(units),
                'model_type': model_type, 'num_classes': 1001,
                'base_channels': 64}}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(summary))
  return str(path)


def test_plot_flops_draws_the_runs(tmp_path, capsys):
  for index, (tau, flops, top1) in enumerate(
      [(0.001, 7.0e9, 0.77), (0.005, 5.5e9, 0.76), (0.01, 4.5e9, 0.74)]):
    _eval_json(tmp_path / f'sact{index}' / 'eval_validation_224px.json',
               'sact', tau, 224, flops, top1)
  _eval_json(tmp_path / 'resnet101' / 'eval_validation_224px.json', 'resnet',
             0.0, 224, 7.8e9, 0.77)
  _eval_json(tmp_path / 'resnet101' / 'eval_validation_320px.json', 'resnet',
             0.0, 320, 15.9e9, 0.78)
  _eval_json(tmp_path / 'resnet50' / 'eval_validation_224px.json', 'resnet',
             0.0, 224, 4.1e9, 0.75, units=(3, 4, 6, 3))
  output = tmp_path / 'plots' / 'fig7.png'
  output.parent.mkdir()
  runs = plot_flops.main([
      'plot_flops', f'--eval_json={tmp_path}/sact*/eval_*.json,'
      f'{tmp_path}/resnet101,{tmp_path}/resnet50/eval_validation_224px.json,'
      f'{tmp_path}/sact0/eval_validation_224px.json',
      f'--output={output}', '--title=Figure 7'])
  assert 'Plotted 6 evaluations' in capsys.readouterr().out
  by_group = {}
  for run in runs:
    by_group.setdefault(run['group'], []).append(run['label'])
  assert by_group == {'SACT ResNet-101': ['τ=0.001', 'τ=0.005', 'τ=0.01'],
                      'ResNet-101': ['224px', '320px'],
                      'ResNet-50': ['224px']}
  assert {r['accuracy'] for r in runs} >= {77.0, 74.0}
  image = tf.io.decode_png(output.read_bytes()).numpy()
  assert image.shape == (450, 600, 3) and image.std() > 0
  assert os.listdir(output.parent) == ['fig7.png']


def test_plot_flops_errors_are_clear(tmp_path):
  good = _eval_json(tmp_path / 'eval_test_32px.json', 'sact', 0.01, 32, 1e6,
                    0.5)
  output = f'--output={tmp_path / "p.png"}'
  with pytest.raises(FileNotFoundError, match='No such file: .*missing.json'):
    plot_flops.main(['plot_flops', f'--eval_json={good},{tmp_path}/'
                     'missing.json', output])
  with pytest.raises(FileNotFoundError, match='matches no file'):
    plot_flops.main(['plot_flops', f'--eval_json={tmp_path}/nope_*.json',
                     output])
  (tmp_path / 'config.json').write_text('{"family": "cifar"}')
  with pytest.raises(app.UsageError, match='not an evaluation JSON: it lacks '
                     'flops_mean, top1, model'):
    plot_flops.main(['plot_flops', f'--eval_json={tmp_path}/config.json',
                     output])
  (tmp_path / 'broken.json').write_text('{"top1": ')
  with pytest.raises(app.UsageError, match='not valid JSON'):
    plot_flops.main(['plot_flops', f'--eval_json={tmp_path}/broken.json',
                     output])
  assert not (tmp_path / 'p.png').exists()
  # From the command line: one line saying what is wrong, no traceback.
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.plot_flops',
       f'--eval_json={tmp_path}/missing.json', output], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert f'Error: No such file: {tmp_path}/missing.json' in result.stderr
  assert 'Traceback' not in result.stderr


def test_ponder_map_skips_a_corrupt_image_and_draws_the_others(
    sact_dir, tmp_path, capsys):
  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  for name in ('a', 'c'):
    pixels = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    (images / f'{name}.png').write_bytes(tf.io.encode_png(pixels).numpy())
  good = (images / 'a.png').read_bytes()
  (images / 'b.png').write_bytes(good[:len(good) // 2])
  output_dir = tmp_path / 'maps'
  with pytest.raises(ponder_map.SkippedImagesError,
                     match=r'1 of 3 images could not be read and were '
                     r'skipped: .*b\.png') as raised:
    ponder_map.main(['ponder_map', f'--model_dir={sact_dir}',
                     f'--images={images}/*.png', f'--output_dir={output_dir}'])
  assert list(raised.value.failures) == [str(images / 'b.png')]
  assert sorted(os.listdir(output_dir)) == sorted(
      f'{name}_{kind}.png' for name in ('a', 'c')
      for kind in ('ponder', 'overlay', 'colorbar'))
  for name in ('a', 'c'):
    heat = tf.io.decode_png((output_dir / f'{name}_ponder.png').read_bytes())
    assert heat.shape == (24, 40, 3)
  captured = capsys.readouterr()
  [line] = [l for l in captured.err.splitlines() if 'b.png' in l]
  assert line == (f'Skipped: {images / "b.png"} is a corrupt or truncated '
                  'PNG image that cannot be decoded: Invalid PNG data, size '
                  f'{len(good) // 2}.')
  assert (f'Wrote 6 PNGs for 2 of 3 images to {output_dir}; skipped 1 '
          'unreadable.') in captured.out


def test_read_image_names_the_file_and_the_reason(tmp_path):
  png = tf.io.encode_png(np.zeros([4, 4, 3], np.uint8)).numpy()
  cases = {'empty.png': (b'', 'is empty'),
           'text.jpg': (b'plain text', 'is not a JPEG, PNG, BMP or GIF'),
           'cut.png': (png[:20], 'is a corrupt or truncated PNG')}
  for name, (data, reason) in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=f'{tmp_path / name} {reason}'):
      inference.read_image(str(tmp_path / name))
  with pytest.raises(ValueError, match='is a directory'):
    inference.read_image(str(tmp_path))
  (tmp_path / 'ok.png').write_bytes(png)
  assert inference.read_image(str(tmp_path / 'ok.png')).shape == (4, 4, 3)
