import os
import subprocess
import sys


ROOT = os.path.join(os.path.dirname(__file__), '..')
ORACLE = os.path.join(ROOT, 'tests', 'data', 'oracle',
                      'imagenet_sact_tiny.ckpt')


def run_quickstart(*flags):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.quickstart', *flags], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_quickstart_prints_a_table_per_block():
  out = run_quickstart('--model=1,2,1,2', '--base_channels=2',
                       '--image_size=64')
  lines = out.splitlines()
  assert lines[0].startswith('Image 43x64, sact ResNet')
  for block in ('block1', 'block2', 'block3', 'block4'):
    assert any(line.startswith(block) for line in lines)
  assert 'Total:' in lines[-1] and '% of the plain ResNet' in lines[-1]


def test_quickstart_with_the_authors_checkpoint():
  out = run_quickstart('--model=2,3,4,2', '--base_channels=8',
                       '--num_classes=7', f'--authors_checkpoint={ORACLE}')
  assert 'Loaded 269 variables' in out


def test_quickstart_rejects_a_missing_image():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.quickstart', '--image=/nonexistent.jpg',
       '--model=1,1,1,1', '--base_channels=1'], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode != 0
  assert 'no file at /nonexistent.jpg' in result.stderr
