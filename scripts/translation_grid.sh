#!/usr/bin/env bash
# The CPU translation grid behind results/translation.* (issue 25; the paper's Table 1 at the
# size of configs/translation.py, Debian's message catalogs): each model of MODELS × SEEDS,
# PARALLEL runs at a time, then the report.
#
#   bash scripts/translation_grid.sh
#   MODELS="standard dpfp2" SEEDS="1 2 3" bash scripts/translation_grid.sh
# Relaunching resumes: finished runs are skipped, interrupted ones continue. Finished runs are
# kept as records in results/runs/translation (restored first, so a fresh machine continues the
# grid instead of starting it over).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/translation}
OUT=${OUT:-results}
RECORDS=results/runs/$(basename "$RUNS")
PARALLEL=${PARALLEL:-2}
MODELS=${MODELS:-"standard linear dpfp2 performer32 performer128 linear-delta"}
SEEDS=${SEEDS:-1}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
mkdir -p "$RUNS"
if [[ -d $RECORDS ]]; then "$PY" -m experiments.records restore "$RECORDS" "$RUNS"; fi
status=0
for model in $MODELS; do for seed in $SEEDS; do echo "$model $seed"; done; done |
  xargs -P "$PARALLEL" -L 1 sh -c '"$0" launch.py --config="configs/translation.py:$1" \
    --config.seed="$2" --workdir="'"$RUNS"'/$1/seed=$2" > "'"$RUNS"'.$1.$2.log" 2>&1 || \
    echo "failed: $1 seed $2 (see '"$RUNS"'.$1.$2.log)"' "$PY" || status=$?
"$PY" -m experiments.records save "$RUNS" "$RECORDS"
"$PY" -m experiments.report "$RUNS" --out="$OUT"
exit $status
