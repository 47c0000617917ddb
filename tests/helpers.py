"""Shared test helpers (test files never import each other): float64 scope, relative closeness,
random inputs, WikiText-format files, tiny configs, and running launch.py end to end (a run, its
metrics, a SIGKILL and relaunch compared with a run left alone)."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np


def x64():
  """Context manager turning on float64 (the API moved between jax versions)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  return jax.experimental.enable_x64()  # pragma: no cover - older jax


def float64(module):
  """`module` with every floating variable cast to float64 (parameters cast after init, so
  models built from one seed share them whatever the form)."""
  from flax import nnx
  graphdef, state = nnx.split(module)
  state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                       else a, state)
  return nnx.merge(graphdef, state)


def assert_rel_close(actual, expected, rtol, name=""):
  """Each leaf: max |a − e| ≤ rtol · max |e|. Kept for float32 and low-precision comparisons
  only (float64 proofs use chex.assert_trees_all_close): chex's tolerance is elementwise, one
  atol for every leaf, and float32 gradients mix leaves of very different scales with entries
  near zero."""
  def check(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    chex.assert_equal_shape([a, e])
    scale = max(np.max(np.abs(e)), 1e-30)
    err = np.max(np.abs(a - e)) / scale
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"
  jax.tree.map(check, actual, expected)


def random_inputs(seed, b=2, t=12, h=2, d_key=5, d_value=3, dtype=jnp.float64):
  """Feature-mapped-like inputs: positive, sum-normalised keys (the delta rule is stable for
  β‖k‖² ≤ 2), queries of either sign, β in (0, 1), a non-zero initial state."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, h, d_key))
  k = np.exp(rng.normal(size=(b, t, h, d_key)))
  k = k / np.linalg.norm(k, axis=-1, keepdims=True)
  v = rng.normal(size=(b, t, h, d_value))
  beta = 1 / (1 + np.exp(-rng.normal(size=(b, t, h))))
  w0 = 0.3 * rng.normal(size=(b, h, d_value, d_key))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v, beta, w0))


# WikiText-103's format: ' = Title = ' lines, space-separated tokens, <unk>, @-@.
TRAIN = """ 
 = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 : <unk> Chronicles is a tactical role @-@ playing game . 
 The game began development in 2010 , carrying over a large portion of the work . 
 
 = = Gameplay = = 
 
 The game is a tactical game . 
"""
VALID = " The game began in 2010 . \n \n = = Plot = = \n"
TEST = " The game is a large portion of the work . \n"


def write_wikitext(directory, train=TRAIN, valid=VALID, test=TEST):
  os.makedirs(directory, exist_ok=True)
  for split, text in (("train", train), ("valid", valid), ("test", test)):
    with open(os.path.join(directory, f"wiki.{split}.tokens"), "w", encoding="utf-8") as f:
      f.write(text)
  return str(directory)


def tiny_retrieval_config(**overrides):
  """A retrieval run of a few seconds: DPFP-1 delta, S = 6, 60 steps, evals and checkpoints
  every 20."""
  from configs import associative_recall
  c = associative_recall.get_config("dpfp1-delta")
  c.num_keys, c.max_steps, c.eval_every, c.checkpoint_every = 6, 60, 20, 20
  c.update(overrides)
  return c


def tiny_lm_config(model: str = "linear-delta", **overrides):
  """A language model small enough to train a few steps in a test (pydoc bytes, 1 layer)."""
  from configs import language_model
  c = language_model.get_config(model)
  m = c.model
  m.num_layers, m.d_model, m.num_heads, m.d_head, m.d_ff = 1, 16, 2, 8, 32
  c.context, c.batch_size, c.warmup_steps, c.eval_batch_size, c.sliding_stride = 16, 4, 0, 64, 0
  c.max_steps, c.eval_every, c.checkpoint_every = 4, 2, 2
  for key, value in overrides.items():
    target, _, name = key.rpartition("__")
    (c.model if target else c)[name] = value
  return c


# ---------------------------------------------------------------------------------------------
# launch.py end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/associative_recall.py"


def launch(*args, timeout=600):
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def launch_each(arg_lists, timeout=600):
  """{tuple(args): result} for each argument list, as `launch` would return it (returncode,
  stderr), all run by tests/launch_many.py in one process: for cases that fail at parsing. A
  list that starts with "-m", MODULE runs `python -m MODULE` with the rest."""
  import types
  result = subprocess.run([sys.executable, os.path.join("tests", "launch_many.py")], cwd=ROOT,
                          input=json.dumps([list(a) for a in arg_lists]), capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return {tuple(a): types.SimpleNamespace(**r)
          for a, r in zip(arg_lists, json.loads(result.stdout))}


def start_launch(workdir, args):
  return subprocess.Popen([sys.executable, "launch.py", *args, f"--workdir={workdir}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def wait_for_metrics(workdir, lines, proc, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path) and sum(1 for _ in open(path)) >= lines:
      return
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.05)
  raise AssertionError("the run did not make progress")


def final_params(workdir):
  from experiments import checkpoint
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), 2)
  state = mngr.restore(mngr.latest_step())
  mngr.close()
  return (jax.tree.leaves(state["params"]) + jax.tree.leaves(state["opt_state"]) +
          jax.tree.leaves(state.get("carry")))


def strip_timing(metrics):
  from experiments import train
  return [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in metrics]


def sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path, args, lines=3):
  """Kills a run after `lines` evals, relaunches it, and compares metrics and final state with a
  run left alone: bitwise (timing fields aside). Returns the run left alone's workdir."""
  alone, killed = tmp_path / "alone", tmp_path / "killed"
  assert launch(*args, f"--workdir={alone}").returncode == 0
  proc = start_launch(killed, args)
  wait_for_metrics(killed, lines, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not (killed / "summary.json").exists()
  resumed = launch(*args, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from step" in resumed.stdout
  assert strip_timing(read_metrics(alone)) == strip_timing(read_metrics(killed))
  for a, b in zip(final_params(alone), final_params(killed)):
    np.testing.assert_array_equal(a, b)
  return alone


def device_env(devices, extra=""):
  """The environment for a process on `devices` simulated CPU devices: this one's, with the
  device count (and `extra`) added to the XLA flags the suite runs under (tests/conftest.py)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, XLA_FLAGS=f"{flags} {extra}".strip())


def metrics_on_devices(tmp_path, args, counts=(4, 1)):
  """{device count: the run's metrics} of launch.py `args` on that many simulated CPU devices
  (a data mesh over all of them), each run checked to finish on that mesh."""
  metrics = {}
  for devices in counts:
    env = device_env(devices)
    workdir = tmp_path / str(devices)
    result = subprocess.run([sys.executable, "launch.py", *args, f"--workdir={workdir}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Mesh: {devices} cpu device(s)" in result.stdout
    metrics[devices] = read_metrics(workdir)
  return metrics


# A toy English→German lexicon: sentences translate word by word, so a tiny model learns them.
LEXICON = {"the": "der", "cat": "Katze", "dog": "Hund", "sees": "sieht", "house": "Haus",
           "big": "grosse", "small": "kleine", "red": "rote", "file": "Datei", "opens": "oeffnet",
           "user": "Benutzer", "reads": "liest", "a": "eine", "book": "Buch", "and": "und",
           "now": "jetzt", "old": "alte", "new": "neue", "writes": "schreibt", "name": "Name"}


def write_parallel(directory, sizes=(400, 40, 40), seed=0, prefixes=("train", "valid", "test")):
  """Parallel files <prefix>.en / <prefix>.de of random 3-8 word sentences over LEXICON (the
  WMT14 loader's format); returns the directory."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  words = sorted(LEXICON)
  for prefix, size in zip(prefixes, sizes):
    english = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(size)]
    for lang, lines in (("en", english),
                        ("de", [" ".join(LEXICON[w] for w in s.split()) for s in english])):
      with open(os.path.join(directory, f"{prefix}.{lang}"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
  return str(directory)


def tiny_translation_config(data_dir, model: str = "linear", **overrides):
  """A translation run of seconds on write_parallel's files: 1 + 1 layers, d_model 32, a
  160-piece BPE vocabulary (about a piece a word)."""
  from configs import translation
  c = translation.get_config(model)
  c.corpus, c.data_dir, c.cache_dir = "wmt14", str(data_dir), os.path.join(str(data_dir), "cache")
  c.vocab_size, c.max_length, c.bucket_width, c.max_tokens, c.eval_max_tokens = 160, 32, 8, 512, 1024
  m = c.model
  m.encoder_layers, m.decoder_layers, m.d_model, m.num_heads, m.d_head, m.d_ff = 1, 1, 32, 2, 16, 64
  c.max_steps, c.eval_every, c.checkpoint_every, c.warmup_steps = 20, 10, 10, 5
  c.bleu_sentences, c.max_len_b = 20, 5
  c.update(overrides)
  return c
