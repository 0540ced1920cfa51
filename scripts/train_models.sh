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
# The shipped default: the edge model, long schedule (about 50 s per epoch here).
run runs/edge_s0 --model vgg_edge --epochs 90 --seed 0
# Balance strategies under one short budget (vgg_edge, 2 epochs each); wall time and peak memory of each
# whole run (resampling included, on a cold resampling cache) go to runs/balance_*/resources.txt.
export -f run
export DATA
for b in none class-weight sampler ros smote smote-tomek smote-enn; do
  mkdir -p runs/balance_$b
  /usr/bin/time -f "$b: %e s wall, %M KB max RSS" -a -o runs/balance_$b/resources.txt \
    bash -c 'run "$@"' run runs/balance_$b --model vgg_edge --epochs 2 --balance $b --seed 0
done
# The paper's VGG as far as the session allowed (about 3 minutes per epoch here; 300 on a GPU in the paper).
run runs/paper_s0 --model vgg_paper --epochs "${PAPER_EPOCHS:-3}" --lr 0.03 --seed 0
