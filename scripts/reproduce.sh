#!/usr/bin/env bash
# Runs the paper's associative-retrieval curves and writes results/ with experiments.report.
#
#   bash scripts/reproduce.sh            # the budget grid that made results/ (2-core CPU)
#   FULL=1 bash scripts/reproduce.sh     # the paper's grid: S = 20..600 / 20..200 step 20,
#                                        # 3 seeds, up to 100k steps (days on a CPU)
# Relaunching resumes: finished points are skipped, interrupted ones continue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/reproduce}
PARALLEL=${PARALLEL:-2}
if [[ "${FULL:-0}" == 1 ]]; then
  S1="num_keys=20:600:20"; S2="num_keys=20:200:20"; SEEDS=1,2,3; STEPS=100000
else
  S1=${S1:-"num_keys=20,60,100,200,300"}; S2=${S2:-"num_keys=20,40,80"}; SEEDS=${SEEDS:-1}
  STEPS=${STEPS:-3000}
fi
SETTING1=${SETTING1:-"softmax linear-sum dpfp1-sum dpfp2-sum dpfp3-sum favor64-sum favor128-sum favor512-sum"}
SETTING2=${SETTING2:-"dpfp1-sum linear-delta dpfp1-delta dpfp2-delta favor64-delta favor128-delta dpfp1-fwm tanh-fwm"}
run() {  # setting curve sweep
  "$PY" launch.py --config="configs/associative_recall.py:$2" --config.setting="$1" \
    --config.max_steps="$STEPS" --sweep="$3" --seeds="$SEEDS" \
    --parallel="$PARALLEL" --workdir="$RUNS/setting$1/$2"
}
SETTINGS=${SETTINGS:-1 2}   # e.g. SETTINGS=2 runs only setting 2; S1, S2, SETTING1, SETTING2 (curve
                            # lists) and SEEDS override the budget grid, see README Results
for setting in $SETTINGS; do
  if [[ $setting == 1 ]]; then curves=$SETTING1; grid=$S1; else curves=$SETTING2; grid=$S2; fi
  for curve in $curves; do run "$setting" "$curve" "$grid"; done
done
"$PY" -m experiments.report "$RUNS" --out=results
