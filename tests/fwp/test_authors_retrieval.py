"""The retrieval model under its default options is the authors' model (ischlag/fast-weight-
transformers, `synthetic/linearAttention.py` PrefixSumLinearAttentionModel and
`synthetic/softmaxAttention.py` SoftmaxAttentionModel), checked in float64 against their
forward pass written out below step by step from their code (no torch: their loops, in
jax.numpy), outputs and parameter gradients; and each named option that departs from it does.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import associative_recall
from experiments.tasks import associative_recall as retrieval_task
from experiments.tasks.associative_recall import data
from tests import helpers

S = 6           # keys; sequences of 2S = 12 (setting 2), d = 64 as the paper


def _phi(x, attention, arg, omega):
  """Their φ: attention_type linear, tanh, favor (`prime`, Omega [d, m]) or dpfp."""
  if attention == "linear":
    return jax.nn.elu(x) + 1.0
  if attention == "tanh":
    return jnp.tanh(x)
  if attention == "favor":
    m = omega.shape[1]
    offset = 0.5 * jnp.sum(x ** 2, -1, keepdims=True) + 0.5 * np.log(m) + 0.5 * np.log(2)
    u = x @ omega
    return jnp.concatenate([jnp.exp(u - offset), jnp.exp(-u - offset)], -1)
  r = jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], -1)
  rolled = jnp.concatenate([jnp.roll(r, j, -1) for j in range(1, arg + 1)], -1)
  return jnp.concatenate([r] * arg, -1) * rolled


def _layer_norm(x, eps=1e-5):          # torch's layer_norm(x, [S], weight=None, bias=None)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def authors_forward(p, keys, values, query, attention, rule, arg=0, omega=None):
  """Their forward for one sequence and one query: keys, values [T] ints, query [] int -> [S].
  p: embedding E [S, e], W_k [S + e, d], b_k [d], W_q [e, d], b_q [d], W_b [S + e, 1], b_b [1]
  (x @ W + b, as nn.Linear)."""
  v_emb = jax.nn.one_hot(values, S, dtype=jnp.float64)
  x = jnp.concatenate([v_emb, p["E"][keys]], -1)
  K = x @ p["W_k"] + p["b_k"]
  V = v_emb
  Q = p["E"][query] @ p["W_q"] + p["b_q"]
  if rule == "softmax":
    A = jax.nn.softmax(K @ Q / np.sqrt(K.shape[-1]))
    return A @ V
  betas = x @ p["W_b"] + p["b_b"] if rule != "sum" else None
  K, Q = _phi(K, attention, arg, omega), _phi(Q, attention, arg, omega)
  if rule == "sum":
    VK = sum(jnp.outer(V[i], K[i]) for i in range(len(keys)))
    Z = K.sum(0)
    return VK @ Q / (Z @ Q + 1e-6)
  betas = jax.nn.sigmoid(betas)
  if rule == "fwm":
    W = jnp.outer(V[0], K[0] * betas[0])         # "first update has no old part"
    for i in range(1, len(keys)):
      v, k, beta = V[i], K[i], betas[i]
      old_v = W @ k
      W = W - jnp.outer(old_v, k)
      new_v = beta * v + (1. - beta) * old_v
      W = W + jnp.outer(new_v, k)
      scale = jax.nn.relu(jnp.linalg.norm(W) - 1) + 1
      W = W / scale
    return _layer_norm(W @ Q)
  W = jnp.zeros((S, K.shape[-1]))                 # "ours": the delta rule
  for i in range(len(keys)):
    v, k, beta = V[i], K[i], betas[i]
    n = k.sum(-1, keepdims=True)
    v_bar = W @ (k / n)
    W = W - jnp.outer(v_bar, k / n)
    new_v = beta * v + (1. - beta) * v_bar
    W = W + jnp.outer(new_v, k / n)
  return W @ (Q / (jnp.sum(Q, -1, keepdims=True) + 1e-6))


CURVES = {  # fwp curve: (their attention_type, update_rule, arg)
    "softmax": ("softmax", "softmax", 0), "linear-sum": ("linear", "sum", 0),
    "dpfp2-sum": ("dpfp", "sum", 2), "favor64-sum": ("favor", "sum", 64),
    "tanh-sum": ("tanh", "sum", 0), "linear-delta": ("linear", "ours", 0),
    "dpfp1-delta": ("dpfp", "ours", 1), "favor64-delta": ("favor", "ours", 64),
    "tanh-fwm": ("tanh", "fwm", 0), "dpfp1-fwm": ("dpfp", "fwm", 1),
}


def _model(curve, **overrides):
  config = associative_recall.get_config(curve)
  config.num_keys = S
  config.model.update(overrides)
  model = retrieval_task.build_model(config, nnx.Rngs(4))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), params), rest


def _their_params(params):
  """fwp's parameters under the authors' names (fwp's kernels are [in, out], as x @ W)."""
  zeros = jnp.zeros((1,))
  p = {"E": params["embed"]["embedding"][...], "W_k": params["k_proj"]["kernel"][...],
       "b_k": params["k_proj"]["bias"][...], "W_q": params["q_proj"]["kernel"][...],
       "b_q": params["q_proj"]["bias"][...]}
  beta = params.get("beta_proj")
  p["W_b"] = beta["kernel"][...] if beta else jnp.zeros((p["W_k"].shape[0], 1))
  p["b_b"] = beta["bias"][...] if beta else zeros
  return p


def _batch():
  return data.train_batch(0, 0, batch_size=2, num_keys=S, setting=2)


def _both(curve, **overrides):
  """(fwp's loss, its gradients as the authors' parameters), (theirs, theirs) in float64."""
  batch = _batch()
  graphdef, params, rest = _model(curve, **overrides)
  attention, rule, arg = CURVES[curve]
  projection = nnx.state(nnx.merge(graphdef, params, rest)).get("projection")
  omega = None if projection is None else jnp.asarray(projection[...], jnp.float64).T
  targets = jax.nn.one_hot(batch["targets"], S, dtype=jnp.float64)

  def fwp_loss(params):
    y = nnx.merge(graphdef, params, rest)(batch["keys"], batch["values"], batch["queries"])
    return 0.5 * jnp.sum((y - targets) ** 2), y

  def their_loss(p):
    one = lambda k, v, q: authors_forward(p, k, v, q, attention, rule, arg, omega)
    per_query = jax.vmap(one, in_axes=(None, None, 0))
    y = jax.vmap(per_query)(batch["keys"], batch["values"], batch["queries"])
    return 0.5 * jnp.sum((y - targets) ** 2), y

  (loss, y), grads = jax.value_and_grad(fwp_loss, has_aux=True)(params)
  p = _their_params(params)
  (their, their_y), their_grads = jax.value_and_grad(their_loss, has_aux=True)(p)
  return (loss, y, _their_params(grads)), (their, their_y, their_grads)


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_default_retrieval_model_is_the_authors_float64(curve):
  """Outputs, loss and every parameter gradient match theirs to 1e-10 (relative)."""
  with helpers.x64():
    (loss, y, grads), (their, their_y, their_grads) = _both(curve)
    np.testing.assert_allclose(y, their_y, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(loss, their, rtol=1e-12)
    if CURVES[curve][1] in ("sum", "softmax"):     # no β: its gradient is zero on both sides
      their_grads = dict(their_grads, W_b=grads["W_b"], b_b=grads["b_b"])
    chex.assert_trees_all_close(grads, their_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("curve,overrides", [
    ("tanh-fwm", {"fwm_normalize_first": True}),
    ("tanh-fwm", {"readout_eps": 1e-6}),
    ("dpfp1-delta", {"sum_query_eps": 0.0}),
    ("favor64-sum", {"favor_scaling": "performer"}),
])
def test_each_option_departs_from_the_authors_float64(curve, overrides):
  """Each named option computes another function than the authors' (the options of
  docs/departures.md), so the default's match above is not vacuous."""
  with helpers.x64():
    (_, y, _), (_, their_y, _) = _both(curve, **overrides)
    assert not np.allclose(y, their_y, rtol=1e-9, atol=1e-12), overrides


def test_fwp_before_options_build_the_old_model():
  """qk_bias=False, readout_affine=True: no biases on W_k, W_q; a LayerNorm scale and bias."""
  with helpers.x64():
    _, params, _ = _model("tanh-fwm", qk_bias=False, readout_affine=True)
    assert "bias" not in params["k_proj"] and "bias" not in params["q_proj"]
    assert set(params["layer_norm"]) == {"scale", "bias"}
    _, params, _ = _model("tanh-fwm")
    assert "layer_norm" not in params and "bias" in params["q_proj"]


def test_before_variant_is_the_model_old_runs_computed():
  """`<curve>:before` sets exactly the values a config.json without the new fields means
  (ADDED_FIELDS), so the committed records' runs stay finished under it; a bad variant is named."""
  config = associative_recall.get_config("dpfp1-delta:before")
  assert config.curve == "dpfp1-delta"
  for name, value in associative_recall.BEFORE.items():
    assert config.model[name] == value
    assert retrieval_task.ADDED_FIELDS[f"model.{name}"] == value, name
  with pytest.raises(ValueError, match="'befor'.*authors, before"):
    associative_recall.get_config("dpfp1-delta:befor")


def test_resume_ignores_new_fields_a_model_never_reads():
  """A run saved before the FAVOR+ fields resumes when its model has no FAVOR+ (the fields are
  inert), and is refused when it has (its function changed)."""
  from experiments import rundir
  for curve, refused in (("linear-delta:before", False), ("favor64-sum:before", True)):
    saved = associative_recall.get_config(curve).to_dict()
    for name in ("favor_scaling", "favor_eps", "favor_stabilize"):
      del saved["model"][name]
    current = associative_recall.get_config(curve.split(":")[0])
    current.model.update({k: v for k, v in associative_recall.BEFORE.items()
                          if not k.startswith("favor")})
    current = current.to_dict()
    if refused:
      with pytest.raises(ValueError, match="model.favor_scaling: 'performer' -> 'none'"):
        rundir.check_resumable(saved, current, retrieval_task)
    else:
      rundir.check_resumable(saved, current, retrieval_task)
