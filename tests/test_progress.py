import io
import logging
import sys

import pytest

from sact_tf import progress


class FakeTerminal(io.StringIO):
  """A stream that says it is an interactive terminal."""

  def isatty(self):
    return True


class Clock:
  """A clock the test moves by hand."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


@pytest.fixture(name='lines')
def _lines(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  return lambda: [r.getMessage() for r in caplog.records if r.name == 'absl']


def test_log_lines_show_done_total_rate_elapsed_and_eta(lines):
  clock = Clock()
  report = progress.Progress('Training', 100, unit='step', mode='log',
                             log_every=30, clock=clock)
  for _ in range(100):
    clock.now += 1.0
    report.update()
  report.close()
  # Rate-limited: one line per 30 s, and a last one with the overall rate.
  assert lines() == [
      'Training: 30/100 steps (30.0 %), 1 steps/s, elapsed 30 s, ETA 1 min '
      '10 s',
      'Training: 60/100 steps (60.0 %), 1 steps/s, elapsed 1 min 0 s, ETA '
      '40 s',
      'Training: 90/100 steps (90.0 %), 1 steps/s, elapsed 1 min 30 s, ETA '
      '10 s',
      'Training: 100/100 steps (100.0 %), 1 steps/s, elapsed 1 min 40 s']


def test_the_eta_follows_the_recent_rate(lines):
  clock = Clock()
  report = progress.Progress('Training', 1000, initial=200, mode='log',
                             log_every=10, clock=clock)
  clock.now = 10.0
  report.update(100)  # 10 steps/s.
  clock.now = 20.0
  report.update(50)  # 5 steps/s: 650 steps left take 130 s.
  assert lines() == [
      'Training: 300/1000 steps (30.0 %), 10 steps/s, elapsed 10 s, ETA '
      '1 min 10 s',
      'Training: 350/1000 steps (35.0 %), 5 steps/s, elapsed 20 s, ETA '
      '2 min 10 s']


def test_short_operations_log_nothing(lines):
  clock = Clock()
  with progress.Progress('Evaluation', 10, unit='example', mode='log',
                         log_every=30, clock=clock) as report:
    for _ in range(10):
      clock.now += 1.0
      report.update()
  assert not lines()


def test_unknown_total_shows_done_and_rate_without_eta(lines):
  clock = Clock()
  with progress.Progress('Evaluation', None, unit='example', mode='log',
                         log_every=10, clock=clock) as report:
    for _ in range(25):
      clock.now += 1.0
      report.update(4)
  assert lines() == [
      'Evaluation: 40 examples, 4 examples/s, elapsed 10 s',
      'Evaluation: 80 examples, 4 examples/s, elapsed 20 s',
      'Evaluation: 100 examples, 4 examples/s, elapsed 25 s']


def test_slow_rates_are_seconds_per_unit(lines):
  clock = Clock()
  runs = progress.runs(3, 'Demo runs', clock=clock, mode='log')
  clock.now = 120.0
  runs.update()
  clock.now = 300.0
  runs.update()
  runs.close()
  assert lines() == [
      'Demo runs: 1/3 runs (33.3 %), 120 s/run, elapsed 2 min 0 s, ETA 4 min '
      '0 s',
      'Demo runs: 2/3 runs (66.7 %), 180 s/run, elapsed 5 min 0 s, ETA 3 min '
      '0 s']


def test_auto_is_a_bar_on_a_terminal_and_lines_stay_whole(monkeypatch,
                                                          lines):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  with progress.Progress('Evaluation', 3, unit='batch') as report:
    assert report.mode == 'bar'
    for index in range(3):
      report.update()
      # What Python writes to stderr meanwhile (absl, warnings) goes above
      # the bar, on lines of its own.
      sys.stderr.write(f'a log line {index}\n')
  assert sys.stderr is terminal
  output = terminal.getvalue()
  assert 'Evaluation: 100%' in output and '3/3' in output
  assert 'batches/s' in output
  for index in range(3):
    assert f'\ra log line {index}\n' in output
  assert not lines()


def test_a_bar_without_total_counts_and_shows_the_rate(monkeypatch):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  with progress.Progress('Export', None, unit='example') as report:
    report.update(7)
  output = terminal.getvalue()
  assert '7 examples' in output and 'examples/s' in output
  assert '%' not in output


def test_auto_logs_when_the_stream_is_a_file(lines):
  report = progress.Progress('Training', 2, stream=io.StringIO(),
                             log_every=0)
  assert report.mode == 'log'
  report.update()
  report.close()
  assert lines()[0].startswith('Training: 1/2 steps (50.0 %)')


def test_off_and_disabled_report_nothing(monkeypatch, lines):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  for report in (progress.Progress('A', 2, mode='off', log_every=0),
                 progress.Progress('B', 2, mode='log', log_every=0,
                                   enabled=False),
                 progress.Progress('C', 2, enabled=False)):
    report.update(2)
    report.close()
  assert not lines() and not terminal.getvalue()


def test_track_counts_items_and_ends_with_the_loop(lines):
  batches = [[1, 2], [3, 4], [5]]
  seen = list(progress.track(batches, 'Export', 5, unit='example',
                             count=len, mode='log', log_every=0))
  assert seen == batches
  assert [line.split(',')[0] for line in lines()] == [
      'Export: 2/5 examples (40.0 %)', 'Export: 4/5 examples (80.0 %)',
      'Export: 5/5 examples (100.0 %)']


def test_configure_sets_the_defaults_and_checks_them():
  before = progress.settings()
  try:
    progress.configure(mode='log', log_every=5)
    report = progress.Progress('X', 1, stream=FakeTerminal())
    assert report.mode == 'log' and report.log_every == 5
    with pytest.raises(ValueError, match='one of auto, bar, log, off'):
      progress.configure(mode='loud')
    with pytest.raises(ValueError, match='>= 0'):
      progress.configure(log_every=-1)
  finally:
    progress.configure(**before)


def test_durations_in_words():
  assert progress.format_duration(0.42) == '0.4 s'
  assert progress.format_duration(42) == '42 s'
  assert progress.format_duration(352) == '5 min 52 s'
  assert progress.format_duration(7500) == '2 h 05 min'
  assert progress.plural('batch') == 'batches'
