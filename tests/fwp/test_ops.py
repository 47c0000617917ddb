"""Every form of every rule computes the same function as a plain loop, and as each other."""

import dataclasses
import functools
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fwp import ops
from tests import helpers, reference


T = 12
# chunk sizes: 1, a non-divisor of T, T itself, and larger than T.
FORMS = [("recurrent", 64), ("parallel", 64), ("chunked", 1), ("chunked", 5), ("chunked", T),
         ("chunked", 20)]
FORM_IDS = [f if f != "chunked" else f"chunked{c}" for f, c in FORMS]
F64_RTOL = 1e-10
F64_ATOL = 1e-12    # for entries near zero (values and gradients here are O(1))
# float32: measured worst errors are ~1e-6 for outputs and states and ~3e-6 for gradients on
# these shapes; 1e-4 leaves room for other CPUs and accelerators' summation orders.
F32_RTOL = 1e-4


def run(rule, form, chunk_size, q, k, v, beta, w0):
  args = (q, k, v) if rule == "sum" else (q, k, v, beta)
  fn = {"sum": ops.sum_rule, "delta": ops.delta_rule, "fwm": ops.fwm_rule}[rule]
  return fn(*args, form=form, chunk_size=chunk_size, initial_state=w0)


def _loss_and_grads(rule, form, chunk_size, inputs, cotangents):
  """A scalar that touches every output and the final state, and its gradient w.r.t. all inputs."""
  cy, cw = cotangents

  def loss(q, k, v, beta, w0):
    y, w = run(rule, form, chunk_size, q, k, v, beta, w0)
    return jnp.sum(y * cy) + jnp.sum(w * cw)

  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(*inputs)


loss_and_grads = jax.jit(_loss_and_grads, static_argnums=(0, 1, 2))
# Traced, for the tests below the plain-loop proofs: untraced (op by op), the chunked forms take
# ~10× as long on a CPU, and FormsEqualPlainLoopTest and FormsUntracedTest prove the forms both
# ways.
jit_run = jax.jit(run, static_argnums=(0, 1, 2))


def reference_loss_and_grads(rule, inputs, cotangents):
  """The plain loop's gradients, eagerly (jit would compile T unrolled steps: slower here)."""
  cy, cw = cotangents

  def loss(q, k, v, beta, w0):
    y, w = reference.rule(rule, q, k, v, None if rule == "sum" else beta, w0)
    return jnp.sum(y * cy) + jnp.sum(w * cw)

  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(*inputs)


@functools.lru_cache(maxsize=None)
def _reference(rule, t=T):
  with helpers.x64():
    inputs = helpers.random_inputs(0, t=t)
    rng = np.random.default_rng(1)
    cotangents = (jnp.asarray(rng.normal(size=inputs[2].shape)),
                  jnp.asarray(rng.normal(size=inputs[4].shape)))
    y, w = reference.rule(rule, *inputs[:3], None if rule == "sum" else inputs[3], inputs[4])
    _, grads = reference_loss_and_grads(rule, inputs, cotangents)
    return inputs, cotangents, (y, w), grads


def _outputs_and_grads(rule, cases, inputs, cotangents):
  """[((y, W_T), gradients)] of every (form, chunk size) in `cases`: under jit, one compile for
  all of a rule's cases (measured: 35-45 % less compile time than one per case)."""
  return [(run(rule, form, chunk, *inputs), _loss_and_grads(rule, form, chunk, inputs,
                                                            cotangents)[1])
          for form, chunk in cases]


# Untraced (op by op): the scan, and chunks of a size that does not divide T (several chunks and
# a padded last one). The parallel form is the chunked code with one chunk spanning T
# (fwp/ops/api.py), so these run every line it runs; untraced, the delta rule's one 12×12 chunk
# alone took 17 s. Every (form, chunk size) is proved traced; these prove the forms do not depend
# on XLA's rewrites.
UNTRACED_FORMS = [("recurrent", 64), ("chunked", 5)]


class _PlainLoopCheck(chex.TestCase):
  """Each form against the plain loop in float64: outputs, final state and the gradients w.r.t.
  every input (the initial state included)."""

  def _check(self, rule, cases):
    """Every case of `cases` in one (traced or untraced) call, each checked as a subtest."""
    inputs, cotangents, expected, grads_ref = _reference(rule)
    with helpers.x64():
      results = self.variant(functools.partial(_outputs_and_grads, rule, cases))(inputs,
                                                                                cotangents)
    for (form, chunk_size), ((y, w), grads) in zip(cases, results):
      with self.subTest(rule=rule, form=form, chunk_size=chunk_size):
        chex.assert_type([y, w], jnp.float64)
        chex.assert_shape([y, w], [expected[0].shape, expected[1].shape])
        chex.assert_trees_all_close((y, w), expected, rtol=F64_RTOL, atol=F64_ATOL)
        chex.assert_tree_all_finite(grads)
        ref = grads_ref
        if rule == "sum":   # beta does not enter the sum rule
          chex.assert_trees_all_equal(grads[3], jnp.zeros_like(grads[3]))
          grads, ref = grads[:3] + grads[4:], grads_ref[:3] + grads_ref[4:]
        chex.assert_trees_all_close(grads, ref, rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
class FormsEqualPlainLoopTest(_PlainLoopCheck):
  """Traced (jit): every (form, chunk size); fwm traced and untraced."""

  @chex.variants(with_jit=True)
  @parameterized.parameters("sum", "delta")
  def test_every_form_matches_plain_loop_float64(self, rule):
    """The six (form, chunk size) cases of FORMS, one subtest each."""
    self._check(rule, FORMS)

  @chex.variants(with_jit=True, without_jit=True)
  def test_fwm_recurrent_matches_plain_loop_float64(self):
    self._check("fwm", [("recurrent", 64)])
    # The normalisation really acts on these inputs (so the test covers it).
    w_ref = np.asarray(_reference("fwm")[2][1])
    assert float(np.max(np.sqrt(np.sum(w_ref ** 2, axis=(-2, -1))))) == pytest.approx(1.0)

  @chex.variants(with_jit=True)   # auto only dispatches to the forms proved above, both ways
  @parameterized.product(rule=("sum", "delta", "fwm"), parallel_max_t=(T, 4))
  def test_auto_form_and_chunk_size_match_plain_loop(self, rule, parallel_max_t):
    """auto picks parallel (T ≤ PARALLEL_MAX_T) or chunks of AUTO_CHUNK (here 5, 3 at the end)."""
    with mock.patch.object(ops.rules, "PARALLEL_MAX_T", parallel_max_t), \
         mock.patch.object(ops.rules, "AUTO_CHUNK", 5):
      expected = {"fwm": "recurrent", "delta": "chunked",
                  "sum": "parallel" if parallel_max_t == T else "chunked"}[rule]
      assert ops.choose_form(rule, "auto", T) == expected
      assert ops.choose_chunk_size("auto", T) == 5 and ops.choose_chunk_size("auto", 3) == 3
      self._check(rule, [("auto", "auto")])


class FormsUntracedTest(_PlainLoopCheck):
  """Untraced (op by op), so the proofs do not depend on XLA's rewrites (UNTRACED_FORMS).
  Default tier: the delta rule's chunks untraced take ~11 s here."""

  @chex.variants(without_jit=True)
  @parameterized.product(rule=("sum", "delta"), form_chunk=UNTRACED_FORMS)
  def test_form_matches_plain_loop_float64_untraced(self, rule, form_chunk):
    self._check(rule, [form_chunk])


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_recurrent_segments_under_remat_match_plain_loop(rule, monkeypatch):
  """The recurrent form's backward restarts from a stored state every REMAT_SEGMENT steps; with 5
  over T = 13 (three segments of 5, the last padded by 2) outputs, state and gradients are
  unchanged."""
  # The records hold the segment (read at trace time); fwm's is min(REMAT_SEGMENT, FWM_SEGMENT).
  record = ops.rules.BY_NAME[rule]
  monkeypatch.setitem(ops.rules.BY_NAME, rule, dataclasses.replace(record, segment=5))
  inputs, cotangents, (y_ref, w_ref), grads_ref = _reference(rule, 13)
  with helpers.x64():
    # Fresh traces (the module's jitted functions may hold one with the record's segment), and
    # the segments really are three: a scan over them of length 3.
    assert "length=3" in str(jax.make_jaxpr(functools.partial(run, rule, "recurrent", 64))(
        *inputs))
    y, w = jax.jit(run, static_argnums=(0, 1, 2))(rule, "recurrent", 64, *inputs)
    chex.assert_trees_all_close(y, y_ref, rtol=F64_RTOL, atol=F64_ATOL)
    chex.assert_trees_all_close(w, w_ref, rtol=F64_RTOL, atol=F64_ATOL)
    _, grads = jax.jit(_loss_and_grads, static_argnums=(0, 1, 2))(rule, "recurrent", 64,
                                                                   inputs, cotangents)
    keep = [0, 1, 2, 4] if rule == "sum" else [0, 1, 2, 3, 4]
    chex.assert_trees_all_close([grads[i] for i in keep], [grads_ref[i] for i in keep],
                                rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_recurrent_backward_float32_long_sequence(rule):
  """The recurrent backward walks each segment back from its end (sum, delta: undoing
  steps; fwm: rerunning the segment). In float32 over 70 steps (two segments of 35), with values large enough that the
  fwm normalisation acts at every step (undoing it would amplify rounding by ‖P‖ per step), the
  gradients stay at F32_RTOL of a float64 plain loop."""
  t = 70
  with helpers.x64():
    inputs = helpers.random_inputs(5, t=t, d_key=16, d_value=8)
    inputs = inputs[:2] + (3.0 * inputs[2],) + inputs[3:]
    cotangents = (jnp.asarray(np.random.default_rng(1).normal(size=inputs[2].shape)),
                  jnp.ones_like(inputs[4]))
    _, grads_ref = reference_loss_and_grads(rule, inputs, cotangents)
    if rule == "fwm":   # the normalisation binds: ‖P_t‖ > 1 at every step
      _, w_ref = reference.rule(rule, *inputs)
      assert float(jnp.min(jnp.sum(w_ref ** 2, axis=(-2, -1)))) == pytest.approx(1.0)
  as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  _, grads = loss_and_grads(rule, "recurrent", 64, as_f32(inputs), as_f32(cotangents))
  keep = [0, 1, 2, 4] if rule == "sum" else [0, 1, 2, 3, 4]
  helpers.assert_rel_close([grads[i] for i in keep], [grads_ref[i] for i in keep], F32_RTOL,
                           "float32 grads")


@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_forms_agree_float32(rule, subtests):
  """float32 tolerance, documented at F32_RTOL: every form against the recurrent form (all forms
  in one compile)."""
  inputs = helpers.random_inputs(2, t=T, dtype=jnp.float32)
  rng = np.random.default_rng(3)
  cotangents = (jnp.asarray(rng.normal(size=inputs[2].shape), jnp.float32),
                jnp.asarray(rng.normal(size=inputs[4].shape), jnp.float32))
  results = jax.jit(functools.partial(_outputs_and_grads, rule, FORMS))(inputs, cotangents)
  base_out, base_grads = results[0]
  for (form, chunk_size), (out, grads) in zip(FORMS[1:], results[1:]):
    with subtests.test(form=form, chunk_size=chunk_size):
      assert out[0].dtype == jnp.float32
      helpers.assert_rel_close(out, base_out, F32_RTOL, f"{form}{chunk_size} outputs")
      helpers.assert_rel_close(grads, base_grads, F32_RTOL, f"{form}{chunk_size} grads")


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_carried_state_equals_one_pass(rule):
  with helpers.x64():
    q, k, v, beta, w0 = helpers.random_inputs(4, t=T)
    form = "recurrent" if rule == "fwm" else "chunked"
    full = jit_run(rule, form, 5, q, k, v, beta, w0)
    split = 7
    y1, w1 = jit_run(rule, form, 5, q[:, :split], k[:, :split], v[:, :split], beta[:, :split], w0)
    y2, w2 = jit_run(rule, form, 5, q[:, split:], k[:, split:], v[:, split:], beta[:, split:], w1)
    chex.assert_trees_all_close((jnp.concatenate([y1, y2], axis=1), w2), full,
                                rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_single_step_streams_the_recurrence(rule):
  with helpers.x64():
    q, k, v, beta, w = helpers.random_inputs(5, t=6)
    y_full, w_full = jit_run(rule, "recurrent", 64, q, k, v, beta, w)
    step = {"sum": lambda w, *x: ops.sum_rule_step(w, *x[:3]),
            "delta": ops.delta_rule_step, "fwm": ops.fwm_rule_step}[rule]
    ys = []
    for t in range(q.shape[1]):
      y, w = step(w, q[:, t], k[:, t], v[:, t], beta[:, t])
      ys.append(y)
    chex.assert_trees_all_close((jnp.stack(ys, axis=1), w), (y_full, w_full),
                                rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
@pytest.mark.parametrize("form,chunk_size", FORMS, ids=FORM_IDS)
def test_beta_zero_leaves_state_unchanged(form, chunk_size):
  with helpers.x64():
    q, k, v, beta, w0 = helpers.random_inputs(6, t=T)
    _, w = jit_run("delta", form, chunk_size, q, k, v, jnp.zeros_like(beta), w0)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w0))


@pytest.mark.fast
@pytest.mark.parametrize("form,chunk_size", FORMS, ids=FORM_IDS)
def test_delta_rule_retrieves_last_value_with_orthonormal_keys(form, chunk_size):
  """With orthonormal keys and β = 1, writing v under k replaces what was there: reading with
  q = k returns the last value written under that key, whatever was written before."""
  with helpers.x64():
    d_key, d_value, t = 4, 3, T
    keys = np.linalg.qr(np.random.default_rng(7).normal(size=(d_key, d_key)))[0].T
    which = np.array([0, 1, 2, 0, 3, 1, 1, 2, 0, 3, 2, 0])           # keys repeat
    k = jnp.asarray(keys[which])[None, :, None, :]
    v = jnp.asarray(np.random.default_rng(8).normal(size=(1, t, 1, d_value)))
    w0 = jnp.asarray(np.random.default_rng(9).normal(size=(1, 1, d_value, d_key)))
    _, w = jit_run("delta", form, chunk_size, k, k, v, jnp.ones((1, t, 1)), w0)
    for key_id in range(d_key):
      last = np.max(np.nonzero(which == key_id)[0])
      np.testing.assert_allclose(np.asarray(w[0, 0] @ keys[key_id]), np.asarray(v[0, last, 0]),
                                 rtol=0, atol=1e-12)


@pytest.mark.fast
@pytest.mark.parametrize("form,chunk_size", FORMS, ids=FORM_IDS)
def test_unnormalised_sum_rule_is_masked_linear_attention(form, chunk_size):
  with helpers.x64():
    q, k, v, _, _ = helpers.random_inputs(10, t=T)
    y, _ = jit_run("sum", form, chunk_size, q, k, v, None, None)
    chex.assert_trees_all_close(y, reference.masked_linear_attention(q, k, v),
                                rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_causality_by_gradients(rule, subtests):
  """∂y_t/∂(q, k, v, β)_s is exactly zero for s > t, in every form (one compile for all)."""
  forms = [("recurrent", 64)] if rule == "fwm" else FORMS
  inputs = helpers.random_inputs(11, t=8, dtype=jnp.float32)
  t_read = 4

  @jax.jit
  def grads_of_y_t(q, k, v, beta):
    def y_t(form, chunk_size, q, k, v, beta):
      y, _ = run(rule, form, chunk_size, q, k, v, beta, inputs[4])
      return jnp.sum(y[:, t_read])
    return [jax.grad(functools.partial(y_t, f, c), argnums=(0, 1, 2, 3))(q, k, v, beta)
            for f, c in forms]

  for (form, chunk_size), grads in zip(forms, grads_of_y_t(*inputs[:4])):
    with subtests.test(form=form, chunk_size=chunk_size):
      for name, g in zip("qkvb", grads):
        future = np.asarray(g[:, t_read + 1:])
        assert np.all(future == 0), f"{rule}/{form}{chunk_size}: d y_{t_read} / d {name}_future != 0"
        if rule != "sum" or name != "b":
          assert np.any(np.asarray(g[:, :t_read + 1]) != 0), "the test must see real gradients"


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta"])
@pytest.mark.parametrize("name", ["q", "k", "v", "beta", "inf_v"])
def test_a_non_finite_input_never_reaches_an_earlier_output(rule, name):
  """Causality for values: NaN (or Inf) in one input at step s leaves every output before s as
  the clean run's, in every form, and the non-finite outputs are where the recurrence puts them
  (from s on when it enters W; at s alone for a query)."""
  if rule == "sum" and name == "beta":
    return
  s = 5
  forms = [("recurrent", 64), ("parallel", 64), ("chunked", 5)]   # the masked products' cases
  inputs = list(helpers.random_inputs(12, t=T, dtype=jnp.float32))
  clean = [jit_run(rule, f, c, *inputs[:4], inputs[4])[0] for f, c in forms]
  index = {"q": 0, "k": 1, "v": 2, "beta": 3, "inf_v": 2}[name]
  inputs[index] = inputs[index].at[:, s].set(jnp.inf if name == "inf_v" else jnp.nan)
  expected_bad = np.zeros(T, bool)
  expected_bad[s:] = True
  if name == "q":
    expected_bad[s + 1:] = False
  for (form, chunk_size), y_clean in zip(forms, clean):
    y, w = jit_run(rule, form, chunk_size, *inputs[:4], inputs[4])
    y = np.asarray(y)
    np.testing.assert_array_equal(y[:, :s], np.asarray(y_clean)[:, :s],
                                  err_msg=f"{form}{chunk_size}: an earlier output changed")
    bad = ~np.isfinite(y).all(axis=(0, 2, 3))
    np.testing.assert_array_equal(bad, expected_bad, err_msg=f"{form}{chunk_size}")
    assert np.isfinite(w).all() == (name == "q"), f"{form}{chunk_size}: final state"


BAD_CALLS = [
    (lambda x: ops.sum_rule(*x[:3], form="scan"), "recurrent, parallel, chunked"),
    (lambda x: ops.apply_rule("hebb", *x[:3], form="recurrent"), "sum, delta, fwm"),
    (lambda x: ops.sum_rule(*x[:3], form="chunked", chunk_size=0), "positive integer"),
    (lambda x: ops.sum_rule(*x[:3], form="chunked", chunk_size=-3), "positive integer"),
    (lambda x: ops.sum_rule(*x[:3], form="chunked", chunk_size=2.5), "positive integer"),
    (lambda x: ops.sum_rule(x[0], x[1][:, :, :1], x[2], form="parallel"), "k must have q's shape"),
    (lambda x: ops.sum_rule(x[0], x[1], x[2][:, :5], form="parallel"), "v must be"),
    (lambda x: ops.delta_rule(*x[:3], x[3][:, :, :1], form="parallel"), "beta must be"),
    (lambda x: ops.sum_rule(*x[:3], form="parallel", initial_state=x[4][:, :1]),
     "initial_state must be"),
    (lambda x: ops.fwm_rule(*x[:4], form="parallel"), "nonlinear in W"),
    (lambda x: ops.fwm_rule(*x[:4], form="chunked"), "Valid choices for fwm: recurrent"),
    (lambda x: ops.delta_rule(*x[:3], None, form="parallel"), "needs beta"),
    (lambda x: ops.read_final("delta", x[0][:, :1], *x[1:3], None, form="recurrent"),
     "needs beta"),
]


@pytest.mark.fast
@pytest.mark.parametrize("call,message", BAD_CALLS)
def test_bad_input_raises_before_tracing(call, message, monkeypatch):
  inputs = helpers.random_inputs(12, t=6, dtype=jnp.float32)
  # Nothing may be traced before the error: make any trace fail loudly.
  for name in ("scan", "cond"):
    monkeypatch.setattr(jax.lax, name, lambda *a, **k: pytest.fail("traced before validating"))
  monkeypatch.setattr(jnp, "einsum", lambda *a, **k: pytest.fail("computed before validating"))
  with pytest.raises(ValueError, match=message):
    call(inputs)


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_final_state_alone_matches_full_run(rule, subtests):
  forms = [("recurrent", 64)] if rule == "fwm" else FORMS
  with helpers.x64():
    q, k, v, beta, w0 = helpers.random_inputs(13, t=T)
    _, w_ref = reference.rule(rule, q, k, v, None if rule == "sum" else beta, w0)
    states = jax.jit(lambda *a: [ops.final_state(rule, *a, form=f, chunk_size=c, initial_state=w0)
                                 for f, c in forms])(k, v, beta)
    for (form, chunk_size), w in zip(forms, states):
      with subtests.test(form=form, chunk_size=chunk_size):
        chex.assert_trees_all_close(w, w_ref, rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
@pytest.mark.parametrize("rule", ["sum", "delta", "fwm"])
def test_read_final_is_final_state_times_queries(rule, subtests):
  """Fewer queries (1) than value dimensions (4) takes the delta rule's recurrent read-out
  through the queries carried back in time; more (5) builds W_T. Both must equal W_T q. Both
  query counts and every form in one compile."""
  forms = ([("recurrent", 64)] if rule == "fwm" else FORMS) + [("auto", "auto")]
  with helpers.x64():
    _, k, v, beta, _ = helpers.random_inputs(14, t=T, d_value=4)
    rng = np.random.default_rng(15)
    queries = {n: jnp.asarray(rng.normal(size=(2, n, 2, k.shape[-1]))) for n in (1, 5)}
    _, w_ref = reference.rule(rule, k, k, v, None if rule == "sum" else beta)

    @jax.jit   # traced: untraced, the forms are proved above
    def reads_and_grads(queries, k, v, beta):
      def one(form, chunk_size, q):
        read = lambda *a: ops.read_final(rule, *a, form=form, chunk_size=chunk_size)
        return read(q, k, v, beta), jax.grad(lambda *a: jnp.sum(read(*a) ** 2),
                                             argnums=(0, 1, 2, 3))(q, k, v, beta)
      return {n: [one(f, c, q) for f, c in forms] for n, q in queries.items()}

    results = reads_and_grads(queries, k, v, beta)
    expected = {n: jnp.einsum("bhvk,bqhk->bqhv", w_ref, q) for n, q in queries.items()}
  for n, per_form in results.items():
    grads_ref = per_form[0][1]   # the recurrent read's hand-written backward against the rest
    for (form, chunk_size), (y, grads) in zip(forms, per_form):
      with subtests.test(num_queries=n, form=form, chunk_size=chunk_size):
        chex.assert_trees_all_close(y, expected[n], rtol=F64_RTOL, atol=F64_ATOL)
        chex.assert_trees_all_close(grads, grads_ref, rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
def test_query_read_out_backward_across_segments(monkeypatch):
  """The delta rule's query read-out keeps q once per QUERY_SEGMENT steps and rebuilds the rest
  on the way back: with 5 over T = 12 (three segments, the last padded), its gradients equal the
  parallel read's, which never scans."""
  monkeypatch.setattr(ops, "QUERY_SEGMENT", 5)
  with helpers.x64():
    _, k, v, beta, _ = helpers.random_inputs(16, t=T, d_value=4)
    queries = jnp.asarray(np.random.default_rng(17).normal(size=(2, 1, 2, k.shape[-1])))
    grads = [jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(ops.read_final("delta", *a, form=form))),
                              argnums=(0, 1, 2, 3)))(queries, k, v, beta)
             for form in ("recurrent", "parallel")]
    chex.assert_trees_all_close(grads[0], grads[1], rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_unit_lower_inverse(n):
  """The matmul-only inverse the delta rule's blocks use, against numpy, in float64."""
  with helpers.x64():
    rng = np.random.default_rng(n)
    a = np.eye(n) + np.tril(rng.normal(size=(3, n, n)), -1)
    chex.assert_trees_all_close(ops.unit_lower_inverse(jnp.asarray(a)), np.linalg.inv(a),
                                rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.fast
def test_fwm_first_write_unnormalised_matches_plain_loop_float64():
  """normalize_first=False: the first step is the delta write from W = 0 (not normalised), the
  rest fwm steps; outputs, final state and gradients against the plain loop so written, with
  values large enough that the first write's norm exceeds 1 (so the option changes something)."""
  with helpers.x64():
    q, k, v, beta, _ = helpers.random_inputs(7)
    v = 3.0 * v
    def loop(q, k, v, beta):
      first = reference.rule("delta", q[:, :1], k[:, :1], v[:, :1], beta[:, :1])
      rest = reference.rule("fwm", q[:, 1:], k[:, 1:], v[:, 1:], beta[:, 1:], first[1])
      return jnp.concatenate([first[0], rest[0]], axis=1), rest[1]
    def loss(fn):
      def scalar(*a):
        y, w = fn(*a)
        return jnp.sum(y ** 2) + jnp.sum(w), (y, w)
      return scalar

    @jax.jit   # outputs, gradients and the normalised first write's state in one compile
    def fwp(q, k, v, beta):
      plain = lambda *a: ops.fwm_rule(*a, normalize_first=False)
      grads, out = jax.grad(loss(plain), argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, beta)
      return out, grads, ops.fwm_rule(q, k, v, beta)[1]

    out, grads, w_normalised = fwp(q, k, v, beta)
    grads_ref, out_ref = jax.grad(loss(loop), argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, beta)
    chex.assert_trees_all_close(out, out_ref, rtol=F64_RTOL, atol=F64_ATOL)
    chex.assert_trees_all_close(grads, grads_ref, rtol=F64_RTOL, atol=F64_ATOL)
    assert not np.allclose(out[1], w_normalised)
