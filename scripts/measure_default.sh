#!/usr/bin/env bash
# Every measurement behind the README's export, runtime and preprocessing numbers, in one go, on the
# bundled model. Run it on an otherwise idle machine (the README's speed figures assume that):
#
#     scripts/measure_default.sh ../shared/data/fer2013 ../shared/media/test.mp4 runs/measure
#
# It writes each command's output to OUT/<step>.txt (and JSON beside it), so every figure in the README
# can be traced to the line that printed it.
set -euo pipefail
DATA=${1:-../shared/data/fer2013}
VIDEO=${2:-../shared/media/test.mp4}
OUT=${3:-runs/measure}
MODEL=fer_edge/models/fer_edge_default.onnx
mkdir -p "$OUT"
step() {  # step NAME COMMAND...: run COMMAND, echo it, keep its output in OUT/NAME.txt
  local name=$1; shift
  echo "== $name: $*"
  { echo "\$ $*"; "$@"; } 2>&1 | tee "$OUT/$name.txt"
}
# Accuracy of the bundled model (its recommended TTA, then the other two).
step eval_default fer-eval "$MODEL" --data "$DATA" --split public --json "$OUT/eval_default.json" --plot "$OUT/confusion.png"
step eval_default_none fer-eval "$MODEL" --data "$DATA" --split public --tta none --json "$OUT/eval_default_none.json"
step eval_default_tencrop fer-eval "$MODEL" --data "$DATA" --split public --tta tencrop --json "$OUT/eval_default_tencrop.json"
# FP16 and both INT8 flavours from the bundled FP32 ONNX (no torch needed for this path).
step export_trt fer-export "$MODEL" -o "$OUT/fer_edge_default.onnx" --fp16 --int8 --calib "$DATA" --triton-repo "$OUT/triton"
step export_cpu fer-export "$MODEL" -o "$OUT/fer_edge_default.onnx" --int8 --target cpu --calib "$DATA"
for f in fp16 int8 int8_cpu; do
  step "eval_$f" fer-eval "$OUT/fer_edge_default_$f.onnx" --data "$DATA" --split public --json "$OUT/eval_$f.json"
done
# CPU throughput: FP32 against both INT8 flavours in one run (batch 64), and fer-bench's own comparison.
step quantization python benchmarks/quantization.py "$MODEL" --int8-cpu "$OUT/fer_edge_default_int8_cpu.onnx" \
  --int8-tensorrt "$OUT/fer_edge_default_int8.onnx" --calib "$DATA" --batch 64 --json "$OUT/quantization.json"
step bench_int8 fer-bench --model "$MODEL" --model "$OUT/fer_edge_default_int8_cpu.onnx" --batch-sizes 1,64 --seconds 3 \
  --json "$OUT/bench_int8.json"
# The main job, with the video, and the runtime's overhead over a bare session.run.
step bench fer-bench --video "$VIDEO" --json "$OUT/bench.json"
step video fer-video "$VIDEO" --out-dir "$OUT/video"
step video_notta fer-video "$VIDEO" --out-dir "$OUT/video_notta" --tta none
step video_every1 fer-video "$VIDEO" --out-dir "$OUT/video_every1" --every 1
step runtime_overhead python benchmarks/runtime.py --seconds 10
# The fused C preprocessing against the per-face OpenCV loop.
step preprocess python benchmarks/preprocess.py --json "$OUT/preprocess.json"
