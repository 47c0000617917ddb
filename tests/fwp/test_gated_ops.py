"""The gated rules (gated_sum, gated_delta: one gate per head or per key channel) and DeltaProduct
(N = 1, 2, 3 writes per token, gated or not): every form against a plain loop in float64, with
and without an initial state (outputs, final state, gradients w.r.t. every input, log-decays
included); log_decay = 0 is the ungated rule and N = 1 the (gated) delta rule; negative
eigenvalues (β up to 2); single steps; the chunked forms' float32 stability under strong decay;
bad shapes named before tracing."""

import contextlib
import dataclasses
import functools
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwp import ops
from fwp.ops import chunked
from tests import helpers, reference

# Fast tier: the float64 proofs, steps and bad input; the untraced proofs and the float32
# measurements are in the default tier (docs/tests.md).
fast = pytest.mark.fast

T = 12
# chunk sizes (tokens): 1, a non-divisor of T, and larger than T (one chunk: the code the
# parallel form and chunks of T run, fwp/ops/api.py).
FORMS = [("recurrent", 64), ("parallel", 64), ("chunked", 1), ("chunked", 5), ("chunked", 20)]
F64_RTOL, F64_ATOL = 1e-10, 1e-12
# float32 against float64 (measured below: see test_chunked_float32_is_stable_under_strong_decay)
F32_RTOL = 1e-4


def gated_inputs(seed, *, gate, writes=None, b=2, t=T, h=2, d_key=5, d_value=3, beta_max=2.0,
                 min_log_decay=-1.0, dtype=jnp.float64):
  """q, k, v, beta, log_decay, w0: unit-norm positive keys, β in (0, beta_max) (up to 2: negative
  eigenvalues of I − β k kᵀ), log-decays in (min_log_decay, 0) of shape [B, T, H] (gate="head")
  or [B, T, H, K] ("channel"), or None (gate=None). `writes`: DeltaProduct's N (k, v, beta get
  an axis of N writes per token)."""
  rng = np.random.default_rng(seed)
  n = () if writes is None else (writes,)
  q = rng.normal(size=(b, t, h, d_key))
  k = np.exp(rng.normal(size=(b, t, h) + n + (d_key,)))
  k = k / np.linalg.norm(k, axis=-1, keepdims=True)
  v = rng.normal(size=(b, t, h) + n + (d_value,))
  beta = beta_max / (1 + np.exp(-rng.normal(size=(b, t, h) + n)))
  g = {"head": (b, t, h), "channel": (b, t, h, d_key), None: None}[gate]
  log_decay = None if g is None else rng.uniform(min_log_decay, 0, size=g)
  w0 = 0.3 * rng.normal(size=(b, h, d_value, d_key))
  return tuple(None if x is None else jnp.asarray(x, dtype)
               for x in (q, k, v, beta, log_decay, w0))


def run(rule, form, chunk, q, k, v, beta, log_decay, w0):
  if rule == "gated_sum":
    return ops.gated_sum_rule(q, k, v, log_decay, form=form, chunk_size=chunk, initial_state=w0)
  if rule == "gated_delta":
    return ops.gated_delta_rule(q, k, v, beta, log_decay, form=form, chunk_size=chunk,
                                initial_state=w0)
  return ops.delta_product_rule(q, k, v, beta, log_decay=log_decay, form=form, chunk_size=chunk,
                                initial_state=w0)


def plain_loop(rule, q, k, v, beta, log_decay, w0):
  if rule == "delta_product":
    return reference.delta_product(q, k, v, beta, log_decay, w0)
  return reference.gated_rule(rule, q, k, v, beta, log_decay, w0)


def _outputs_and_grads(fn, inputs, cotangents):
  """(fn(*inputs), ∂ loss / ∂ every input that is an array (None stays None)) with a loss that
  touches every output and the final state, from one forward pass."""
  present = [i for i, x in enumerate(inputs) if x is not None]

  def loss(*xs):
    full = list(inputs)
    for i, x in zip(present, xs):
      full[i] = x
    y, w = fn(*full)
    return jnp.sum(y * cotangents[0]) + jnp.sum(w * cotangents[1]), (y, w)

  grads, out = jax.grad(loss, argnums=tuple(range(len(present))), has_aux=True)(
      *[inputs[i] for i in present])
  full = [None] * len(inputs)
  for i, g in zip(present, grads):
    full[i] = g
  return out, full


def _all_forms(rule, forms, cases, cotangents):
  """[[((y, W_T), gradients) per form] per case]: every case and form in one compile."""
  return [[_outputs_and_grads(functools.partial(run, rule, f, c), inputs, cot)
           for f, c in forms] for inputs, cot in zip(cases, cotangents)]


# (label, rule, gate, writes, initial state): both gate shapes and both starts (W0 or the zero
# state: the blocks skip W0's products) for each rule; DeltaProduct at N = 2 and 3, gated per
# head and not at all.
CASES = {
    "gated_sum": [("channel", "gated_sum", "channel", None, True),
                  ("head, no W0", "gated_sum", "head", None, False)],
    "gated_delta": [("channel", "gated_delta", "channel", None, True),
                    ("head, no W0", "gated_delta", "head", None, False)],
    # N = 1 (per-channel gates) is the gated delta rule in every form, exactly:
    # test_zero_log_decay_is_the_ungated_rule_and_one_write_the_delta_rule.
    "delta_product": [("N=2 head", "delta_product", "head", 2, True),
                      ("N=3 ungated, no W0", "delta_product", None, 3, False)],
}


# DeltaProduct's N writes per token make its loop N times as long: 6 tokens (chunks of 1, 5 and
# 20 still cover one step, a non-divisor and one chunk).
CASE_T = {"delta_product": 6}


@functools.lru_cache(maxsize=None)
def _reference(rule):
  """Inputs, cotangents, plain-loop outputs and gradients of each of `rule`'s CASES."""
  with helpers.x64():
    cases, cots, outs, grads = [], [], [], []
    for i, (_, _, gate, writes, with_w0) in enumerate(CASES[rule]):
      inputs = list(gated_inputs(10 + i, gate=gate, writes=writes, t=CASE_T.get(rule, T)))
      if not with_w0:
        inputs[5] = None
      if rule == "gated_sum":
        inputs[3] = None
      rng = np.random.default_rng(20 + i)
      cot = (jnp.asarray(rng.normal(size=inputs[0].shape[:3] + (3,))),
             jnp.asarray(rng.normal(size=(2, 2, 3, 5))))
      out, grad = _outputs_and_grads(functools.partial(plain_loop, rule), inputs, cot)
      cases.append(tuple(inputs))
      cots.append(cot)
      outs.append(out)
      grads.append(grad)
    return cases, cots, outs, grads


def _check(subtests, rule, forms, results, first=0):
  """Each computed case (len(results) of the rule's CASES from `first`) against its loop."""
  cases, _, outs, grads_ref = (x[first:] for x in _reference(rule))
  for (label, *_), inputs, expected, ref, per_form in zip(CASES[rule][first:], cases, outs,
                                                          grads_ref, results):
    for (form, chunk), ((y, w), grads) in zip(forms, per_form):
      with subtests.test(case=label, form=form, chunk_size=chunk):
        chex.assert_type([y, w], jnp.float64)
        chex.assert_trees_all_close((y, w), expected, rtol=F64_RTOL, atol=F64_ATOL)
        for name, g, g_ref in zip(("q", "k", "v", "beta", "log_decay", "w0"), grads, ref):
          assert (g is None) == (g_ref is None), name
          if g is not None:
            chex.assert_tree_all_finite(g)
            chex.assert_trees_all_close(g, g_ref, rtol=F64_RTOL, atol=F64_ATOL,
                                        custom_message=name)


@contextlib.contextmanager
def recurrent_segments(length):
  """The gated rules' recurrent backward with segments of `length` steps (read at trace time)."""
  patched = {name: dataclasses.replace(ops.rules.BY_NAME[name], segment=length)
             for name in ("gated_sum", "gated_delta")}
  with mock.patch.dict(ops.rules.BY_NAME, patched):
    yield


# DeltaProduct runs the gated delta (or delta) rule's forms over its N·T writes
# (api._delta_product), so its own code is the expansion, where the gate and the query go and
# the chunk size in tokens: the scan, one chunk and chunks that do not divide T prove it.
RULE_FORMS = {"delta_product": [("recurrent", 64), ("parallel", 64), ("chunked", 5)]}


def _traced_forms(rule, cases, cotangents):
  """The rule's forms, then the recurrent form whose backward reruns segments of at most 5
  steps (three of 4 over T = 12; delta_product's 18 writes four of 5, the last padded), for
  every case: one compile."""
  results = _all_forms(rule, RULE_FORMS.get(rule, FORMS), cases, cotangents)
  with recurrent_segments(5):
    segmented = _all_forms(rule, [("recurrent", 64)], cases, cotangents)
  return [r + s for r, s in zip(results, segmented)]


@fast
@pytest.mark.parametrize("rule", list(CASES))
def test_every_form_matches_plain_loop_float64(rule, subtests):
  """The (form, chunk size) cases and the segmented scan × each of the rule's CASES, traced in
  one compile."""
  cases, cots, _, _ = _reference(rule)
  with helpers.x64():
    results = jax.jit(functools.partial(_traced_forms, rule))(cases, cots)
  _check(subtests, rule, RULE_FORMS.get(rule, FORMS) + [("recurrent, segments of 5", 64)],
         results)


@pytest.mark.parametrize("rule,case", [("gated_sum", 1), ("gated_delta", 0)])
def test_forms_match_plain_loop_float64_untraced(rule, case, subtests):
  """Untraced (op by op), so the proofs do not depend on XLA's rewrites: the scan (its backward
  reruns segments) and chunks of a size that does not divide T, for each gate shape's block.
  delta_product runs the same blocks and steps (api._delta_product): traced only. Default
  tier (tests/conftest.py: untraced, a chunked form takes ~10 s here)."""
  forms = [("recurrent", 64), ("chunked", 5)]
  cases, cots, _, _ = _reference(rule)
  with helpers.x64():
    results = _all_forms(rule, forms, cases[case:case + 1], cots[case:case + 1])
  _check(subtests, rule, [(f"{f} untraced", c) for f, c in forms], results, first=case)


@fast
def test_zero_log_decay_is_the_ungated_rule_and_one_write_the_delta_rule(subtests):
  """log_decay = 0: gated_sum is the sum rule, gated_delta and delta_product the delta rule; a
  DeltaProduct of one write per token is the (gated) delta rule: the scan, one block and
  several (the other chunk sizes run the same code)."""
  with helpers.x64():
    q, k, v, beta, g, w0 = gated_inputs(3, gate="channel")
    zero = jnp.zeros_like(g)

    def all_forms(q, k, v, beta, g, zero, w0):
      out = {}
      for form, chunk in [("recurrent", 64), ("parallel", 64), ("chunked", 5)]:
        key = (form, chunk)
        out[key] = dict(
            sum=ops.sum_rule(q, k, v, form=form, chunk_size=chunk, initial_state=w0),
            gated_sum=ops.gated_sum_rule(q, k, v, zero, form=form, chunk_size=chunk,
                                         initial_state=w0),
            gated_sum_head=ops.gated_sum_rule(q, k, v, zero[..., 0], form=form,
                                              chunk_size=chunk, initial_state=w0),
            delta=ops.delta_rule(q, k, v, beta, form=form, chunk_size=chunk, initial_state=w0),
            gated_delta=ops.gated_delta_rule(q, k, v, beta, zero, form=form, chunk_size=chunk,
                                             initial_state=w0),
            product_zero=ops.delta_product_rule(q, k[:, :, :, None], v[:, :, :, None],
                                                beta[..., None], log_decay=zero, form=form,
                                                chunk_size=chunk, initial_state=w0),
            product_ungated=ops.delta_product_rule(q, k[:, :, :, None], v[:, :, :, None],
                                                   beta[..., None], form=form,
                                                   chunk_size=chunk, initial_state=w0),
            gated=ops.gated_delta_rule(q, k, v, beta, g, form=form, chunk_size=chunk,
                                       initial_state=w0),
            product_gated=ops.delta_product_rule(q, k[:, :, :, None], v[:, :, :, None],
                                                 beta[..., None], log_decay=g, form=form,
                                                 chunk_size=chunk, initial_state=w0))
      return out

    results = jax.jit(all_forms)(q, k, v, beta, g, zero, w0)
  for key, out in results.items():
    for name, want in (("gated_sum", "sum"), ("gated_sum_head", "sum"),
                       ("gated_delta", "delta"), ("product_zero", "delta"),
                       ("product_ungated", "delta"), ("product_gated", "gated")):
      with subtests.test(form=key, rule=name):
        chex.assert_trees_all_close(out[name], out[want], rtol=1e-12, atol=1e-14)


@fast
def test_negative_eigenvalues_flip_a_direction():
  """β = 2 with a unit key is the reflection I − 2 k kᵀ: writing v = 0 twice along k returns W;
  once, it negates W's response to k (what lets the rule track parity). Every form."""
  with helpers.x64():
    q, k, v, beta, g, w0 = gated_inputs(4, gate="head", t=2)
    k = jnp.broadcast_to(k[:, :1], k.shape)
    v, beta, g = 0 * v, 2 + 0 * beta, 0 * g

    def both(form, chunk):
      _, w1 = ops.gated_delta_rule(q[:, :1], k[:, :1], v[:, :1], beta[:, :1], g[:, :1],
                                   form=form, chunk_size=chunk, initial_state=w0)
      _, w2 = ops.gated_delta_rule(q, k, v, beta, g, form=form, chunk_size=chunk,
                                   initial_state=w0)
      return w1, w2

    results = jax.jit(lambda: [both(f, c) for f, c in FORMS])()
    kk = k[:, 0]                                              # [B, H, K]
    for w1, w2 in results:
      chex.assert_trees_all_close(jnp.einsum("bhvk,bhk->bhv", w1, kk),
                                  -jnp.einsum("bhvk,bhk->bhv", w0, kk), rtol=1e-12, atol=1e-14)
      chex.assert_trees_all_close(w2, w0, rtol=1e-12, atol=1e-14)


@fast
def test_single_steps_stream_the_recurrence(subtests):
  with helpers.x64():
    for rule, gate, writes in (("gated_sum", "head", None), ("gated_sum", "channel", None),
                               ("gated_delta", "head", None), ("gated_delta", "channel", None),
                               ("delta_product", "channel", 3), ("delta_product", None, 2)):
      q, k, v, beta, g, w = gated_inputs(5, gate=gate, writes=writes, t=6)
      y_full, w_full = jax.jit(functools.partial(run, rule, "recurrent", 64))(
          q, k, v, beta, g, w)
      ys = []
      for t in range(q.shape[1]):
        g_t = None if g is None else g[:, t]
        if rule == "gated_sum":
          y, w = ops.gated_sum_rule_step(w, q[:, t], k[:, t], v[:, t], g_t)
        elif rule == "gated_delta":
          y, w = ops.gated_delta_rule_step(w, q[:, t], k[:, t], v[:, t], beta[:, t], g_t)
        else:
          y, w = ops.delta_product_rule_step(w, q[:, t], k[:, t], v[:, t], beta[:, t], g_t)
        ys.append(y)
      with subtests.test(rule=rule, gate=gate, writes=writes):
        chex.assert_trees_all_close((jnp.stack(ys, axis=1), w), (y_full, w_full),
                                    rtol=F64_RTOL, atol=F64_ATOL)


@fast
def test_per_channel_decayed_scores_are_the_definition_float64(subtests):
  """fwp.ops.chunked.decayed_scores with one log-decay per key channel (computed by halves,
  through a reference step) against its definition as a loop, D_ts = Σ_k x_tk y_sk
  exp(b_tk − b_sk) for s ≤ t (s < t strict): block sizes 1, 2, a power of two, and sizes that
  are not (padded), with log-decays down to −8 per step. Jitted as the chunked forms call it
  (untraced, its recursion dispatched op by op took 15 s of the fast tier)."""
  rng = np.random.default_rng(3)
  for c in (1, 2, 7, 16, 33):
    x, y = rng.normal(size=(2, 1, 2, c, 4))
    b = np.cumsum(rng.uniform(-8, 0, size=(1, 2, c, 4)), axis=-2)
    for strict in (False, True):
      expected = np.zeros((1, 2, c, c))
      for h in range(2):
        for t in range(c):
          for s in range(t if strict else t + 1):
            expected[0, h, t, s] = np.sum(x[0, h, t] * y[0, h, s] * np.exp(b[0, h, t] - b[0, h, s]))
      with subtests.test(size=c, strict=strict), helpers.x64():
        got = jax.jit(chunked.decayed_scores, static_argnums=3)(
            *(jnp.asarray(a, jnp.float64) for a in (x, y, b)), strict)
        chex.assert_trees_all_close(got, expected, rtol=1e-12, atol=1e-300)


def test_chunked_float32_is_stable_under_strong_decay(subtests):
  """T = 1024, log-decays down to −8 per step (gates to e⁻⁸): the chunked and parallel-within-
  chunk products take decays as differences of cumulative log-decays, so float32 stays at
  F32_RTOL of the float64 recurrent form (proved equal to the loop above); a naive Q e^{b},
  K e^{−b} factorisation would overflow (e^{8·64} per chunk)."""
  for rule, gate in (("gated_sum", "head"), ("gated_delta", "channel"),
                     ("gated_delta", "head")):
    with helpers.x64():
      inputs = gated_inputs(6, gate=gate, t=1024, b=1, h=2, d_key=8, d_value=4,
                            min_log_decay=-8.0)
      if rule == "gated_sum":
        inputs = inputs[:3] + (None,) + inputs[4:]
      y64, w64 = jax.jit(functools.partial(run, rule, "recurrent", 64))(*inputs)
    f32 = [None if x is None else x.astype(jnp.float32) for x in inputs]
    y32, w32 = jax.jit(functools.partial(run, rule, "chunked", 64))(*f32)
    with subtests.test(rule=rule, gate=gate):
      assert y32.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y32)))
      helpers.assert_rel_close((y32, w32), (y64, w64), F32_RTOL, f"{rule} {gate} float32")


def test_gated_forms_agree_float32(subtests):
  """float32, documented at F32_RTOL: every form against the recurrent form, both gate shapes."""
  for rule, gate, writes in (("gated_sum", "channel", None), ("gated_delta", "channel", None),
                             ("delta_product", "head", 2)):
    inputs = gated_inputs(7, gate=gate, writes=writes, dtype=jnp.float32)
    if rule == "gated_sum":
      inputs = inputs[:3] + (None,) + inputs[4:]
    outs = jax.jit(lambda *x: [run(rule, f, c, *x) for f, c in FORMS])(*inputs)
    for (form, chunk), out in zip(FORMS[1:], outs[1:]):
      with subtests.test(rule=rule, form=form, chunk_size=chunk):
        helpers.assert_rel_close(out, outs[0], F32_RTOL, f"{rule} {form}{chunk}")


BAD_CALLS = [
    (lambda x: ops.gated_sum_rule(*x[:3], x[4][:, :, :1], form="parallel"),
     r"log_decay must be \[batch, time, heads\] = \(2, 6, 2\)"),
    (lambda x: ops.gated_sum_rule(*x[:3], x[4][..., None, :1], form="parallel"),
     r"or \[batch, time, heads, d_key\] = \(2, 6, 2, 5\)"),
    (lambda x: ops.gated_delta_rule(*x[:4], None, form="chunked"), "needs log_decay"),
    (lambda x: ops.apply_rule("gated_sum", *x[:3], form="chunked"), "needs log_decay"),
    (lambda x: ops.apply_rule("delta", *x[:4], log_decay=x[4], form="chunked"),
     "takes no log_decay; the gated rules are gated_sum, gated_delta, delta_product"),
    (lambda x: ops.gated_delta_rule(*x[:3], None, x[4], form="parallel"), "needs beta"),
    (lambda x: ops.delta_product_rule(*x[:4], form="parallel"),
     r"k must be \[batch, time, heads, writes, d_key\]"),
    (lambda x: ops.delta_product_rule(x[0], x[1][:, :, :, None][..., :0, :],
                                      x[2][:, :, :, None][..., :0, :], x[3][..., None][..., :0],
                                      form="parallel"), "N ≥ 1 writes per token"),
    (lambda x: ops.delta_product_rule(x[0], x[1][:, :, :, None], x[2][:, :, :, None], x[3],
                                      form="parallel"),
     r"beta must be \[batch, time, heads, writes\] = \(2, 6, 2, 1\)"),
    (lambda x: ops.delta_product_rule(x[0], x[1][:, :, :, None], x[2][:, :, :, None],
                                      x[3][..., None], log_decay=x[4][:, :3], form="parallel"),
     "log_decay must be"),
    (lambda x: ops.apply_rule("gated", *x[:3], form="parallel"),
     "valid choices: sum, delta, fwm, gated_sum, gated_delta, delta_product"),
    (lambda x: ops.read_final("gated_sum", x[0][:, :1], *x[1:3], form="parallel"),
     "read_final reads the rules sum, delta, fwm; for gated_sum"),
    (lambda x: ops.gated_delta_rule_step(x[5], x[0][:, 0], x[1][:, 0], x[2][:, 0], x[3][:, 0],
                                         x[4][:, :2]), "log_decay must have shape"),
]


@fast
@pytest.mark.parametrize("call,message", BAD_CALLS)
def test_bad_input_raises_before_tracing(call, message, monkeypatch):
  inputs = gated_inputs(12, gate="channel", t=6, dtype=jnp.float32)
  for name in ("scan", "cond"):
    monkeypatch.setattr(jax.lax, name, lambda *a, **k: pytest.fail("traced before validating"))
  monkeypatch.setattr(jnp, "einsum", lambda *a, **k: pytest.fail("computed before validating"))
  with pytest.raises(ValueError, match=message):
    call(inputs)
