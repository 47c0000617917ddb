#!/usr/bin/env bash
# Runs the paper's associative-retrieval curves and writes results/ with experiments.report.
#
#   bash scripts/reproduce.sh            # the budget grid that made results/ (2-core CPU,
#                                        # ~7 h of run time summed over runs)
#   FULL=1 bash scripts/reproduce.sh     # the paper's grid: S = 20..600 / 20..200 step 20,
#                                        # 3 seeds, up to 100k steps (days on a CPU)
#   GRID=knee bash scripts/reproduce.sh  # issue 16's dense grid around each capacity knee: S
#                                        # every 20 (softmax 60), 3 seeds, 20,000-step budget,
#                                        # into runs/knee; the report merges it into results/
#   GRID=custom SETTINGS=2 S2=num_keys=40 SETTING2="dpfp1-delta" SEEDS=1,2 STEPS=500 \
#     bash scripts/reproduce.sh          # any sub-grid (S1/S2: sweeps; SETTING1/2: curve lists)
#   GRID=forget bash scripts/reproduce.sh  # does a forget gate help the sum rule where keys
#                                        # repeat? setting 2, sum and delta with and without a
#                                        # gate, S = 20, 40, 80 (FORGET_S), 3 seeds, into runs/forget and
#                                        # results/forget/ (docs/rules.md)
# Relaunching resumes: finished points are skipped, interrupted ones continue. PARALLEL sets how
# many points of one sweep run at once (local processes). The small files of every finished run
# are kept in results/runs/<name of RUNS>/ (experiments.records) and restored at the start, so a
# relaunch on a fresh machine (or session) skips what any earlier one finished.
#
# VARIANT=before (the default): the model that made the committed results/ (fwp's choices before
# it took the authors' defaults; configs/associative_recall.py BEFORE, docs/departures.md).
# VARIANT=authors: fwp's defaults, the authors' model, into <RUNS>-authors, its records in
# results/runs/<name>-authors/ and its report in results/authors/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VARIANT=${VARIANT:-before}
case $VARIANT in
  before) SUFFIX=:before; TAG=""; DEFAULT_OUT=results ;;
  authors) SUFFIX=""; TAG=-authors; DEFAULT_OUT=results/authors ;;
  *) echo "VARIANT must be before or authors, got '$VARIANT'" >&2; exit 2 ;;
esac
OUT=${OUT:-$DEFAULT_OUT}
case ${GRID:-budget} in
  knee) RUNS=${RUNS:-runs/knee$TAG} ;;
  forget) RUNS=${RUNS:-runs/forget$TAG}; OUT=${OUT%/}/forget ;;
  *) RUNS=${RUNS:-runs/reproduce$TAG} ;;
esac
PARALLEL=${PARALLEL:-2}
RECORDS=results/runs/$(basename "$RUNS")
PREVIOUS=()
"$PY" -m experiments.records restore "$RECORDS" "$RUNS"
S1_CHEAP="softmax linear-sum dpfp1-sum dpfp2-sum dpfp3-sum favor64-sum favor128-sum"
S1_CURVES="$S1_CHEAP favor512-sum"
S2_CURVES="dpfp1-sum linear-delta dpfp1-delta dpfp2-delta favor64-delta favor128-delta"
S2_CURVES="$S2_CURVES dpfp1-fwm tanh-fwm"

run() {  # setting curve sweep seeds max_steps
  "$PY" launch.py --config="configs/associative_recall.py:$2$SUFFIX" --config.setting="$1" \
    --config.max_steps="$5" --sweep="$3" --seeds="$4" \
    --parallel="$PARALLEL" --workdir="$RUNS/setting$1/$2"
}

grid() {  # setting curves sweep seeds max_steps: run every curve of the list
  for curve in $2; do run "$1" "$curve" "$3" "$4" "$5"; done
}

if [[ "${FULL:-0}" == 1 ]]; then
  grid 1 "$S1_CURVES" "num_keys=20:600:20" 1,2,3 100000
  grid 2 "$S2_CURVES" "num_keys=20:200:20" 1,2,3 100000
elif [[ "${GRID:-budget}" == knee ]]; then
  # The authors' stopping rule (eval loss <= 0.001, or more than 10 evals without a new best) with
  # a 20,000-step budget. The setting-1 knees first (the knee table), cheapest first; the FWM
  # curves last (recurrent only, and slow to learn at any S).
  K=${KNEE_STEPS:-20000}
  grid 1 "linear-sum" "num_keys=20:120:20" 1,2,3 "$K"
  grid 1 "dpfp1-sum" "num_keys=80:220:20" 1,2,3 "$K"
  grid 1 "dpfp2-sum" "num_keys=200:340:20" 1,2,3 "$K"
  grid 1 "dpfp3-sum" "num_keys=280:440:20" 1,2,3 "$K"
  grid 2 "linear-delta" "num_keys=40:120:20" 1,2,3 "$K"
  grid 1 "softmax" "num_keys=300:600:60" 1,2,3 "$K"
  grid 2 "dpfp1-delta dpfp2-delta" "num_keys=20:200:20" 1,2,3 "$K"
  grid 2 "dpfp1-fwm tanh-fwm" "num_keys=20,40" 1,2,3 "$K"
  # Points run here replace the committed budget-grid rows for the same (curve, S, seed).
  [[ -f $OUT/associative_recall.csv ]] && PREVIOUS=(--previous=$OUT/associative_recall.csv)
elif [[ "${GRID:-budget}" == forget ]]; then
  # The knee grid's stopping rule and budget; the gated curves beside their ungated rules (the
  # gated ones sum-normalise φ as the delta rule does: linear-sum-sum isolates the gate).
  K=${KNEE_STEPS:-20000}
  F=${FORGET_S:-num_keys=20,40,80}
  grid 2 "linear-gated_sum linear-sum" "$F" 1,2,3 "$K"
  # The control: the sum rule sum-normalised as the gated curves are, labelled sumnorm.
  "$PY" launch.py --config="configs/associative_recall.py:linear-sum$SUFFIX" --config.setting=2 \
    --config.model.normalization=sum --config.curve=linear-sum-sumnorm --config.max_steps="$K" \
    --sweep="$F" --seeds=1,2,3 --parallel="$PARALLEL" \
    --workdir="$RUNS/setting2/linear-sum-sumnorm"
  grid 2 "linear-gated_delta linear-delta" "$F" 1,2,3 "$K"
elif [[ "${GRID:-budget}" == custom ]]; then
  for setting in ${SETTINGS:-1 2}; do
    if [[ $setting == 1 ]]; then
      grid 1 "${SETTING1:-$S1_CURVES}" "${S1:?set S1, e.g. num_keys=20,60}" \
        "${SEEDS:-1}" "${STEPS:-3000}"
    else
      grid 2 "${SETTING2:-$S2_CURVES}" "${S2:?set S2, e.g. num_keys=20,40}" \
        "${SEEDS:-1}" "${STEPS:-3000}"
    fi
  done
else
  # The budget grid behind results/: 3,000 steps per run unless noted, seed 1 everywhere, seeds
  # 2 and 3 where runs are cheap and the claims turn. See docs/associative_retrieval.md.
  grid 1 "$S1_CURVES" "num_keys=20,60,100,200,300" 1 3000
  grid 1 "$S1_CHEAP" "num_keys=400,600" 1 3000
  grid 1 "favor512-sum" "num_keys=400,600" 1 1000           # ~1 s/step at S = 600
  grid 2 "dpfp1-sum linear-delta dpfp1-delta dpfp2-delta favor64-delta favor128-delta" \
    "num_keys=20,40,80,120,200" 1 3000
  grid 2 "dpfp1-fwm tanh-fwm" "num_keys=20,40" 1 3000
  grid 2 "dpfp1-fwm" "num_keys=80" 1 3000
  grid 2 "dpfp1-fwm" "num_keys=120,200" 1 1000               # 0.7 steps/s at S = 200
  grid 2 "tanh-fwm" "num_keys=80,120,200" 1 1000             # batch 128; ~0.5 steps/s at S = 200
  # Seeds 2 and 3.
  grid 1 "$S1_CHEAP" "num_keys=20,60,100,200" 2,3 3000
  grid 1 "softmax linear-sum dpfp1-sum dpfp2-sum" "num_keys=300" 2,3 3000
  grid 2 "dpfp1-sum linear-delta dpfp1-delta dpfp2-delta" "num_keys=20,40,80,120,200" 2,3 3000
  grid 2 "favor64-delta favor128-delta" "num_keys=200" 2,3 3000
fi
"$PY" -m experiments.records save "$RUNS" "$RECORDS"
REPORT=("$RUNS")
if [[ $VARIANT == authors ]]; then
  # results/authors/ holds every authors-model run: the budget grid's and the knee grid's.
  for other in runs/reproduce-authors runs/knee-authors; do
    [[ -d $other && $other != "$RUNS" ]] && REPORT+=("$other")
  done
  PREVIOUS=()
fi
"$PY" -m experiments.report "${REPORT[@]}" "${PREVIOUS[@]}" --out="$OUT"
