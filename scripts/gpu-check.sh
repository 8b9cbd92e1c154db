#!/usr/bin/env bash
# The prepared GPU check, run on a CUDA machine from the repository root after `cargo xtask
# device-bundle` here (which builds stripped binaries into .device-bin/, since that machine has no
# Rust, and packs them as .device-bin.tar.xz: carry that, this script unpacks it). It needs python3
# with torch 2.11 (and transformers for the reference). Everything lands in $OUT (default
# /tmp/gpu-check) in a handful of files:
#   log.txt        every step's output, with the seconds it took
#   results.jsonl  one JSON object per measurement of ours, tagged with its step
#   hf_*.json      the Python reference (hf_llava_baseline.py) on the same GPU
#   profile_*.tsv  device time per kernel: our stage-1 and stage-2 steps, the reference's stage 2
#   tests.log      the CUDA tests (bf16 on CUDA against f32 on CPU) and the parity fixtures
# The steps run in order of importance (the CUDA tests that decide the defaults, the training
# steps with and without our kernels and NCCL, the reference, generation, packing, LoRA and
# checkpointing peaks, then the rest), each under its own time limit, and the whole check stops
# starting new steps once BUDGET seconds (default 420) have gone, so a device lease is never
# overrun. PRESET (paper-2b-clip) and DEVICE (cuda) can be changed for a dry run on a CPU;
# QUICK=1 runs only the training benchmarks, the reference and the tiny trainer.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
BUDGET=${BUDGET:-420}
PRESET=${PRESET:-paper-2b-clip}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
BIN=.device-bin
# `cargo xtask device-bundle` packs the binaries as .device-bin.tar.xz (the device tool carries
# at most 64 MiB with the working tree).
if [ ! -d "$BIN" ] && [ -f "$BIN.tar.xz" ]; then
    tar -xJf "$BIN.tar.xz" || { echo "cannot unpack $BIN.tar.xz"; exit 1; }
fi
mkdir -p "$OUT"
LOG="$OUT/log.txt"
RESULTS="$OUT/results.jsonl"
: >"$LOG"
: >"$RESULTS"
TORCH_LIB=$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export LLAVA_FIXTURES="$PWD/fixtures/hf-parity"
export PYTHONUNBUFFERED=1
# Our CUDA kernels and CUDA-graph decoding are off by default until a run like this one has passed
# their tests (foundation::cuda::ON_BY_DEFAULT): switch them on here; the *_libtorch and *_eager
# steps switch them off again for the same-run comparison.
export LLAVA_CUDA_KERNELS=1 LLAVA_CUDA_GRAPHS=1

# step NAME LIMIT COMMAND...: runs COMMAND under min(LIMIT, what is left of BUDGET), logs it, and
# appends each JSON line it prints to results.jsonl with "step": NAME.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 15)); then
        echo "== $name: skipped, budget spent" | tee -a "$LOG"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s, at ${SECONDS}s)" | tee -a "$LOG"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/.step" 2>&1
    local rc=$?
    cat "$OUT/.step" >>"$LOG"
    tail -5 "$OUT/.step"
    grep '^{.*}$' "$OUT/.step" | sed "s/^{/{\"step\":\"$name\",/" >>"$RESULTS"
    echo "== $name: rc $rc in $((SECONDS - start))s" | tee -a "$LOG"
}

# add_json NAME FILE: appends an indented JSON object from FILE to results.jsonl as one line.
add_json() {
    [ -f "$2" ] || return 0
    "$PYTHON" -c 'import json, sys; o = {"step": sys.argv[1], **json.load(open(sys.argv[2]))}; print(json.dumps(o))' \
        "$1" "$2" >>"$RESULTS"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"

train=("$BIN/llava" bench-train --preset "$PRESET" --device "$DEVICE" --json)
step smoke 60 "$BIN/llava" bench-train --preset bench-small --device "$DEVICE" --steps 2 --warmup 1 --json
# First the tests of our kernels, CUDA graphs and varlen attention: they decide whether those may
# be switched on by default (foundation::cuda::ON_BY_DEFAULT).
for test in "$BIN"/test-*-cuda; do
    step "$(basename "$test")" 90 "$test" --test-threads 1 --nocapture
    cat "$OUT/.step" >>"$OUT/tests.log"
done
step train_s2_4x1024 120 "${train[@]}" --stage 2 --micro-batch 4 --seq 1024 --steps 8 --warmup 3 \
    --profile "$OUT/profile_rust_s2_4x1024.tsv"
# The same step with our CUDA kernels off (libtorch's operations): the kernels' gain, same run.
step train_s2_4x1024_libtorch 120 env LLAVA_CUDA_KERNELS=0 "${train[@]}" --stage 2 --micro-batch 4 \
    --seq 1024 --steps 8 --warmup 3
# The same step as one rank of an NCCL group of one: data parallel's collectives (broadcast,
# reduce-scatter, norm all-reduce, all-gather) against none, same run.
step train_s2_4x1024_nccl1 120 "${train[@]}" --stage 2 --micro-batch 4 --seq 1024 --steps 8 \
    --warmup 3 --dist-backend nccl
step train_s1_8x640 90 "${train[@]}" --stage 1 --micro-batch 8 --seq 640 --steps 8 --warmup 3 \
    --profile "$OUT/profile_rust_s1_8x640.tsv"
[ -z "${SKIP_HF:-}" ] && step hf_reference 200 env RESULTS_DIR="$OUT" "$PYTHON" scripts/hf_llava_baseline.py
if [ -z "${QUICK:-}" ]; then
    # Decoding through CUDA graphs against eager steps, in the same run; then batch 32 (evaluation).
    gen=("$BIN/llava" bench-generate --preset "$PRESET" --device "$DEVICE" --prompt-len 608)
    step generate 90 "${gen[@]}" --new-tokens 128
    step generate_eager 90 "${gen[@]}" --new-tokens 128 --decode eager
    step generate_b32 90 "${gen[@]}" --new-tokens 64 --batch 32 --runs 1
    step generate_b32_eager 90 "${gen[@]}" --new-tokens 64 --batch 32 --runs 1 --decode eager
    # Packed sequences against padded batches on the 665K mix's lengths.
    mix=("${train[@]}" --stage 2 --micro-batch 8 --seq 2048 --steps 6 --warmup 2 --length-mix)
    step train_mix 120 "${mix[@]}"
    step train_mix_pack 120 "${mix[@]}" --pack
    # LoRA (LLaVA's r 128) and activation checkpointing: peaks against `llava plan`.
    step train_lora 90 "${train[@]}" --stage 2 --micro-batch 4 --seq 1024 --steps 4 --warmup 2 --lora-r 128
    step train_ckpt 90 "${train[@]}" --stage 2 --micro-batch 4 --seq 1024 --steps 4 --warmup 2 \
        --activation-checkpointing
    step train_s2_8x1024 120 "${train[@]}" --stage 2 --micro-batch 8 --seq 1024 --steps 8 --warmup 3
    [ -z "${SKIP_HF:-}" ] && [ -z "${NO_REF_PROFILE:-}" ] &&
        step hf_profile 120 "$PYTHON" scripts/profile_reference.py "$OUT/profile_ref_s2_4x1024.tsv" 4 1024
    step vision 60 "$BIN/llava" bench-vision --preset "$PRESET" --device "$DEVICE" --batch 32

    for test in "$BIN"/test-*; do
        [[ $test == *-cuda ]] && continue
        step "$(basename "$test")" 90 "$test" --test-threads 1
        cat "$OUT/.step" >>"$OUT/tests.log"
    done
    step parity 60 "$BIN/llava" parity fixtures/hf-parity/*/
    cat "$OUT/.step" >>"$OUT/tests.log"
fi

# The trainer itself on the GPU: the tiny preset's stage 2 (bf16 weights, f32 masters), then the
# held-out synthetic questions through the evaluation runner (on the CPU).
rm -rf /tmp/gpu-check-tiny
step tiny_train 120 "$BIN/llava" train --stage 2 --device "$DEVICE" --skip-pretraining \
    --max-steps 120 --output /tmp/gpu-check-tiny
add_json tiny_summary /tmp/gpu-check-tiny/summary.json
step tiny_eval 60 "$BIN/llava" eval-synthetic --model /tmp/gpu-check-tiny/model \
    --data /tmp/gpu-check-tiny/data --report /tmp/gpu-check-tiny/report.json
add_json tiny_report /tmp/gpu-check-tiny/report.json

# The reference at the batch sizes the H100 could not hold, if time is left (H200: 139 GB).
if [ -z "${SKIP_HF:-}" ] && [ -z "${QUICK:-}" ]; then
    mkdir -p /tmp/hf8
    step hf_reference_8x1024 150 env RESULTS_DIR=/tmp/hf8 FINETUNE_B=8 PRETRAIN_B=8 GEN_TOKENS=8 GEN_BATCH=0 \
        "$PYTHON" scripts/hf_llava_baseline.py
    [ -f /tmp/hf8/hf_baseline.json ] && cp /tmp/hf8/hf_baseline.json "$OUT/hf_baseline_8x1024.json"
fi
rm -f "$OUT/.step"
echo "== done at ${SECONDS}s" | tee -a "$LOG"
