"""The algorithmic tasks' training step per model, all in one run on one machine: where the
recurrent FWPs' step costs against the Delta Net's (results/bench_algorithmic.md). The
formal-languages family too (its `<task>-<model>` names; results/bench_formal_languages.md).

  python -m experiments.studies.bench_algorithmic                          # the CPU config
  python -m experiments.studies.bench_algorithmic --config=configs/algorithmic.py  # the authors'
  python -m experiments.studies.bench_algorithmic --config=configs/formal_languages.py \
      --problem=parity --models=linear-delta,srwm,elstm,lstm,linear-rdn,transformer \
      --markdown=results/bench_formal_languages.md

For each model on --problem, the median seconds of the train loop's own jitted step
(experiments.studies.timing.train_step_seconds: the task's real batches, its loss and the
config's optimizer), tokens per second, and the ratio to the Delta Net's step in the same run.
"""

from __future__ import annotations

import importlib.util

from absl import app, flags

from experiments import results, tasks
from experiments.studies import timing

_CONFIG = flags.DEFINE_string("config", "configs/algorithmic_cpu.py", "Config file.")
_PROBLEM = flags.DEFINE_string("problem", "code5", "Problem (code<n> or listops<d>).")
_MODEL_DEFAULT = ("linear-delta,linear-sum,linear-delta_rnn,linear-rdn,linear-delta_lstm,lstm,"
                  "transformer")
_MODELS = flags.DEFINE_list("models", _MODEL_DEFAULT.split(","),
                            "Models; the first is the baseline.")
_FORMS = flags.DEFINE_list("forms", [], "Override config.model.form (one row per form).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per model (median).")
_MARKDOWN = flags.DEFINE_string("markdown", "results/bench_algorithmic.md", "Output ('' = none).")


def _load(path):
  spec = importlib.util.spec_from_file_location("algorithmic_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(argv):
  del argv
  module = _load(_CONFIG.value)
  machine = timing.machine()
  print(timing.machine_line(machine), flush=True)
  rows = []
  for model in _MODELS.value:
    for form in _FORMS.value or [None]:
      config = module.get_config(f"{_PROBLEM.value}-{model}")
      if form and config.model.architecture != "lstm":
        config.model.form = form
      task = tasks.get(config.task).make(config)
      seconds = timing.train_step_seconds(task, config, _REPEATS.value)
      tokens = config.batch_size * task.train.inputs.shape[1]
      rows.append(dict(model=model, form=config.model.form if model != "lstm" else "scan",
                       seconds=seconds, tokens_per_second=tokens / seconds))
      print(f"{model:20s} {rows[-1]['form']:10s} {seconds * 1e3:8.1f} ms/step "
            f"{tokens / seconds:10.0f} tokens/s", flush=True)
  base = rows[0]["seconds"]
  lines = [timing.machine_line(machine), "",
           f"Config {_CONFIG.value}, problem {_PROBLEM.value}: batch {config.batch_size} × "
           f"{task.train.inputs.shape[1]} tokens (padded), {config.model.num_layers} layers, "
           f"d_model {config.model.d_model}. Median of {_REPEATS.value}+ train steps after "
           f"compilation; ratio = step time / {rows[0]['model']}'s ({rows[0]['form']}), same run.",
           "", "| model | form | ms / step | tokens / s | ratio |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['form']} | {r['seconds'] * 1e3:.1f} | "
                 f"{r['tokens_per_second']:,.0f} | {r['seconds'] / base:.2f} |")
  text = "\n".join(lines) + "\n\nMade by `python -m experiments.studies.bench_algorithmic" + (
      f" --config={_CONFIG.value}" if _CONFIG.value != _CONFIG.default else "") + (
      f" --problem={_PROBLEM.value}" if _PROBLEM.value != _PROBLEM.default else "") + (
      f" --forms={','.join(_FORMS.value)}" if _FORMS.value else "") + (
      f" --models={','.join(_MODELS.value)}" if ','.join(_MODELS.value) != _MODEL_DEFAULT
      else "") + (
      f" --markdown={_MARKDOWN.value}" if _MARKDOWN.value != _MARKDOWN.default else "") + (
      f"` at {results.commit()}.\n")
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, "w") as f:
      f.write(text)
    print(f"Wrote {_MARKDOWN.value}")


if __name__ == "__main__":
  app.run(main)
