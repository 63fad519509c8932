#!/usr/bin/env bash
# The GPU measurements of issue 15 in one go, within 8 minutes on one lent GPU (H200-class):
#   1. training step: Lightning vs plain PyTorch (ddpm_unet, batch 128, bf16); a torch.profiler trace of 5 steps
#      (<out>/trace_*.json.gz, open in https://ui.perfetto.dev) with the breakdown: GPU kernels, GPU idle while the
#      host dispatches, host-only time; then eager vs model.compile=true;
#   2. sampling images/s, batch 256: DDIM-100 vs DPM-Solver++(2M)-10 / 20, unguided and guided (w = 1),
#      fp32 and bf16 (speed-ups, guided cost and minutes per 50k samples);
#   3. evaluation: Inception features, precision/recall and KID at 50k x 50k;
#   4. if time is left: DPM-Solver++(2M)-20 guided in bf16, eager vs sampler.compile=true (static shapes, CUDA
#      graphs); one F_8 / F_1/8 k-means run at paper size (torch, on the GPU); the loss ratios (PCL / CBDM vs DDPM).
# Every comparison is interleaved (A B A B ..., median of the paired ratios; see benchmarks/bench.py). Each
# section has its own time limit, and bench.py merges each finished section into <out>/<device>.json, so a
# section that runs over loses only itself.
#
#   bash benchmarks/gpu.sh [out dir, default benchmarks/results]      # PYTHON=... to pick the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_sh.log"
START=$(date +%s)

section() {  # section <seconds> <bench.py arguments...>
    local limit=$1; shift
    echo "=== $(date -u +%FT%TZ) bench.py $* (limit ${limit}s)" | tee -a "$LOG"
    timeout --signal=INT --kill-after=10 "$limit" "$PYTHON" benchmarks/bench.py --out "$OUT" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "=== section failed or timed out (rc $rc): $*" | tee -a "$LOG"
}

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)" \
    | tee "$LOG" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >>"$LOG" 2>&1 || true

section 90 --only train --rounds 3 --warmup 3 --reps 12
section 50 --only profile --warmup 3 --profile-steps 5
section 175 --only compile --rounds 1 --compile-warmup 8 --reps 16  # one round: each compiles afresh (1-2 min)
section 100 --only samplers --rounds 3 --sample-batch 256 --samplers ddim-100,dpmpp2m-10,dpmpp2m-20
section 60 --only eval --rounds 1 --reps 3 --fe-images 5000 --pr-n 50000
LEFT=$(( 475 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 150 ]; then  # DPM-Solver++(2M)-20 guided bf16, eager vs sampler.compile=true (CUDA graphs)
    section 140 --only sampler-compile --rounds 3 --sample-batch 256 --samplers dpmpp2m-20 --precisions bf16
else
    echo "=== skipped sampler-compile: ${LEFT}s left of the 8 minutes" | tee -a "$LOG"
fi
LEFT=$(( 475 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 100 ]; then  # one F_8 / F_1/8 k-means run at paper size (100k x 2048, 2000 clusters), torch on the GPU
    section 40 --only kmeans --kmeans-n 100000 --kmeans-k 2000
else
    echo "=== skipped kmeans: ${LEFT}s left of the 8 minutes" | tee -a "$LOG"
fi
LEFT=$(( 475 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 60 ]; then
    section "$LEFT" --only losses --rounds 2 --warmup 3 --reps 8
else
    echo "=== skipped losses: ${LEFT}s left of the 8 minutes" | tee -a "$LOG"
fi
echo "=== done in $(( $(date +%s) - START ))s; results: $(ls "$OUT"/*.json)" | tee -a "$LOG"
