#!/usr/bin/env bash
# The CPU grid behind results/algorithmic.*: each model of MODELS on each problem of PROBLEMS
# × SEEDS with configs/algorithmic_cpu.py, PARALLEL runs at a time, then the report.
#
#   bash scripts/algorithmic_grid.sh
#   PROBLEMS=code5 MODELS="lstm linear-delta_rnn" SEEDS="1 2 3" bash scripts/algorithmic_grid.sh
# Relaunching resumes: finished runs are skipped, interrupted ones continue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/algorithmic}
PARALLEL=${PARALLEL:-2}
PROBLEMS=${PROBLEMS:-"code5 listops6"}
MODELS=${MODELS:-"linear-sum linear-delta linear-delta_rnn linear-rdn lstm transformer linear-delta_lstm"}
SEEDS=${SEEDS:-1}
mkdir -p "$RUNS"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for problem in $PROBLEMS; do for model in $MODELS; do for seed in $SEEDS; do
  echo "$problem-$model $seed"; done; done; done |
  xargs -P "$PARALLEL" -L 1 sh -c '"$0" launch.py --config="configs/algorithmic_cpu.py:$1" \
    --config.seed="$2" --workdir="'"$RUNS"'/$1/seed=$2" > "'"$RUNS"'/$1.$2.log" 2>&1 || \
    echo "failed: $1 seed $2 (see '"$RUNS"'/$1.$2.log)"' "$PY"
"$PY" -m experiments.report "$RUNS" --out=results
