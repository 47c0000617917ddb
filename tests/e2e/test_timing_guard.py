"""experiments.studies.timing.Quiet: a benchmark's guard against load. A row is busy when another
thread was runnable before or after it, or when the matmul rate fell more than the tolerance below
the first measurement; the table's line says how quiet the machine was and names the busy rows."""

import pytest

from experiments.studies import timing


@pytest.mark.fast
def test_a_row_is_busy_when_another_thread_runs_or_the_matmul_rate_falls():
  samples = iter([(0.1, 0, 200.0), (0.2, 0, 195.0),      # row 1: quiet
                  (0.3, 2, 190.0), (0.4, 0, 198.0),      # row 2: two other threads runnable
                  (0.5, 0, 150.0), (0.6, 0, 199.0),      # row 3: the rate 25 % down
                  (0.7, None, 201.0), (0.8, None, 200.0)])   # row 4: no /proc/loadavg
  quiet = timing.Quiet(sample=lambda: next(samples))
  rows = [quiet.fields(quiet.measure(), quiet.measure()) for _ in range(4)]
  assert [r["busy"] for r in rows] == [False, True, True, False]
  assert rows[0] == dict(load_before=0.1, load_after=0.2, others_before=0, others_after=0,
                         matmul_before=200.0, matmul_after=195.0, busy=False)
  line = quiet.line(rows)
  assert "1-minute load average 0.10-0.80" in line and "other runnable threads 2 at most" in line
  assert "matmul (1024³) 150-201 GFLOP/s" in line and "rows 2, 3, marked ‡" in line
  quiet = timing.Quiet(sample=lambda: (0.0, 0, 100.0))
  quiet.measure()
  assert "Busy" not in quiet.line([{"busy": False}])


@pytest.mark.fast
def test_consecutive_rows_share_a_measurement():
  taken = []
  quiet = timing.Quiet(sample=lambda: taken.append(1) or (0.0, 0, 100.0))
  rows = [quiet.timed(dict) for _ in range(3)]          # before, then one after per row
  assert len(taken) == 4 and not any(r["busy"] for r in rows)
  quiet._last = (quiet._last[0], quiet._last[1] - 10)    # a row long after the previous one
  quiet.timed(dict)
  assert len(taken) == 6


@pytest.mark.fast
def test_others_running_reads_this_machine():
  others = timing.others_running(samples=3, interval=0.0)
  assert others is None or others >= 0
