#!/usr/bin/env bash
# The checks that need a GPU, in one go, most important first; each step has its own time limit so a
# slow step cannot starve the rest. JSON results and the profile table are written to OUT_DIR.
#
#   benchmarks/gpu_checks.sh OUT_DIR [PARITY_DIR] 2>&1 | tee OUT_DIR.log   (repository root; PYTHON=python3)
#
# 1. HART text-to-image at the official 1024px config in bf16: latency at batch 1, images/s at batch 8
#    on the eager and the fast path (the numbers benchmarks/RESULTS.md asks for), then the compiled path
#    (CUDA graphs; its compilation is timed apart), batch 16 and one profiled batch-1 generation;
# 2. the parity tool on CUDA (fp32, TF32 off) for every fixture under PARITY_DIR, eager, fast and compiled;
# 3. the shipped default unified model's eval on CUDA.
set -u
out=${1:?usage: benchmarks/gpu_checks.sh OUT_DIR [PARITY_DIR]}
parity=${2:-../shared/parity}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

step "official config, bf16 (head and VAE under bf16 autocast), batch 1 and 8, eager and fast paths"
timeout 240 $py benchmarks/bench_t2i.py --config official --dtype bf16 --autocast bf16 --batch-sizes 1,8 \
    --paths eager,fast --decode-dtype bf16 --json "$out/official_bf16.json"

step "parity on CUDA: eager, fast"
for fixture in "$parity"/*/; do
    for path in eager fast; do
        timeout 60 $py -m hart_core.parity "$fixture" --device cuda --path $path | grep -v "^ok " || true
    done
    echo "bf16 VAE decode on the fast path (inference.image is expected to miss the fp32 tolerance):"
    timeout 60 $py -m hart_core.parity "$fixture" --device cuda --path fast --decode-dtype bf16 | grep "image" || true
done

step "official config, bf16, compiled path (CUDA graphs), batch 1 and 8"
timeout 420 $py benchmarks/bench_t2i.py --config official --dtype bf16 --autocast bf16 --batch-sizes 1,8 \
    --paths compiled --decode-dtype bf16 --warmup 2 --iters 5 --json "$out/official_bf16_compiled.json"

step "default unified model eval on CUDA"
timeout 90 $py -m recipes.cli eval --device cuda --quiet --out "$out/eval_cuda.json"

step "official config, bf16, batch 16; profile of one batch-1 generation"
timeout 120 $py benchmarks/bench_t2i.py --config official --dtype bf16 --batch-sizes 16 --iters 3 \
    --json "$out/official_bf16_b16.json"
timeout 120 $py benchmarks/bench_t2i.py --config official --dtype bf16 --batch-sizes 1 --iters 1 \
    --profile "$out/profile_official_bf16_b1.txt"
step "done"
