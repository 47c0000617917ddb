"""experiments.records: a sweep's finished runs saved as small files and restored on a fresh
machine are skipped by the train loop, as if they had run there."""

import json
import os

import pytest

from configs import associative_recall
from experiments import records, report, train
from experiments.tasks.associative_recall import report as retrieval_report


def _config(**overrides):
  c = associative_recall.get_config("linear-sum")
  c.num_keys, c.max_steps, c.eval_every, c.checkpoint_every = 6, 20, 10, 10
  c.update(overrides)
  return c


def test_saved_records_restore_finished_runs_that_the_loop_then_skips(tmp_path, capsys):
  runs, saved_to, fresh = tmp_path / "runs", tmp_path / "records", tmp_path / "fresh"
  first = train.train(_config(), str(runs / "num_keys=0006,seed=0001"))
  os.makedirs(runs / "num_keys=0008,seed=0001" / "checkpoints")   # unfinished: not saved
  assert records.save(str(runs), str(saved_to)) == ["num_keys=0006,seed=0001"]
  assert sorted(os.listdir(saved_to / "num_keys=0006,seed=0001")) == sorted(records.FILES)

  assert records.restore(str(saved_to), str(fresh)) == ["num_keys=0006,seed=0001"]
  capsys.readouterr()
  again = train.train(_config(), str(fresh / "num_keys=0006,seed=0001"))
  assert "Already finished (max_steps at step 20)" in capsys.readouterr().out
  assert again == first and not os.path.exists(fresh / "num_keys=0006,seed=0001" / "checkpoints")
  # The report reads restored runs like any other.
  rows = retrieval_report.collect(report.finished_runs([str(fresh)]))
  assert [(r["num_keys"], r["seed"], r["steps"]) for r in rows] == [(6, 1, 20)]

  # A run finished here is kept as it is, whatever the records say.
  point = saved_to / "num_keys=0006,seed=0001" / "summary.json"
  json.dump(dict(first, final_eval_loss=123.0), open(point, "w"))
  assert records.restore(str(saved_to), str(runs)) == []
  assert json.load(open(runs / "num_keys=0006,seed=0001" / "summary.json")) == first
  # Restored without checkpoints, a run that ran out of steps continues under a larger budget
  # (from step 0: a fresh start through the same (seed, step) data).
  longer = train.train(_config(max_steps=30), str(fresh / "num_keys=0006,seed=0001"))
  assert longer["steps"] == 30 and longer["stop_reason"] == "max_steps"


def test_save_names_a_missing_runs_directory(tmp_path):
  with pytest.raises(ValueError, match="No run directory"):
    records.save(str(tmp_path / "absent"), str(tmp_path / "records"))
  assert records.restore(str(tmp_path / "absent"), str(tmp_path / "runs")) == []


@pytest.mark.fast
def test_results_files_name_their_command_and_commit(tmp_path, monkeypatch):
  # Every results CSV starts with a '# Made by `python -m <command>` at fwp commit <c>.' line
  # that the project's readers skip; Markdown through write_text gets the same paragraph
  # (after a '# title'), unless its text names its command already.
  from experiments import results
  monkeypatch.setattr("sys.argv", ["experiments/report.py", "runs/x", "--out=results"])
  made = f"Made by `python -m experiments.report runs/x --out=results` at fwp commit {results.commit()}."
  path = str(tmp_path / "t.csv")
  rows = [dict(a=1, b="x"), dict(a=2, b="y")]
  results.write_csv(rows, path, ["a", "b"])
  assert open(path).read().splitlines() == [f"# {made}", "a,b", "1,x", "2,y"]
  assert results.read_csv(path) == [dict(a="1", b="x"), dict(a="2", b="y")]
  with open(path, "w") as f:                           # a CSV from before the stamp reads alike
    f.write("a,b\n1,x\n2,y\n")
  assert results.read_csv(path) == [dict(a="1", b="x"), dict(a="2", b="y")]
  for text, expected in (
      ("| t |\n", f"{made}\n\n| t |\n"),
      ("# Title\n\nBody.\n", f"# Title\n\n{made}\n\nBody.\n"),
      ("# Title\n\nMade by `python -m elsewhere` at fwp commit abc.\n",
       "# Title\n\nMade by `python -m elsewhere` at fwp commit abc.\n")):
    results.write_text(str(tmp_path / "sub" / "t.md"), text)
    assert open(tmp_path / "sub" / "t.md").read() == expected
