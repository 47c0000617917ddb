# %% [markdown]
# # A guided tour of fwp
#
# Run it whole (`python docs/tour.py`, about a minute on a 2-core CPU) or cell by cell in an editor
# that knows `# %%` cells (VS Code, PyCharm, Jupytext). The tests run it small
# (`FWP_TOUR_STEPS=8 FWP_TOUR_MAX_KEYS=60`), so it never rots. Three stops:
#
# 1. one rule, three forms: the recurrent scan, the parallel matrix products and the chunked form
#    compute the same function (float64);
# 2. a fast weight memory filling up: how many associations a key map of each size holds;
# 3. a tiny language model, trained in parallel, then decoded as an RNN whose state never grows.
#
# Everything here is the library (`fwp`) and the experiment code the launcher uses.

# %%
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fwp import feature_maps, ops  # noqa: E402

OUT = os.environ.get("FWP_TOUR_OUT") or tempfile.mkdtemp(prefix="fwp-tour-")
STEPS = int(os.environ.get("FWP_TOUR_STEPS", "2000"))   # language-model training steps (stop 3)
MAX_KEYS = int(os.environ.get("FWP_TOUR_MAX_KEYS", "800"))   # the largest memory of stop 2

# %% [markdown]
# ## 1. One rule, three forms
#
# The delta rule writes `W_t = W_{t-1} + β_t (v_t − W_{t-1} k_t) ⊗ k_t` and reads `y_t = W_t q_t`.
# `ops.delta_rule` computes it as a scan over time (`recurrent`, O(T) memory), as one block of
# matrix products (`parallel`, the linear Transformer's view), or block by block (`chunked`).
# In float64 they agree to rounding.

# %%
with jax.enable_x64(True):
  rng = np.random.default_rng(0)
  b, t, h, d_key, d_value = 2, 50, 2, 8, 4
  q = jnp.asarray(rng.normal(size=(b, t, h, d_key)))
  k = feature_maps.apply("elu_plus_one", jnp.asarray(rng.normal(size=(b, t, h, d_key))))
  k = k / k.sum(-1, keepdims=True)                      # sum normalisation, as the Delta Net
  v = jnp.asarray(rng.normal(size=(b, t, h, d_value)))
  beta = jax.nn.sigmoid(jnp.asarray(rng.normal(size=(b, t, h))))
  results = {form: ops.delta_rule(q, k, v, beta, form=form, chunk_size=16)
             for form in ("recurrent", "parallel", "chunked")}
  y_ref, w_ref = results["recurrent"]
  for form, (y, w) in results.items():
    print(f"delta rule, {form:>9}: max |y − y_recurrent| = {float(jnp.abs(y - y_ref).max()):.1e}"
          f", max |W_T − W_T,recurrent| = {float(jnp.abs(w - w_ref).max()):.1e}")
  for form in ("parallel", "chunked"):
    y, _ = ops.sum_rule(q, k, v, form=form, chunk_size=16)
    y_rec, _ = ops.sum_rule(q, k, v, form="recurrent")
    print(f"sum rule,   {form:>9}: max |y − y_recurrent| = {float(jnp.abs(y - y_rec).max()):.1e}")

# %% [markdown]
# ## 2. A fast weight memory filling up
#
# Write S random keys (d = 64 before φ), each with its own one-hot value, into one memory, then
# read every key back (`ops.read_final`: W_T φ(k)). A key is retrieved when its own value scores
# highest. φ sets the key space's dimension d_dot: ELU+1 keeps 64, DPFP-ν makes 2·64·ν. The larger
# d_dot, the more keys one memory keeps apart: ELU+1 starts confusing them from S ≈ 60, DPFP-1
# from ≈ 100, DPFP-2 and DPFP-3 hold hundreds. This is the paper's capacity argument (Section
# 6.1) without any training; this argmax reading is lenient, and with trained keys and the
# paper's retrieval loss the knees sit near d_dot (`results/associative_recall.md`). The delta
# rule (β = 1, sum-normalised keys, as the Delta Net) overwrites rather than only adds.

# %%
def retrieved(phi: str, nu: int, rule: str, num_keys: int, seed: int = 0) -> float:
  keys = jax.random.normal(jax.random.key(seed), (1, num_keys, 1, 64))
  k = feature_maps.apply(phi, keys, nu=nu)
  if rule == "delta":
    k = k / k.sum(-1, keepdims=True)
  values = jnp.eye(num_keys)[None, :, None, :]
  beta = jnp.ones((1, num_keys, 1)) if rule == "delta" else None
  read = ops.read_final(rule, k, k, values, beta, form="recurrent")      # [1, S, 1, S]
  return float(jnp.mean(jnp.argmax(read[0, :, 0], axis=-1) == jnp.arange(num_keys)))


sizes = [s for s in (20, 60, 100, 200, 400, 800) if s <= MAX_KEYS]
curves = {"linear (d_dot 64)": ("elu_plus_one", 1), "dpfp1 (128)": ("dpfp", 1),
          "dpfp2 (256)": ("dpfp", 2), "dpfp3 (384)": ("dpfp", 3)}
table = {}
for name, (phi, nu) in curves.items():
  table[name, "sum"] = [retrieved(phi, nu, "sum", s) for s in sizes]
table["dpfp1 (128)", "delta"] = [retrieved("dpfp", 1, "delta", s) for s in sizes]
print("fraction of keys retrieved, by number of stored keys S")
print(f"{'':>24}" + "".join(f"{s:>6}" for s in sizes))
for (name, rule), row in table.items():
  print(f"{name + ', ' + rule:>24}" + "".join(f"{x:>6.2f}" for x in row))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6, 3.5))
for (name, rule), row in table.items():
  ax.plot(sizes, row, "o-", ms=3, label=f"{name}, {rule} rule")
ax.set_xscale("log")
ax.set_xlabel("stored keys S")
ax.set_ylabel("fraction retrieved")
ax.set_title("One fast weight memory, random keys, no training")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "tour_memory.png"), dpi=110)
print(f"plot: {os.path.join(OUT, 'tour_memory.png')}")

# %% [markdown]
# ## 3. Train in parallel, generate as an RNN
#
# A one-layer Delta-Net language model on the bytes of CPython's pydoc topics, trained by the
# same loop `launch.py` runs (`experiments.train.train`, here for `FWP_TOUR_STEPS` steps), then
# read back from its checkpoint and decoded token by token: the prompt in one parallel pass, then
# one `model.step` per byte. Its state is the same few kilobytes at every position; a softmax
# Transformer's key/value cache grows with every token.

# %%
from configs import language_model as lm_configs  # noqa: E402
from experiments import generate, train  # noqa: E402
from experiments.tasks import language_model  # noqa: E402
from flax import nnx  # noqa: E402

config = lm_configs.get_config("linear-delta")
config.model.num_layers, config.model.d_model, config.model.d_ff = 1, 64, 256
config.model.num_heads, config.model.d_head = 4, 16
config.context, config.batch_size, config.warmup_steps = 64, 16, 0
config.max_steps = STEPS
config.eval_every = config.checkpoint_every = max(STEPS // 4, 1)
config.sliding_stride, config.tensorboard = 0, False
workdir = tempfile.mkdtemp(prefix="fwp-tour-lm-")      # checkpoints are not the tour's output
summary = train.train(config, workdir)
print(f"valid bits per byte after {summary['steps']} steps: {summary['valid_bits_per_byte']:.2f}")

_, model, _ = generate.load_run(workdir)
vocab = language_model.load_corpus(config).vocab
prompt = "The for statement"
ids = generate.generate(model, vocab.encode(prompt), 120, temperature=0.7, seed=0)
print(repr(prompt + vocab.decode(ids)))


def state_bytes(model_name: str, position: int) -> int:
  c = lm_configs.get_config(model_name)
  lm = nnx.eval_shape(lambda: language_model.build_model(c, nnx.Rngs(0)))   # shapes only
  state = jax.eval_shape(lambda: lm.init_state(1, cache_capacity=position))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


print("decoding state of configs/language_model.py's models (4 layers, d_model 128), in KB:")
for position in (128, 1024, 8192):
  fast, cache = (state_bytes(name, position) / 1024 for name in ("linear-delta", "transformer"))
  print(f"  after {position:>5} tokens: linear-delta {fast:8.1f}   transformer {cache:8.1f}")
