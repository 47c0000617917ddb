"""Every bad input we could think of, tried as a careless user or a flaky machine would: each ends
in a clear error that names the problem (and the fix), raised before anything is compiled, or is
recovered from with no data lost. One table per family."""

import os
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from configs import associative_recall, language_model
from experiments import train
from fwp import ops
from tests.helpers import read_metrics, tiny_retrieval_config as _tiny_config


def _retrieval(**fields):
  c = associative_recall.get_config("dpfp1-delta")
  for key, value in fields.items():
    c[key] = value
  return c


def _model(curve="dpfp1-delta", **fields):
  c = associative_recall.get_config(curve)
  for key, value in fields.items():
    c.model[key] = value
  return c


def _lm(**fields):
  c = language_model.get_config("linear-delta")
  for key, value in fields.items():
    target, _, name = key.rpartition(".")
    (c.model if target else c)[name] = value
  return c


CONFIG_CASES = [
    # (config, message) — train.validate is what launch.py runs at flag parsing.
    (_retrieval(setting=3), "setting must be 1 or 2"),
    (_retrieval(num_keys=1), "num_keys must be an integer >= 2"),
    (_retrieval(num_keys=True), "num_keys must be an integer >= 2"),
    (_retrieval(batch_size=0), "batch_size must be a positive integer"),
    (_retrieval(batch_size=-32), "batch_size must be a positive integer"),
    (_retrieval(max_steps=0), "max_steps must be a positive integer"),
    (_retrieval(eval_every=0), "eval_every must be a positive integer"),
    (_retrieval(patience=0), "patience must be a positive integer"),
    (_retrieval(checkpoint_every=-1), "checkpoint_every must be a positive integer"),
    (_retrieval(eval_sequences=0), "eval_sequences must be a positive integer"),
    (_retrieval(learning_rate=0.0), "learning_rate must be a finite number > 0"),
    (_retrieval(learning_rate=float("nan")), "learning_rate must be a finite number > 0"),
    (_retrieval(learning_rate=float("inf")), "learning_rate must be a finite number > 0"),
    (_retrieval(num_keys=1_000_000_000), "beyond what this model can hold in memory"),
    (_model(d=0), "config.model.d must be a positive integer"),
    (_retrieval(lr_schedule="step"), "valid choices: constant, cosine"),
    (_retrieval(warmup_steps=-5), "warmup_steps must be an integer >= 0"),
    (_retrieval(grad_clip=-1.0), "grad_clip must be >= 0"),
    (_retrieval(mesh_shape=(0,)), "mesh_shape must be (N,)"),
    (_retrieval(mesh_shape=(2, 2)), "mesh_shape must be (N,)"),
    (_retrieval(task="speech"), "valid choices: associative_recall, language_model"),
    (_model(form="fast"), "valid choices: recurrent, parallel, chunked, auto"),
    (_model(chunk_size="0"), "chunk_size must be a positive integer or 'auto', got '0'"),
    (_model(chunk_size="big"), "chunk_size must be a positive integer or 'auto', got 'big'"),
    (_model(feature_map="relu"), "Unknown feature map 'relu'"),
    (_model(update_rule="hebb"), "Unknown update rule 'hebb'"),
    (_model(normalization="softmax"), "Unknown normalisation 'softmax'"),
    (_model(nu=0), "dpfp needs an integer nu >= 1"),
    (_model("favor64-sum", num_features=0), "favor_plus needs num_features >= 1"),
    (_model("tanh-fwm", normalization="sum"), "needs a positive feature map"),
    (_model("dpfp1-fwm", form="parallel"), "nonlinear in W"),
    (_lm(context=0), "context must be a positive integer"),
    (_lm(sliding_stride=-1), "sliding_stride must be an integer in 0..context"),
    (_lm(corpus="enwik8"), "Unknown corpus 'enwik8'"),
    (_lm(level="word"), "no 'word' level"),
    (_lm(**{"model.dropout": 1.0}), "dropout must be in [0, 1)"),
    (_lm(**{"model.num_layers": 0}), "num_layers must be a positive integer"),
    (_lm(**{"model.positional": "rotary"}), "valid choices: sinusoidal, none"),
    (_lm(**{"model.dtype": "float16"}), "float32 or bfloat16"),
    (_lm(**{"model.adaptive_cutoffs": (5, 3)}), "increasing positive integers"),
    (_lm(corpus="wikitext103", level="word"), "needs config.data_dir"),
    (_lm(**{"model.accumulate": "half"}), "Unknown accumulate 'half'"),
    (_lm(**{"model.recurrence": "rdn", "model.accumulate": "input"}),
     "recurrent FWPs (fwp.rfwp) always accumulate in float32"),
    (_lm(carry_state=True), "model.positional='sinusoidal' cannot continue"),
    (_lm(carry_state=True, **{"model.update_rule": "softmax", "model.positional": "none"}),
     "'softmax' attention has none"),
]


@pytest.mark.fast
@pytest.mark.parametrize("config,message", CONFIG_CASES,
                         ids=[m[:40] for _, m in CONFIG_CASES])
def test_bad_config_fails_before_compiling(config, message):
  with pytest.raises(ValueError) as error:
    train.validate(config)
  assert message in str(error.value), str(error.value)


def _x(shape, dtype=jnp.float32):
  return jnp.ones(shape, dtype)


OPS_CASES = [
    # (rule, q, k, v, beta, kwargs, message)
    ("sum", _x((1, 3, 1, 4), jnp.int32), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), None, {},
     "q must be a floating-point array"),
    ("delta", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2), bool), _x((1, 3, 1)), {},
     "v must be a floating-point array"),
    ("delta", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), _x((1, 3, 1), jnp.int8), {},
     "beta must be a floating-point array"),
    ("sum", _x((1, 0, 1, 4)), _x((1, 0, 1, 4)), _x((1, 0, 1, 2)), None, {},
     "An empty sequence (T = 0)"),
    ("sum", _x((0, 3, 1, 4)), _x((0, 3, 1, 4)), _x((0, 3, 1, 2)), None, {},
     "at least one batch row"),
    ("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 5)), _x((1, 3, 1, 2)), None, {},
     "k must have q's shape"),
    ("sum", _x((1, 3, 4)), _x((1, 3, 4)), _x((1, 3, 2)), None, {},
     "k must be [batch, time, heads, d_key]"),
    ("delta", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), _x((1, 3)), {},
     "beta must be [batch, time, heads]"),
    ("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), None,
     dict(initial_state=_x((1, 1, 4, 2))), "initial_state must be [batch, heads, d_value, d_key]"),
    ("hebb", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), None, {},
     "Unknown update rule 'hebb'"),
    ("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), None, dict(form="fast"),
     "Unknown form 'fast'"),
    ("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), None,
     dict(form="chunked", chunk_size=0), "chunk_size"),
    ("fwm", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), _x((1, 3, 1)),
     dict(form="chunked"), "nonlinear in W"),
    ("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), _x((1, 3, 1, 2)), None,
     dict(accumulate="bfloat16"), "Unknown accumulate 'bfloat16'; valid choices: float32, input"),
]


@pytest.mark.fast
@pytest.mark.parametrize("step,message", [
    (lambda: ops.delta_rule_step(_x((2, 2, 8, 8)), _x((2, 2, 8)), _x((2, 2, 8)), _x((2, 2, 8)),
                                 _x((2, 2, 1))), "beta must have shape (2, 2)"),
    (lambda: ops.sum_rule_step(_x((2, 2, 8, 8)), _x((2, 2, 8)), _x((2, 2, 7)), _x((2, 2, 8))),
     "k must have shape (2, 2, 8)"),
    (lambda: ops.fwm_rule_step(_x((2, 8, 8)), None, _x((2, 8)), _x((2, 8)), _x((2,))),
     "w must be [batch, heads, d_value, d_key]"),
])
def test_bad_single_step_shapes_are_named(step, message):
  """The streaming steps check their shapes too (a [B, H, 1] β would silently broadcast)."""
  with pytest.raises(ValueError, match=re.escape(message)):
    step()


@pytest.mark.fast
@pytest.mark.parametrize("rule,q,k,v,beta,kwargs,message", OPS_CASES,
                         ids=[c[-1][:40] for c in OPS_CASES])
def test_bad_ops_input_is_named_before_tracing(rule, q, k, v, beta, kwargs, message):
  kwargs = dict(dict(form="recurrent"), **kwargs)
  with pytest.raises(ValueError) as error:
    ops.apply_rule(rule, q, k, v, beta, **kwargs)
  assert message in str(error.value), str(error.value)


def test_low_precision_inputs_are_accepted_and_nan_propagates_without_a_crash():
  """float16/bfloat16 are valid (the state in float32 unless accumulate="input"); NaN is a
  value, which no static check can see: it flows to the output, where the train loop's
  non-finite check stops the run."""
  for dtype in (jnp.float16, jnp.bfloat16):
    y, w = ops.apply_rule("sum", _x((1, 3, 1, 4), dtype), _x((1, 3, 1, 4), dtype),
                          _x((1, 3, 1, 2), dtype), form="chunked", chunk_size=np.int64(2))
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    assert w.dtype == jnp.float32          # the memory accumulates in float32
    y, w = ops.apply_rule("delta", _x((1, 3, 1, 4), dtype), _x((1, 3, 1, 4), dtype),
                          _x((1, 3, 1, 2), dtype), _x((1, 3, 1), dtype), form="chunked",
                          chunk_size=2, accumulate="input")
    assert y.dtype == dtype and w.dtype == dtype   # unless asked to stay in the input dtype
  # Mixed precisions compute in their common type, the state at least float32.
  y, w = ops.apply_rule("delta", _x((1, 3, 1, 4)), _x((1, 3, 1, 4), jnp.float16),
                        _x((1, 3, 1, 2)), _x((1, 3, 1)), form="recurrent",
                        initial_state=_x((1, 1, 2, 4), jnp.bfloat16))
  assert y.dtype == jnp.float32 and w.dtype == jnp.float32
  v = _x((1, 3, 1, 2)).at[0, 1].set(jnp.nan)
  y, _ = ops.apply_rule("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), v, form="recurrent")
  assert not np.isnan(y[0, 0]).any() and np.isnan(y[0, 1:]).all()   # only later steps
  # The matrix forms too: a non-finite input never reaches an earlier output (tests/fwp/test_ops.py).
  y, _ = ops.apply_rule("sum", _x((1, 3, 1, 4)), _x((1, 3, 1, 4)), v, form="parallel")
  assert not np.isnan(y[0, 0]).any() and np.isnan(y[0, 1:]).all()


@pytest.fixture(scope="module")
def run_of_40_steps(tmp_path_factory):
  """One run of 40 steps (evals at 20, 40), copied by each damage case."""
  workdir = str(tmp_path_factory.mktemp("run40") / "run")
  train.train(_tiny_config(max_steps=40), workdir)
  return workdir


def _break_workdir(workdir, how):
  """Damages a copy of the 40-step run as `how` says."""
  os.remove(os.path.join(workdir, "summary.json"))     # as if it had been killed at the end
  checkpoints = os.path.join(workdir, "checkpoints")
  if how == "truncated_metrics":
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write('{"step": 60, "train_lo')                  # a crash in the middle of a write
  elif how == "garbage_metrics_line":
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write("not json at all\n")
  elif how == "half_deleted_checkpoint":
    latest = os.path.join(checkpoints, "40")
    for root, _, files in os.walk(latest):
      for name in files[: len(files) // 2 + 1]:
        os.remove(os.path.join(root, name))
  elif how == "deleted_checkpoint_dir":
    shutil.rmtree(os.path.join(checkpoints, "40"))
  elif how == "leftover_tmp_save":                      # SIGKILL during a save
    os.makedirs(os.path.join(checkpoints, "60.orbax-checkpoint-tmp-1234567"))


@pytest.mark.parametrize("how", ["truncated_metrics", "garbage_metrics_line",
                                 "half_deleted_checkpoint", "deleted_checkpoint_dir",
                                 "leftover_tmp_save"])
def test_a_damaged_workdir_resumes_with_nothing_lost(tmp_path, how, run_of_40_steps):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_of_40_steps, workdir)
  _break_workdir(workdir, how)
  summary = train.train(_tiny_config(max_steps=60), workdir)
  assert summary["steps"] == 60
  # Resumed from step 40 (or from 20 when 40 was damaged): each eval exactly once.
  assert [m["step"] for m in read_metrics(workdir)] == [20, 40, 60]


@pytest.mark.parametrize("setup,message", [
    ("workdir_is_a_file", "is a file, not a directory"),
    ("parent_is_a_file", "cannot be written"),
    ("proc_filesystem", "cannot be written"),
    ("corrupt_config", "config.json (the run's config) is not valid JSON"),
    ("corrupt_summary", "summary.json (the finished run's summary) is not valid JSON"),
])
def test_unusable_workdir_is_named(tmp_path, setup, message, run_of_40_steps):
  workdir = str(tmp_path / "run")
  if setup == "workdir_is_a_file":
    open(workdir, "w").close()
  elif setup == "parent_is_a_file":
    open(tmp_path / "file", "w").close()
    workdir = str(tmp_path / "file" / "run")
  elif setup == "proc_filesystem":
    workdir = "/proc/fwp-run"
  else:
    shutil.copytree(run_of_40_steps, workdir)
    name = "config.json" if setup == "corrupt_config" else "summary.json"
    with open(os.path.join(workdir, name), "w") as f:
      f.write('{"seed": ')
  with pytest.raises(ValueError) as error:
    train.train(_tiny_config(max_steps=40), workdir)
  assert message in str(error.value), str(error.value)


def test_a_checkpoint_of_another_model_stops_the_run_and_changes_nothing(tmp_path,
                                                                         run_of_40_steps):
  """Not damage: a run whose config.json is gone, relaunched with another S, is refused with the
  saved and requested shapes named; checkpoints, metrics and summary stay as they were."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run_of_40_steps, workdir)
  os.remove(os.path.join(workdir, "config.json"))
  before = {name: open(os.path.join(workdir, name)).read()
            for name in ("metrics.jsonl", "summary.json")}
  checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(ValueError, match=r"holds a different model .*saved \(6, 13\) vs requested "
                                       r"\(8, 17\)"):
    train.train(_tiny_config(num_keys=8, max_steps=60), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  for name, text in before.items():
    assert open(os.path.join(workdir, name)).read() == text
  # The config that made it resumes it.
  assert train.train(_tiny_config(max_steps=60), workdir)["steps"] == 60
