"""The algorithmic tasks at a size a 2-core CPU trains in minutes (results/algorithmic.md).

  python launch.py --config=configs/algorithmic_cpu.py:code5-linear-delta_rnn --workdir=runs/c5

Names as configs/algorithmic.py (`<problem>-<model>`, any code<n> or listops<d>). Smaller
problems and models than the authors': code execution with 20 statements per program (~95
tokens; the authors' 100), ListOps at the depth named (results/algorithmic.md uses listops6);
2 layers, d_model 128, 4 heads × 32, feed-forward 256 (LSTM: 2 × 128, embedding 64); batch 32,
Adam 1e-3 (β2 0.995, ε 1e-9, 100 warm-up steps), 1,000 steps, an eval every 100 on 500 valid
examples; code execution selects by print accuracy (its sequence accuracy stays near 0 at this
budget). About 5-10 minutes a run here (2 cores).
Everything else is the authors' (configs/algorithmic.py).
"""

from configs import algorithmic


def get_config(argument: str = "code5-linear-delta"):
  c = algorithmic.base_config()
  c.code_length = 20
  c.batch_size = 32
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.max_steps = 1000
  c.eval_every = 100
  c.checkpoint_every = 100
  c.select_by = "print"
  c.valid_size = 500
  c.eval_batch_size = 100
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.embed_size = 64
  c.model.num_heads = 4
  c.model.d_head = 32
  c.model.d_ff = 256
  # Measured here (2-core CPU, code5, B 32, T 134): the recurrent form of the Delta Net's step
  # 0.35 s, chunked 0.44 s, parallel 1.13 s.
  c.model.form = "recurrent"
  return algorithmic.apply_name(c, argument)
