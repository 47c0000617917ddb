"""Benchmarks: every rule × form × T × chunk size, and the paper's training step per curve and S.

  python -m experiments.studies.bench --out=results/bench.json --markdown=results/bench.md  # default grid
  python -m experiments.studies.bench --lengths=256 --chunk_sizes=64 --steps=linear-sum:100 --repeats=2
  python -m experiments.studies.bench --rules= --steps=linear-sum:100,dpfp1-delta:100 \
      --authors_code=/tmp/fwt/synthetic --authors_python=/tmp/torchenv/bin/python

With --authors_code (a checkout of ischlag/fast-weight-transformers' synthetic/ directory), each
training step that the authors' code has is also timed in their PyTorch code, right after fwp's,
in a subprocess of --authors_python (experiments/studies/authors_synthetic.py says how to get torch; it
is not a requirement), and the table gets their time and the speed-up: two timings from one run
on one machine.

Times are medians over `repeats` calls after a warm-up call (compilation excluded), on inputs
drawn at random (not zeros). FLOPs count the recurrence's own work, 6·B·H·T·d_key·d_value forward
and 18·B·H·T·d_key·d_value forward + backward (the same count for every form, so GFLOP/s
compares forms by the useful work they do). The matmul rate is measured in the same run, so the
fraction of it is comparable across machines. Peak memory is XLA's compiled estimate (arguments +
outputs + temporaries).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys

from absl import app, flags

from configs import associative_recall
from experiments import hostmem, results
from experiments.studies import timing
from experiments.tasks import associative_recall as retrieval_task

_RULES = flags.DEFINE_list("rules", ["sum", "delta"], "Rules to time.")
_FORMS = flags.DEFINE_list("forms", ["recurrent", "parallel", "chunked"], "Forms to time.")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "4096", "16384"], "Sequence lengths T.")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["32", "64", "128"], "Chunk sizes (chunked form).")
_SHAPE = flags.DEFINE_list("shape", ["4", "4", "64", "64"], "batch, heads, d_key, d_value.")
_SKIP = flags.DEFINE_list("skip", [], "rule:form pairs not to time, e.g. delta:parallel.")
_MAX_PARALLEL_T = flags.DEFINE_integer("max_parallel_length", 4096,
                                       "Skip the O(T²) parallel form above this T.")
_STEPS = flags.DEFINE_list("steps", ["linear-sum:100", "dpfp1-sum:200", "linear-sum:600",
                                     "softmax:200", "dpfp1-delta:100", "dpfp1-delta:200"],
                           "Training steps to time, as curve:S or curve:S:form.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per case (median reported).")
_AUTHORS_CODE = flags.DEFINE_string("authors_code", None, "The authors' synthetic/ directory "
                                    "(ischlag/fast-weight-transformers): time their training "
                                    "step beside fwp's.")
_AUTHORS_PYTHON = flags.DEFINE_string("authors_python", sys.executable, "A Python with torch, to "
                                      "run the authors' code.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Write the tables as Markdown here.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 1, "Also time each training step as "
                                      "the loop runs it with config.steps_per_call=K (K steps "
                                      "in one compiled call); 1: one step a call only.",
                                      lower_bound=1)
_HOST_MEMORY = flags.DEFINE_enum("host_memory", "keep", ["keep", "system", "both"],
                                  "The host allocator (experiments/hostmem.py) for every "
                                  "timing; both: each training step timed under system and "
                                  "keep, interleaved.")
_GUARD = timing.guard_flag(flags)
_STRICT = flags.DEFINE_bool("strict", False, "Exit 1 (after writing) when any row was measured "
                            "on a busy machine (timing.Quiet: another runnable thread, or the "
                            "matmul rate down more than 15 %).")


def time_train_step(curve, num_keys, repeats, form=None):
  config = associative_recall.get_config(curve)
  config.num_keys = num_keys
  if form:
    config.model.form = form
  if _HOST_MEMORY.value != "both":
    config.host_memory = _HOST_MEMORY.value     # train_step_seconds sets the config's allocator
  task = retrieval_task.make(config)
  row = dict(kind="train_step", curve=curve, num_keys=num_keys, form=config.model.form,
             setting=config.setting, batch=config.batch_size, config=config)
  k = _STEPS_PER_CALL.value
  if _HOST_MEMORY.value == "both":
    # glibc's allocator against the loop's default, interleaved in rounds: each call sets its
    # allocator first, so every round times both as a process that uses it throughout would.
    calls = []
    for mode in ("system", "keep"):
      call = timing.train_step_call(task, config)
      calls.append(lambda call=call, mode=mode: (hostmem.use(mode), call())[1])
    system, keep = timing.interleaved_seconds(calls, repeats)
    return dict(row, ms=1e3 * keep, ms_system=1e3 * system)
  if k == 1:
    return dict(row, ms=1e3 * timing.train_step_seconds(task, config, repeats))
  # One step a call against K a call, interleaved in rounds (timing.interleaved_seconds).
  one, many = timing.interleaved_seconds([timing.train_step_call(task, config),
                                          timing.train_step_call(task, config, steps_per_call=k)],
                                         repeats)
  return dict(row, ms=1e3 * one, steps_per_call=k, ms_per_call_k=1e3 * many / k)


AUTHORS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "authors_synthetic.py")
AUTHORS_PHI = {"elu_plus_one": "linear", "tanh": "tanh", "dpfp": "dpfp", "favor_plus": "favor"}
AUTHORS_RULE = {"sum": "sum", "delta": "ours", "fwm": "fwm"}


def authors_case(config) -> str | None:
  """The authors' attention:arg:update_rule:S:replace for a curve, or None where their code has
  no such model (the 1991 FWP's identity φ, additive attention, recurrent FWPs)."""
  m = config.model
  replace = int(config.setting == 2)
  if m.update_rule == "softmax":
    return f"softmax:0:sum:{config.num_keys}:{replace}"
  if (m.feature_map not in AUTHORS_PHI or m.update_rule not in AUTHORS_RULE
      or m.recurrence != "none"):
    return None
  arg = {"dpfp": m.nu, "favor_plus": m.num_features}.get(m.feature_map, 0)
  return (f"{AUTHORS_PHI[m.feature_map]}:{arg}:{AUTHORS_RULE[m.update_rule]}:{config.num_keys}:"
          f"{replace}")


def check_authors_code() -> None:
  """Before anything is timed: the directory is theirs and the Python has torch."""
  code = _AUTHORS_CODE.value
  if not os.path.isfile(os.path.join(code, "linearAttention.py")):
    raise app.UsageError(f"--authors_code={code!r} is not the synthetic/ directory of "
                         f"ischlag/fast-weight-transformers (no linearAttention.py there).")
  probe = subprocess.run([_AUTHORS_PYTHON.value, "-c", "import torch"], capture_output=True)
  if probe.returncode != 0:
    raise app.UsageError(f"--authors_python={_AUTHORS_PYTHON.value!r} cannot import torch; "
                         f"install it there (see experiments/studies/authors_synthetic.py).")


def time_authors_step(case: str, repeats: int) -> dict:
  result = subprocess.run([_AUTHORS_PYTHON.value, AUTHORS_SCRIPT, f"--code={_AUTHORS_CODE.value}",
                           f"--case={case}", f"--repeats={max(repeats, 3)}"],
                          capture_output=True, text=True, timeout=3600)
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode != 0 or not lines:
    raise RuntimeError(f"The authors' code failed on {case}: {result.stderr[-2000:]}")
  return json.loads(lines[-1])


def markdown(machine, rows, shape, quiet_line: str = "") -> str:
  b, h, dk, dv = shape
  lines = [results.made_by("experiments.studies.bench"), "", timing.machine_line(machine)]
  lines += ["", quiet_line] if quiet_line else []
  mark = lambda r: " ‡" if r.get("busy") else ""
  if any(r["kind"] == "op" for r in rows):
    lines += ["", f"Ops: batch {b}, heads {h}, d_key {dk}, d_value {dv}; GFLOP/s counts "
              f"18·B·H·T·d_key·d_value for forward + backward; peak MB is XLA's compiled "
              f"estimate.", "", "| rule | form | T | chunk | fwd ms | fwd+bwd ms | GFLOP/s | "
              "% of matmul | peak MB |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] == "op":
      lines.append(f"| {r['rule']}{mark(r)} | {r['form']} | {r['T']} | {r['chunk_size'] or '-'} | "
                   f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_gflops']:.1f} | "
                   f"{100 * r['fwd_bwd_fraction_of_matmul']:.1f}% | {r['fwd_bwd_peak_mb']:.1f} |")
  steps = [r for r in rows if r["kind"] == "train_step"]
  k = next((r["steps_per_call"] for r in steps if "steps_per_call" in r), None)
  k_head, k_rule = (f" fwp ms/step, {k} a call |", "---|") if k else ("", "")
  k_cell = lambda r: f" {r['ms_per_call_k']:.1f} |" if k else ""
  if any("ms_system" in r for r in steps):   # --host_memory=both: the glibc column first
    k_head, k_rule = " ms/step, host_memory=system | system / keep |", "---|---|"
    k_cell = lambda r: f" {r['ms_system']:.1f} | {r['ms_system'] / r['ms']:.2f}× |"
  if steps and any("authors_ms" in r for r in steps):
    torch = next(r["authors_torch"] for r in steps if "authors_ms" in r)
    lines += ["", f"Training steps (the paper's retrieval model, forward + backward + Adam), fwp "
              f"and the authors' PyTorch code (torch {torch}, ischlag/fast-weight-transformers "
              f"synthetic/; their timer excludes drawing the batch, fwp's step includes it), "
              f"timed one after the other in this run:", "",
              f"| curve | setting | S | batch | fwp form | fwp ms/step |{k_head} authors' "
              f"ms/step | speed-up |" + (f" speed-up, {k} a call |" if k else ""),
              "|---|---|---|---|---|---|---|---|" + 2 * k_rule]
    for r in steps:
      theirs = (f"{r['authors_ms']:.1f} | {r['authors_ms'] / r['ms']:.1f}×"
                if "authors_ms" in r else "– | –")
      if k:
        theirs += (f" | {r['authors_ms'] / r['ms_per_call_k']:.1f}×" if "authors_ms" in r
                   else " | –")
      lines.append(f"| {r['curve']}{mark(r)} | {r['setting']} | {r['num_keys']} | {r['batch']} | "
                   f"{r['form']} | {r['ms']:.1f} |{k_cell(r)} {theirs} |")
  elif steps:
    lines += ["", "Training steps (the paper's retrieval model, batch 32, forward + backward + "
              "Adam):", "", f"| curve | setting | S | form | ms/step |{k_head}",
              "|---|---|---|---|---|" + k_rule]
    lines += [f"| {r['curve']}{mark(r)} | {r['setting']} | {r['num_keys']} | {r['form']} | "
              f"{r['ms']:.1f} |{k_cell(r)}" for r in steps]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  faulthandler.register(signal.SIGUSR1)   # `kill -USR1 PID` prints every thread's stack
  if _AUTHORS_CODE.value:
    check_authors_code()
  if _HOST_MEMORY.value == "both" and _STEPS_PER_CALL.value > 1:
    raise app.UsageError("--host_memory=both and --steps_per_call > 1 are two A/B studies; "
                         "run one at a time.")
  hostmem.use("keep" if _HOST_MEMORY.value == "both" else _HOST_MEMORY.value)
  shape = [int(x) for x in _SHAPE.value]
  machine = timing.machine(repeats=_REPEATS.value)
  peak = machine["matmul_gflops"]
  print(f"machine: {machine}")
  rows, quiet = [], timing.Quiet(matmul_size=_GUARD.value)
  write = lambda: _write(machine, rows, shape, quiet.line(rows))
  header = (f"{'rule':6} {'form':9} {'T':>6} {'chunk':>5} {'fwd ms':>9} {'fwd+bwd ms':>11} "
            f"{'GFLOP/s':>8} {'% matmul':>8} {'peak MB':>8}")
  print(header)
  for rule in _RULES.value:
    for form in _FORMS.value:
      for t in (int(x) for x in _LENGTHS.value):
        if (form == "parallel" and t > _MAX_PARALLEL_T.value) or f"{rule}:{form}" in _SKIP.value:
          continue
        chunks = [int(c) for c in _CHUNKS.value] if form == "chunked" else [64]
        for chunk in chunks:
          row = quiet.timed(lambda: timing.time_op(rule, form, t, chunk, shape, _REPEATS.value,
                                                   peak))
          rows.append(row)
          write()
          print(f"{rule:6} {form:9} {t:>6} {str(row['chunk_size'] or '-'):>5} "
                f"{row['fwd_ms']:>9.2f} {row['fwd_bwd_ms']:>11.2f} "
                f"{row['fwd_bwd_gflops']:>8.1f} {100 * row['fwd_bwd_fraction_of_matmul']:>7.1f}% "
                f"{row['fwd_bwd_peak_mb']:>8.1f}", flush=True)
  print(f"\n{'train step':24} {'form':9} {'ms':>8}")
  for spec in _STEPS.value:
    curve, num_keys, *form = spec.split(":")
    before = quiet.recent()
    row = time_train_step(curve, int(num_keys), _REPEATS.value, *form)
    theirs = ""
    case = authors_case(row.pop("config")) if _AUTHORS_CODE.value else None
    if case:
      authors = time_authors_step(case, _REPEATS.value)
      row.update(authors_case=case, authors_ms=authors["ms"], authors_torch=authors["torch"],
                 authors_threads=authors["threads"])
      theirs = f"  authors {authors['ms']:.1f} ms ({authors['ms'] / row['ms']:.1f}×)"
    row.pop("config", None)
    row.update(quiet.fields(before, quiet.measure()))
    rows.append(row)
    write()
    print(f"{curve + ' S=' + num_keys:24} {row['form']:9} {row['ms']:>8.1f}{theirs}", flush=True)
  for path in (_OUT.value, _MARKDOWN.value):
    if path:
      print(f"wrote {path}")
  if rows:
    print(quiet.line(rows))
  if any(r["busy"] for r in rows):
    print("Warning: rows measured on a busy machine (marked ‡); rerun them with the cores to "
          "themselves.", file=sys.stderr)
    if _STRICT.value:
      raise SystemExit(1)


def _write(machine, rows, shape, quiet_line=""):
  """Rewrites the outputs after every row, so a run that is stopped keeps what it measured."""
  if _MARKDOWN.value:
    results.write_text(_MARKDOWN.value, markdown(machine, rows, shape, quiet_line))
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(dict(machine=machine, rows=rows), f, indent=2)


if __name__ == "__main__":
  app.run(main)
