import os
import re
import subprocess
import sys

import pytest

from experiments import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A line of TensorFlow's C++ logger, or the banner it prints before it is
# initialised.
CPP_LOG = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]|'
                     r'^WARNING: All log messages before absl::InitializeLog')

# What TensorFlow 2.21 prints while it is imported on a machine without a
# GPU driver (abridged).
IMPORT_OUTPUT = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796495845.236831    1706 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796495845.237181    1706 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796495845.280525    1706 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
/some/module.py:3: UserWarning: a Python warning
W0000 00:00:1796495845.300000    1706 type_inference.cc:339] Type inference failed.
E0000 00:00:1796495846.366886    1706 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
E0000 00:00:1796495846.400000    1706 other.cc:1] a real error
"""


def test_level_2_keeps_errors_and_python_output_only():
  kept, hidden = startup.filter_lines(IMPORT_OUTPUT, 2)
  assert kept.splitlines() == [
      '/some/module.py:3: UserWarning: a Python warning',
      'E0000 00:00:1796495846.400000    1706 other.cc:1] a real error']
  assert len(hidden.splitlines()) == 7


def test_level_0_keeps_everything():
  kept, hidden = startup.filter_lines(IMPORT_OUTPUT, 0)
  assert kept == IMPORT_OUTPUT and not hidden


def test_the_cuinit_error_stays_where_a_driver_exists():
  text = ('E0000 00:00:1796495846.366886    1706 cuda_platform.cc:52] failed '
          'call to cuInit: INTERNAL: CUDA error\n')
  assert startup.filter_lines(text, 2)[0] == text


@pytest.mark.parametrize('argv, requested', [
    (['prog'], False),
    (['prog', '--tf_logs'], True),
    (['prog', '-tf_logs'], True),
    (['prog', '--tf_logs=true'], True),
    (['prog', '--tf_logs=0'], False),
    (['prog', '--tf_logs', '--notf_logs'], False),
    (['prog', '--', '--tf_logs'], False),
    (['prog', 'tf_logs'], False),
])
def test_tf_logs_from_the_command_line(argv, requested):
  assert startup.tf_logs_requested(argv) == requested


def _run(*args):
  env = {k: v for k, v in os.environ.items()
         if k not in (startup.LEVEL_VARIABLE, 'TF_ENABLE_ONEDNN_OPTS')}
  env['PYTHONPATH'] = ROOT
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=240,
                        check=False)


@pytest.mark.slow
def test_binaries_start_without_tensorflow_messages():
  result = _run('experiments.quickstart', '--model=1,1,1,1',
                '--base_channels=4', '--image_size=32')
  assert result.returncode == 0, result.stderr
  assert 'GFLOPs' in result.stdout
  noise = [line for line in result.stderr.splitlines() if CPP_LOG.match(line)
           or 'cpu_feature_guard' in line or 'oneDNN custom operations' in line]
  assert not noise, result.stderr
  # The flags every binary accepts are listed in its help.
  result = _run('experiments.quickstart', '--help')  # absl exits with 1.
  assert '--[no]tf_logs' in result.stdout and '--progress' in result.stdout
  assert not [line for line in result.stderr.splitlines()
              if CPP_LOG.match(line)], result.stderr


@pytest.mark.slow
def test_tf_logs_brings_the_messages_back():
  result = _run('experiments.quickstart', '--tf_logs', '--model=1,1,1,1',
                '--base_channels=4', '--image_size=32')
  assert result.returncode == 0, result.stderr
  shown = [line for line in result.stderr.splitlines() if CPP_LOG.match(line)]
  if not shown:
    pytest.skip('TensorFlow logs nothing at start-up on this machine.')
  assert any('port.cc' in line or 'cudart_stub' in line
             or 'cpu_feature_guard' in line for line in shown), shown
