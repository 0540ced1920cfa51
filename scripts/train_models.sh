#!/usr/bin/env bash
# The training runs behind the README's results table and the shipped model, in the order they were run
# on the project's 2-core CPU machine. Each run is resumable: rerun this script and finished runs are
# skipped, an interrupted one continues from its last epoch.
set -euo pipefail
DATA=${1:-../shared/data/fer2013}
run() {  # run OUT ARGS...: train unless OUT/metrics.json already covers every epoch
  local out=$1; shift
  if [ -f "$out/last.pt" ]; then
    fer-train --resume --out "$out" --no-progress || return 1
  else
    fer-train --data "$DATA" --out "$out" --no-progress "$@"
  fi
}
# The edge model, long schedule.
run runs/edge_s0 --model vgg_edge --epochs 100 --seed 0
# The paper's VGG as far as a CPU allows.
run runs/paper_s0 --model vgg_paper --epochs 30 --lr 0.03 --seed 0
# A second architecture for the ensemble.
run runs/half_s1 --model vgg_half --epochs 40 --seed 1
# Balance strategies under one short budget (vgg_edge, 5 epochs each).
for b in none class-weight sampler ros smote smote-tomek smote-enn; do
  run runs/balance_$b --model vgg_edge --epochs 5 --balance $b --seed 0
done
