"""launch.py end to end, config parsing and bad flags, resume, sweeps and the report."""

import json
import os

import jax
import numpy as np
import pytest

from configs import associative_recall
from experiments import checkpoint, report, results, sweep, train
from experiments.tasks.associative_recall import report as retrieval_report
from tests import helpers
from tests.helpers import CONFIG, launch, launch_each, read_metrics

@pytest.mark.slow
def test_launch_learns_a_tiny_instance(tmp_path):
  result = launch(f"--config={CONFIG}:linear-sum", "--config.num_keys=10",
                  "--config.learning_rate=3e-3", "--config.max_steps=400",
                  "--config.eval_every=100", "--config.model.chunk_size=auto",
                  f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["final_eval_loss"] < 0.05, summary
  metrics = read_metrics(tmp_path)
  assert [m["step"] for m in metrics] == [100, 200, 300, 400]
  assert set(metrics[0]) == {"step", "train_loss", "eval_loss", "learning_rate",
                             "steps_per_second", "wall_seconds"}
  assert metrics[0]["learning_rate"] == 3e-3
  assert metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]
  saved = json.load(open(tmp_path / "config.json"))["model"]
  assert (saved["feature_map"], saved["chunk_size"]) == ("elu_plus_one", "auto")


BAD_FLAGS = [
    ([f"--config={CONFIG}:relu-sum"], "Unknown curve 'relu-sum'"),
    ([f"--config={CONFIG}:linear-sum", "--config.setting=3"], "setting must be 1 or 2"),
    ([f"--config={CONFIG}:linear-sum", "--config.model.form=fast"],
     "valid choices: recurrent, parallel, chunked"),
    ([f"--config={CONFIG}:dpfp1-fwm", "--config.model.form=parallel"], "nonlinear in W"),
    ([f"--config={CONFIG}:linear-delta", "--config.model.chunk_size=-8"],
     "chunk_size must be a positive integer or 'auto', got '-8'"),
    ([f"--config={CONFIG}:linear-sum", "--sweep=num_keys=20:10:5"], "STOP >= START"),
]


@pytest.fixture(scope="module")
def bad_flags_results():
  """Every case of test_bad_flags_fail_at_parsing in one process (tests/launch_many.py): each
  fails at parsing, so the process start and jax import are paid once."""
  return launch_each([args + ["--workdir=/nonexistent/never-written"]
                      for args, _ in BAD_FLAGS], timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", BAD_FLAGS)
def test_bad_flags_fail_at_parsing(args, message, bad_flags_results):
  result = bad_flags_results[tuple(args + ["--workdir=/nonexistent/never-written"])]
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]   # the message, on its own
  assert not os.path.exists("/nonexistent/never-written")


@pytest.mark.slow
def test_show_config_shows_each_distinct_sweep_point_once(tmp_path):
  # --show_config ignored --sweep; tensorboard=true,True,TRUE were three identical runs.
  result = launch(f"--config={CONFIG}:linear-sum", "--sweep=tensorboard=true,True,false,TRUE",
                  "--show_config", f"--workdir={tmp_path}", timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("# Sweep point") == 2
  assert result.stdout.count("is the config of {'tensorboard': 'true', 'seed': 1}") == 2
  shown = [line.split("#")[0].strip() for line in result.stdout.splitlines()
           if line.startswith("tensorboard =")]
  assert shown == ["tensorboard = True", "tensorboard = False"]
  assert not os.listdir(tmp_path)


def test_curves_parse_into_paper_models():
  # 3 + 7 positive φ × 8 rules (sum, delta, fwm, delta_rnn, rdn, delta_lstm, gated_sum,
  # gated_delta) + tanh-{sum, fwm}
  assert len(associative_recall.CURVES) == 61
  assert "tanh-delta" not in associative_recall.CURVES   # listed curves are all valid
  c = associative_recall.get_config("dpfp2-delta_lstm")
  assert (c.model.update_rule, c.model.recurrence, c.model.normalization, c.setting) == (
      "delta", "delta_lstm", "sum", 2)
  c = associative_recall.get_config("fwp91-sum")
  assert (c.model.feature_map, c.model.normalization, c.setting) == ("identity", "none", 1)
  c = associative_recall.get_config("dpfp3-sum")
  assert (c.model.feature_map, c.model.nu, c.model.normalization, c.setting) == (
      "dpfp", 3, "attention", 1)
  c = associative_recall.get_config("favor128-delta")
  assert (c.model.num_features, c.model.normalization, c.setting) == (128, "sum", 2)
  c = associative_recall.get_config("tanh-fwm")
  assert (c.learning_rate, c.batch_size, c.model.form) == (1e-4, 128, "recurrent")
  for curve in associative_recall.CURVES:
    train.validate(associative_recall.get_config(curve))


def test_sweep_points_and_dirs():
  assert sweep.parse_range("num_keys=20:60:20") == ("num_keys", [20, 40, 60])
  assert sweep.parse_range("num_keys=5,7") == ("num_keys", [5, 7])
  grid = sweep.points("num_keys=20:40:20", [1, 2])
  assert grid == [{"num_keys": 20, "seed": 1}, {"num_keys": 20, "seed": 2},
                  {"num_keys": 40, "seed": 1}, {"num_keys": 40, "seed": 2}]
  assert sweep.point_dir("w", grid[1]).endswith("num_keys=0020,seed=0002")
  with pytest.raises(ValueError, match="FIELD=START:STOP:STEP"):
    sweep.parse_range("20:40")


_tiny_config = helpers.tiny_retrieval_config


def test_resume_equals_uninterrupted_run(tmp_path):
  """Stopping at step 40 (as a kill after the step-40 checkpoint would) and relaunching ends with
  bitwise-equal metrics (timing aside) and checkpoints to a run left alone."""
  alone, resumed = str(tmp_path / "alone"), str(tmp_path / "resumed")
  train.train(_tiny_config(), alone)
  train.train(_tiny_config(max_steps=40), resumed)
  # A metrics line written after the last checkpoint must not be duplicated on resume.
  with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
    f.write(json.dumps(dict(step=50, train_loss=0, eval_loss=0, steps_per_second=0,
                            wall_seconds=0)) + "\n")
  train.train(_tiny_config(), resumed)
  strip = lambda ms: [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in ms]
  assert strip(read_metrics(alone)) == strip(read_metrics(resumed))
  states = []
  for workdir in (alone, resumed):
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), 2)
    states.append(mngr.restore(60))
    mngr.close()
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    if a.dtype != np.float64 or a.shape:   # all but the wall clock
      np.testing.assert_array_equal(a, b)


def test_steps_per_call_trains_the_same_run_and_resumes_under_another(tmp_path, capsys):
  """K train steps in one compiled call (a scan) give bitwise the metrics (timing aside) and
  checkpoints of one step a call; K = 7 divides neither the evals nor the checkpoints (every 20
  and 10), so calls are cut there; a run of K = 7 resumes under K = 1 and the reverse."""
  one, seven, mixed = (str(tmp_path / n) for n in ("one", "seven", "mixed"))
  train.train(_tiny_config(checkpoint_every=10), one)
  train.train(_tiny_config(checkpoint_every=10, steps_per_call=7), seven)
  assert "Compiling 7 train steps a call" in capsys.readouterr().out
  train.train(_tiny_config(checkpoint_every=10, steps_per_call=7, max_steps=30), mixed)
  train.train(_tiny_config(checkpoint_every=10, max_steps=40), mixed)
  train.train(_tiny_config(checkpoint_every=10, steps_per_call=7), mixed)
  strip = lambda ms: [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in ms]
  for workdir in (seven, mixed):
    assert strip(read_metrics(workdir)) == strip(read_metrics(one))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
        os.listdir(os.path.join(one, "checkpoints")))
  for a, b, c in zip(helpers.final_params(one), helpers.final_params(seven),
                     helpers.final_params(mixed)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_steps_per_call_is_refused_for_a_family_that_makes_batches_on_the_host(tmp_path):
  config = helpers.tiny_lm_config(corpus="wikitext103", level="word",
                                  data_dir=helpers.write_wikitext(tmp_path / "wt"),
                                  cache_dir=str(tmp_path / "cache"), context=4, batch_size=2,
                                  steps_per_call=4)
  with pytest.raises(ValueError, match="steps_per_call=4 runs several train steps in one "
                                       "compiled call, .* the language_model family makes them"):
    train.train(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
  with pytest.raises(ValueError, match="config.steps_per_call must be a positive integer"):
    train.validate(_tiny_config(steps_per_call=0))


def test_a_run_from_before_the_task_fields_resumes(tmp_path):
  """config.json written before `task`, `lr_schedule`, `warmup_steps`, `grad_clip` existed."""
  train.train(_tiny_config(max_steps=20), str(tmp_path))
  path = tmp_path / "config.json"
  old = json.load(open(path))
  for key in ("task", "lr_schedule", "warmup_steps", "grad_clip"):
    del old[key]
  json.dump(old, open(path, "w"))
  assert train.train(_tiny_config(max_steps=40), str(tmp_path))["steps"] == 40
  with pytest.raises(ValueError, match=r"grad_clip: 0\.0 -> 1\.0"):
    json.dump(old, open(path, "w"))
    train.train(_tiny_config(max_steps=60, grad_clip=1.0), str(tmp_path))


def test_resume_with_a_different_model_is_refused(tmp_path):
  train.train(_tiny_config(max_steps=20), str(tmp_path))
  with pytest.raises(ValueError, match=r"model\.nu: 1 -> 2"):
    train.train(_tiny_config(max_steps=40, model=dict(nu=2)), str(tmp_path))
  assert train.train(_tiny_config(max_steps=40), str(tmp_path))["steps"] == 40  # may grow


@pytest.mark.slow
def test_sweep_runs_skips_finished_points_and_reports(tmp_path):
  args = [f"--config={CONFIG}:linear-sum", "--sweep=num_keys=4:6:2", "--seeds=1,2",
          "--config.max_steps=20", "--config.eval_every=10", f"--workdir={tmp_path}"]
  first = launch(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert len(list(tmp_path.glob("*/summary.json"))) == 4
  second = launch(*args, "--sweep_index=3")
  assert "Already finished (max_steps at step 20)" in second.stdout
  out = tmp_path / "results"
  written = report.report([str(tmp_path)], str(out))
  assert sorted(os.path.basename(p) for p in written) == [
      "associative_recall.csv", "associative_recall.md", "associative_recall_setting1.png"]
  stamp, *lines = (out / "associative_recall.csv").read_text().splitlines()
  assert stamp.startswith("# Made by `python -m ") and " at fwp commit " in stamp, stamp
  assert lines[0] == "setting,model,num_keys,seed,final_eval_loss,steps,wall_seconds,stop_reason"
  assert len(lines) == 5 and lines[1].startswith("1,linear-sum,4,1,")
  assert lines[1].endswith(",max_steps")
  table = (out / "associative_recall.md").read_text()   # 2 seeds, 20 steps, ended at max_steps
  assert "| linear-sum | " in table and table.count(" (2, 20)†") == 2, table
  # A rerun of one point (here: the same runs) replaces the earlier CSV's row; the others stay.
  earlier = retrieval_report.read_previous(str(out / "associative_recall.csv"))
  extra = dict(earlier[0], num_keys=8, final_eval_loss=0.5)
  results_csv = tmp_path / "earlier.csv"
  results.write_csv(earlier[:1] + [extra], str(results_csv), retrieval_report.COLUMNS)
  again = tmp_path / "again"
  report.report([str(tmp_path / "num_keys=0004,seed=0001")], str(again), str(results_csv))
  merged = retrieval_report.read_previous(str(again / "associative_recall.csv"))
  assert [(r["num_keys"], r["seed"]) for r in merged] == [(4, 1), (8, 1)]
  assert merged[0] == earlier[0] and merged[1] == extra


def test_an_earlier_csv_without_the_report_columns_is_refused(tmp_path):
  path = tmp_path / "old.csv"
  path.write_text("setting,model,num_keys,seed,final_eval_loss,steps,wall_seconds\n")
  with pytest.raises(ValueError, match="lacks the column.s. stop_reason"):
    retrieval_report.read_previous(str(path))


def test_knees_bracket_the_last_solved_size_of_each_curve(tmp_path):
  """The knee is the last S of an unbroken run of solved grid points (mean ≤ 0.01) and the next
  S; a curve that solves nothing or everything has one side only; seeds give the spread."""
  def row(model, s, seed, loss):
    return dict(setting=1, model=model, num_keys=s, seed=seed, final_eval_loss=loss, steps=100,
                wall_seconds=1.0, stop_reason="patience")
  rows = [row("linear-sum", 20, 1, 1e-4), row("linear-sum", 40, 1, 0.004),
          row("linear-sum", 40, 2, 0.012), row("linear-sum", 60, 1, 0.2),
          row("linear-sum", 80, 1, 1e-4),                   # after the knee: does not move it
          row("favor64-sum", 20, 1, 0.1), row("softmax", 20, 1, 1e-5),
          dict(row("dpfp1-delta", 20, 1, 1e-4), setting=2), dict(row("dpfp1-delta", 40, 1, 0.3),
                                                                 setting=2)]
  by_model = {k["model"]: k for k in retrieval_report.knees(rows)}
  linear = by_model["linear-sum"]
  assert linear["solved"] == dict(num_keys=40, mean=0.008, min=0.004, max=0.012, seeds=2)
  assert linear["failed"]["num_keys"] == 60 and linear["paper"] == 60
  assert by_model["favor64-sum"]["solved"] is None
  assert by_model["favor64-sum"]["failed"]["num_keys"] == 20
  assert by_model["softmax"]["failed"] is None
  path = tmp_path / "table.md"
  retrieval_report.write_markdown(rows, str(path))
  assert ("| linear-sum | S=40: 0.008 (0.004–0.012, 2 seeds) | S=60: 0.2 (0.2–0.2, 1 seeds) "
          "| 20 \\| 40 | ≈ 60 |") in path.read_text()   # at the stopping loss: 20, then 40
  # Setting 2 has its own table, without a paper column.
  table = path.read_text()
  assert "### Setting 2: capacity knees" in table
  assert ("| dpfp1-delta | S=20: 0.0001 (0.0001–0.0001, 1 seeds) | S=40: 0.3 (0.3–0.3, 1 seeds) "
          "| 20 \\| 40 |\n") in table


@pytest.mark.slow
def test_run_time_errors_and_non_finite_runs_exit_non_zero(tmp_path):
  """A ValueError at run time ends with its message and status 2 (no traceback); a run stopped
  on a non-finite loss ends with status 3, so job schedulers see the failure."""
  first = launch(f"--config={CONFIG}:linear-sum", "--config.num_keys=6", "--config.max_steps=20",
                 "--config.eval_every=10", f"--workdir={tmp_path}/a")
  assert first.returncode == 0, first.stderr[-2000:]
  other = launch(f"--config={CONFIG}:linear-sum", "--config.num_keys=8", "--config.max_steps=20",
                 f"--workdir={tmp_path}/a")
  assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
  assert "Error: This workdir holds a run with a different config" in other.stderr
  diverged = launch(f"--config={CONFIG}:linear-sum", "--config.num_keys=6",
                    "--config.learning_rate=1e30", "--config.max_steps=40",
                    "--config.eval_every=10", f"--workdir={tmp_path}/b")
  assert diverged.returncode == 3, diverged.stderr[-2000:]
  assert json.load(open(tmp_path / "b" / "summary.json"))["stop_reason"] == "non_finite"


BAD_SWEEPS = [
    (["--seeds=a,b"], "--seeds must be a comma-separated list of integers"),
    (["--sweep=foo=1:2:1"], "'foo', which is not a config field"),
    (["--sweep=num_keys=10,1"], "num_keys must be an integer >= 2"),   # before point 10 trains
]


@pytest.fixture(scope="module")
def bad_sweeps(tmp_path_factory):
  """{args: (result, workdir)} of every BAD_SWEEPS case, all launched in one process
  (tests/launch_many.py); each workdir is its own."""
  cases = {}
  for args, _ in BAD_SWEEPS:
    workdir = tmp_path_factory.mktemp("sweep")
    cases[tuple(args)] = (workdir, [f"--config={CONFIG}:linear-sum", *args,
                                    f"--workdir={workdir}"])
  results = launch_each([launch_args for _, launch_args in cases.values()], timeout=300)
  return {key: (results[tuple(launch_args)], workdir)
          for key, (workdir, launch_args) in cases.items()}


@pytest.mark.slow
@pytest.mark.parametrize("args,message", BAD_SWEEPS)
def test_bad_sweeps_fail_before_any_point_trains(bad_sweeps, args, message):
  result, workdir = bad_sweeps[tuple(args)]
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert not any(name.startswith("num_keys=") for name in os.listdir(workdir))


def test_sweep_points_are_unique():
  assert sweep.points("num_keys=20,20,40", [1, 1]) == [{"num_keys": 20, "seed": 1},
                                                       {"num_keys": 40, "seed": 1}]


@pytest.mark.slow
def test_an_unknown_config_field_is_named_with_the_valid_ones(tmp_path):
  result = launch(f"--config={CONFIG}:linear-sum", "--config.model.dd=3", f"--workdir={tmp_path}",
                  timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "no field model.dd; valid fields of model: beta_init, chunk_size, d," in result.stderr


def test_a_finished_run_goes_on_when_its_stopping_rule_is_relaxed(tmp_path):
  """stop_loss and patience are listed as changeable on resume: lowering the one that stopped a
  run continues it (from its last checkpoint, each eval once); an unchanged rule does not."""
  workdir = str(tmp_path)
  first = train.train(_tiny_config(stop_loss=10.0), workdir)          # stops at the first eval
  assert (first["stop_reason"], first["steps"]) == ("stop_loss", 20)
  assert train.train(_tiny_config(stop_loss=10.0), workdir)["steps"] == 20
  again = train.train(_tiny_config(stop_loss=0.0), workdir)
  assert (again["stop_reason"], again["steps"]) == ("max_steps", 60)
  assert [m["step"] for m in read_metrics(workdir)] == [20, 40, 60]


def test_a_run_without_a_finite_eval_stays_in_the_report(tmp_path):
  rows = [dict(setting=1, model="softmax", num_keys=20, seed=1, final_eval_loss=None, steps=30,
               wall_seconds=1.0, stop_reason="non_finite"),
          dict(setting=1, model="linear-sum", num_keys=40, seed=1, final_eval_loss=0.1, steps=90,
               wall_seconds=1.0, stop_reason="max_steps")]
  path = tmp_path / "table.md"
  retrieval_report.write_markdown(rows, str(path))
  lines = path.read_text().splitlines()
  assert "| softmax | nan (1, 30)‡ |  |" in lines and "| linear-sum |  | 0.1 (1, 90)† |" in lines
