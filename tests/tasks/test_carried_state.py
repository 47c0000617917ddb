"""Language models without a context window (config.carry_state, the paper's Table 4): the
carried state computes what one recurrent pass over the whole text computes (float64, 1e-10).

- Training, segment by segment with each stream's fast weights carried: the per-segment losses
  equal one pass over the concatenated segments, and each segment's gradient equals a plain
  token-by-token loop (the model as an RNN) whose state is cut from the graph (stop_gradient) at
  the segment boundaries: truncated backpropagation, as the authors.
- A stream that starts over starts from the empty memory.
- Carried evaluation: with one stream, one recurrent pass over the whole split; with several,
  one pass per stream (batches.stream_bounds), every target scored once.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tasks
from experiments.tasks.language_model import batches
from tests.helpers import tiny_lm_config, write_wikitext, x64, float64

CONTEXT, BATCH = 4, 2
# A fast weight model of each kind whose state is carried: the delta rule (chunked form), the
# sum rule with its attention normaliser (z carried too; parallel form), a Delta RNN (its RNN
# state carried), an RDN (a scan whose fast weights are its recurrent state).
MODELS = [("linear-delta", "chunked"), ("linear-sum", "parallel"),
          ("linear-delta_rnn", "chunked"), ("linear-rdn", "recurrent")]


def _task(tmp_path, model="linear-delta", form="chunked", **overrides):
  config = tiny_lm_config(model, corpus="wikitext103", level="word",
                          data_dir=write_wikitext(tmp_path / "wt"), cache_dir=str(tmp_path / "c"),
                          context=CONTEXT, batch_size=BATCH, carry_state=True,
                          model__positional="relative" if model.startswith("txl") else "none",
                          model__dropout=0.0, model__form=form,
                          model__chunk_size="3", **overrides)
  tasks.get("language_model").validate(config)
  return tasks.get("language_model").make(config)


def _token_loop(model, inputs, cuts=()):
  """log p [B, T, V] from model.step, token by token (a scan per piece between `cuts`, where the
  state leaves the graph)."""
  state, out = model.init_state(inputs.shape[0], dtype=jnp.float64), []
  bounds = (0,) + tuple(cuts) + (inputs.shape[1],)
  for a, b in zip(bounds[:-1], bounds[1:]):
    if a:
      state = jax.lax.stop_gradient(state)
    state, log_probs = jax.lax.scan(lambda st, tok: model.step(st, tok)[::-1], state,
                                    inputs[:, a:b].T)
    out.append(jnp.moveaxis(log_probs, 0, 1))
  return jnp.concatenate(out, axis=1)


def _nll(log_probs, targets):
  return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("name,form", MODELS)
def test_carried_training_is_one_pass_truncated_at_the_boundariesfloat64(tmp_path, name, form):
  with x64():
    task = _task(tmp_path, name, form)
    model = float64(task.build_model(nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    steps = 3
    assert batches.num_segments(len(task.corpus.splits["train"]), BATCH, CONTEXT) > steps
    stream = task.corpus.splits["train"]
    rows = stream[:len(stream) // BATCH * BATCH].reshape(BATCH, -1)
    inputs = jnp.asarray(rows[:, :steps * CONTEXT])
    targets = jnp.asarray(rows[:, 1:steps * CONTEXT + 1])
    cuts = tuple(range(CONTEXT, steps * CONTEXT, CONTEXT))
    whole = _nll(jax.jit(lambda p: nnx.merge(graphdef, p, rest)(inputs))(params), targets)

    # The reference: one plain token loop over all segments, cut at the boundaries; the
    # gradient of each segment's mean loss (one row of the Jacobian each).
    def looped(p, cut=True):
      log_probs = _token_loop(nnx.merge(graphdef, p, rest), inputs, cuts if cut else ())
      nll = _nll(log_probs, targets)
      return jnp.stack([jnp.mean(nll[:, s * CONTEXT:(s + 1) * CONTEXT]) for s in range(steps)])

    @jax.jit   # the losses, their truncated Jacobian and the untruncated one: one compile
    def reference(p):
      truncated, losses = jax.jacrev(lambda p: (looped(p),) * 2, has_aux=True)(p)
      return losses, truncated, jax.jacrev(lambda p: looped(p, cut=False))(p)

    loop_losses, loop_grads, untruncated = reference(params)

    @jax.jit   # the carried step's loss, its next carry and its gradient: one compile
    def carried(p, batch, step, carry):
      def loss(p):
        value, _, new_carry = task.loss(nnx.merge(graphdef, p, rest), batch, step, carry)
        return value, new_carry
      (value, new_carry), grads = jax.value_and_grad(loss, has_aux=True)(p)
      return value, new_carry, grads

    carry = task.initial_carry(model)
    for step in range(steps):
      batch = task.host_batch(step)
      span = slice(step * CONTEXT, (step + 1) * CONTEXT)
      np.testing.assert_array_equal(batch["inputs"], inputs[:, span])
      loss, new_carry, grads = carried(params, batch, step, carry)
      chex.assert_trees_all_close(loss, jnp.mean(whole[:, span]), rtol=1e-10)
      chex.assert_trees_all_close(loss, loop_losses[step], rtol=1e-10)
      chex.assert_tree_all_finite(grads)
      chex.assert_trees_all_close(grads, jax.tree.map(lambda g: g[step], loop_grads),
                                  rtol=1e-10, atol=1e-12)
      carry = new_carry
    # The gradient really is truncated: without the cuts, the last segment's differs.
    gap = max(float(jnp.max(jnp.abs(a[-1] - b[-1]))) for a, b in
              zip(jax.tree.leaves(loop_grads), jax.tree.leaves(untruncated)))
    assert gap > 1e-8


def test_a_stream_that_starts_over_starts_from_the_empty_memory(tmp_path):
  with x64():
    task = _task(tmp_path)
    model = float64(task.build_model(nnx.Rngs(0)))
    graphdef, weights = nnx.split(model)
    loss = jax.jit(lambda w, batch, step, carry: task.loss(nnx.merge(graphdef, w), batch, step,
                                                           carry))
    n = batches.num_segments(len(task.corpus.splits["train"]), BATCH, CONTEXT)
    carry = task.initial_carry(model)
    for step in range(n):
      _, _, carry = loss(weights, task.host_batch(step), step, carry)
    assert float(jnp.max(jnp.abs(carry[0].w))) > 0     # a memory was written
    wrapped, _, _ = loss(weights, task.host_batch(n), n, carry)
    first, _, _ = loss(weights, task.host_batch(0), 0, task.initial_carry(model))
    np.testing.assert_array_equal(task.host_batch(n)["inputs"], task.host_batch(0)["inputs"])
    assert float(wrapped) == float(first)


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("name,form", [("linear-delta", "chunked"), ("linear-sum", "parallel")])
def test_carried_evaluation_is_one_recurrent_pass_per_streamfloat64(tmp_path, streams, name,
                                                                     form):
  with x64():
    task = _task(tmp_path, name, form, eval_batch_size=streams)
    model = float64(task.build_model(nnx.Rngs(1)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    split = task.corpus.splits["valid"]
    assert len(split) - 1 > CONTEXT * 2 and (len(split) - 1) % CONTEXT    # several, ragged
    carried = task.carried_nll(graphdef, params, rest, "valid")
    bounds = batches.stream_bounds(len(split), streams)
    total = 0.0
    for a, b in zip(bounds[:-1], bounds[1:]):
      piece = jnp.asarray(split[a:b + 1])[None]
      log_probs = _token_loop(model, piece[:, :-1])            # a plain loop, token by token
      total += float(jnp.sum(_nll(log_probs, piece[:, 1:])))
    chex.assert_trees_all_close(carried, total / (len(split) - 1), rtol=1e-10)


@pytest.mark.parametrize("length,streams,context", [(2, 1, 4), (10, 3, 4), (23, 4, 3),
                                                    (9, 8, 5)])
def test_carried_segments_score_every_target_once_in_order(length, streams, context):
  stream = np.arange(length) * 7 % 101
  segments = batches.carried_segments(stream, streams, context)
  inputs = np.concatenate([s["inputs"] for s in segments], axis=1)
  targets = np.concatenate([s["targets"] for s in segments], axis=1)
  mask = np.concatenate([s["mask"] for s in segments], axis=1).astype(bool)
  bounds = batches.stream_bounds(length, streams)
  for b in range(streams):
    a, e = bounds[b], bounds[b + 1]
    np.testing.assert_array_equal(inputs[b][mask[b]], stream[a:e])
    np.testing.assert_array_equal(targets[b][mask[b]], stream[a + 1:e + 1])
    assert mask[b][:e - a].all() and not mask[b][e - a:].any()     # padding only at the end
  assert int(mask.sum()) == length - 1


@pytest.mark.parametrize("name", ["linear-delta", "transformer"])
def test_a_prompt_read_in_segments_continues_as_one_passfloat64(tmp_path, name):
  """experiments.generate --prompt_segment: a prompt of 21 tokens, read CONTEXT = 4 tokens
  at a time with the state carried, gives one pass's continuation (greedy) and log-probs."""
  from experiments import generate
  with x64():
    positional = {} if name == "transformer" else {"model__positional": "none"}
    config = tiny_lm_config(name, **positional)
    model = float64(tasks.get("language_model").make(config).build_model(nnx.Rngs(2)))
    prompt = np.asarray(np.random.default_rng(0).integers(0, 256, 5 * CONTEXT + 1), np.int32)
    one = list(generate.stream(model, prompt, 12, temperature=0))
    pieces = list(generate.stream(model, prompt, 12, temperature=0, prompt_segment=CONTEXT))
    assert one == pieces
    state = model.init_state(1, cache_capacity=len(prompt), dtype=jnp.float64)
    graphdef, weights = nnx.split(model)   # traced: untraced, each call dispatches op by op
    whole = jax.jit(lambda w, x: nnx.merge(graphdef, w)(x))(weights, jnp.asarray(prompt)[None])
    piece = jax.jit(lambda w, x, s: nnx.merge(graphdef, w)(x, state=s, return_state=True))
    parts = []
    for start in range(0, len(prompt), CONTEXT):
      out, state = piece(weights, jnp.asarray(prompt[start:start + CONTEXT])[None], state)
      parts.append(out)
    chex.assert_trees_all_close(jnp.concatenate(parts, axis=1), whole, rtol=1e-10, atol=1e-12)


def test_a_resume_that_flips_carry_state_is_refused_by_name(tmp_path):
  from experiments import train
  config = tiny_lm_config(max_steps=2, eval_every=2, model__positional="none")
  train.train(config, str(tmp_path / "run"))
  config.carry_state, config.max_steps = True, 4
  with pytest.raises(ValueError, match="carry_state: False -> True"):
    train.train(config, str(tmp_path / "run"))


def test_transformer_xl_carries_its_memory_through_trainingfloat64(tmp_path):
  """txl-mem12: with a memory as long as three segments, the carried training losses of those
  segments are one pass's over their concatenation (its memory holds no gradient by design)."""
  with x64():
    task = _task(tmp_path, "txl-mem12", "recurrent")
    assert task.config.carry_state and task.config.model.positional == "relative"
    model = float64(task.build_model(nnx.Rngs(0)))
    stream = task.corpus.splits["train"]
    rows = stream[:len(stream) // BATCH * BATCH].reshape(BATCH, -1)
    inputs, targets = jnp.asarray(rows[:, :3 * CONTEXT]), jnp.asarray(rows[:, 1:3 * CONTEXT + 1])
    graphdef, weights = nnx.split(model)   # traced: untraced, each call dispatches op by op
    whole = _nll(jax.jit(lambda w: nnx.merge(graphdef, w)(inputs))(weights), targets)
    loss_fn = jax.jit(lambda w, *a: task.loss(nnx.merge(graphdef, w), *a))
    carry = task.initial_carry(model)
    for step in range(3):
      loss, _, carry = loss_fn(weights, task.host_batch(step), step, carry)
      chex.assert_trees_all_close(loss, jnp.mean(whole[:, step * CONTEXT:(step + 1) * CONTEXT]),
                                  rtol=1e-10)
    assert task.summary_fields["state_floats"] == 12 * task.config.model.d_model


def test_eval_clamp_len_clamps_the_evaluation_and_not_the_trainingfloat64(tmp_path):
  """The authors train Transformer-XL unclamped and evaluate it with --clamp_len 384:
  model.eval_clamp_len evaluates the trained parameters as a model with clamp_len would, and
  leaves the training loss as it is."""
  with x64():
    one = dict(eval_batch_size=1)       # one stream of the 14-token split: distances up to 15
    plain = _task(tmp_path, "txl-mem12", "recurrent", **one)
    eval_clamped = _task(tmp_path, "txl-mem12", "recurrent", model__eval_clamp_len=2, **one)
    clamped = _task(tmp_path, "txl-mem12", "recurrent", model__clamp_len=2, **one)
    split = lambda task: nnx.split(float64(task.build_model(nnx.Rngs(0))), nnx.Param, ...)
    graphdef, params, rest = split(plain)
    nll = {name: task.carried_nll(g, params, rest, "valid") for name, task, g in (
        ("plain", plain, graphdef), ("eval_clamped", eval_clamped, graphdef),
        ("clamped", clamped, split(clamped)[0]))}
    assert nll["eval_clamped"] == pytest.approx(nll["clamped"], rel=1e-12), nll
    assert abs(nll["eval_clamped"] - nll["plain"]) > 1e-6, nll      # distances up to 15 > 2
    model = nnx.merge(graphdef, params, rest)
    batch, carry = plain.host_batch(0), plain.initial_carry(model)
    losses = [task.loss(model, batch, 0, carry)[0] for task in (plain, eval_clamped)]
    assert losses[0] == losses[1]
  with pytest.raises(ValueError, match="eval_clamp_len"):
    _task(tmp_path, "txl-mem12", "recurrent", model__eval_clamp_len=-2)
  with pytest.raises(ValueError, match="clamps Transformer-XL's relative distances"):
    _task(tmp_path, "linear-delta", model__eval_clamp_len=4)


def test_the_report_shows_carried_numbers_and_state_sizes(tmp_path):
  """Fast weight runs, Transformer-XL and softmax in one table: carried columns, the state's
  size (softmax: 'grows'), the carried valid bits in the CSV."""
  import json
  from experiments.tasks.language_model import report as lm_report
  rows = [("linear-delta-carry", 16384, 1.9), ("txl-mem8", 4096, 2.1), ("transformer", None, None)]
  for name, size, carried in rows:
    run = tmp_path / name
    run.mkdir()
    summary = dict(task="language_model", model=name, corpus="pydoc", level="byte", context=128,
                   seed=1, steps=10, stop_reason="max_steps", state_floats=size,
                   valid_bits_per_byte=2.0, test_bits_per_byte=2.0)
    metric = dict(step=10, train_loss=1.5, eval_loss=1.4, valid_bits_per_byte=2.0)
    if carried:
      summary.update(valid_carried_bits_per_byte=carried, test_carried_bits_per_byte=carried)
      metric["valid_carried_bits_per_byte"] = carried
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps(metric) + "\n")
  finished = [(str(tmp_path / name), json.loads((tmp_path / name / "summary.json").read_text()))
              for name, _, _ in rows]
  table = lm_report.markdown(lm_report.collect(finished))
  assert "| state (floats) |" in table and "| valid, carried | test, carried |" in table
  assert "| linear-delta-carry | 1 | 10 | 16,384 | 2.000 |" in table
  assert "| transformer | 1 | 10 | grows | 2.000 |" in table and table.count("| - |") >= 2
  lm_report.write_csv(lm_report.collect(finished), str(tmp_path / "out.csv"))
  _, header, *lines = (tmp_path / "out.csv").read_text().splitlines()     # the stamp first
  assert header.endswith("valid_bits_per_byte,valid_carried_bits_per_byte")
  assert any(line.endswith(",1.9000") for line in lines)
  assert any(line.endswith(",") for line in lines)          # softmax: no carried number


def test_under_carry_state_the_stream_count_may_not_change_on_resume():
  # eval_batch_size is the carried evaluation's number of streams: it defines the selection
  # metric, so a resume may not change it; without carry_state it stays free.
  from experiments import rundir
  from experiments.tasks import language_model
  config = tiny_lm_config()
  for carried in (True, False):
    config.carry_state, config.eval_batch_size = carried, 4
    saved = config.to_dict()
    config.eval_batch_size = 8
    if carried:
      with pytest.raises(ValueError, match="eval_batch_size: 4 -> 8"):
        rundir.check_resumable(saved, config.to_dict(), language_model)
    else:
      rundir.check_resumable(saved, config.to_dict(), language_model)
