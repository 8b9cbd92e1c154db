#!/usr/bin/env bash
# The prepared GPU check, run on a CUDA machine from the repository root after `cargo xtask
# device-bundle` here (which builds everything into .device-bin/, since that machine has no Rust).
# It needs python3 with torch 2.11 (and transformers for the reference), and writes JSON and logs
# into $OUT (default /tmp/gpu-check):
#   1. the CUDA tests: Gemma and the towers in bf16 on CUDA against f32 on CPU;
#   2. our training, generation and vision benchmarks on the paper's 2B + CLIP-L/336 shapes
#      (stage 1 at 8x640, stage 2 at 4x1024 and 8x1024, the targets);
#   3. the Python reference (hf_llava_baseline.py) on the same GPU, for the ratios.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
BIN=.device-bin
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export LLAVA_FIXTURES="$PWD/fixtures/hf-parity"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

status=0
for test in "$BIN"/test-*; do
    echo "== $test"
    "$test" --test-threads 1 2>&1 | tee -a "$OUT/tests.log" | tail -3 || status=1
done
"$BIN/llava" parity fixtures/hf-parity/* 2>&1 | tee "$OUT/parity.log" | tail -1

for shape in "1 8 640" "2 4 1024" "2 8 1024"; do
    set -- $shape
    timeout 240 "$BIN/llava" bench-train --preset paper-2b-clip --stage "$1" --micro-batch "$2" --seq "$3" \
        --steps 8 --warmup 3 --device cuda --json | tee "$OUT/rust_train_s$1_$2x$3.json"
done
"$BIN/llava" bench-vision --preset paper-2b-clip --device cuda --batch 32 | tee "$OUT/rust_vision.json"
"$BIN/llava" bench-generate --preset paper-2b-clip --device cuda --prompt-len 608 --new-tokens 128 \
    | tee "$OUT/rust_generate.json"

if python3 -c 'import transformers' 2>/dev/null && [ -f "$BIN/hf_llava_baseline.py" ]; then
    RESULTS_DIR="$OUT" timeout 300 python3 "$BIN/hf_llava_baseline.py" > "$OUT/hf_baseline.log" 2>&1 || true
    cat "$OUT/hf_baseline.json" 2>/dev/null
fi
exit $status
