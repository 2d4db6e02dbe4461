#!/usr/bin/env bash
# The fused Triton kernel of the memories on a GPU, in one call: hope-340m (bf16, batch 1) prefill and decoding with
# the kernel (memory_kernel=auto) beside the Llama twin; then the same with an older kernel ($OLD, a folder holding a
# modeling_hope/ whose kernel files are another commit's) or, without $OLD, with the PyTorch chunk loop (torch); then
# exactness (bench/gpu_check.py: the kernel against the PyTorch loop and the CPU, a left-padded batch through
# generate()). TRAIN=1 adds training throughput at 2048 (the PyTorch path: autograd never runs the kernel). Results go to
# $OUT. The first call of the float32 kernel in gpu_check.py compiles for about 110 s on an H100 (bf16 under 30 s).
set -u
OLD=${OLD:-}
. bench/gpu_env.sh
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
BENCH="-m modeling_hope.cli bench --device cuda --preset hope-340m --threads 0 --no-plot --repeats 3 \
    --sections prefill decode --train-lengths 512 2048 8192"
RESULTS=$(cd "$OUT" && pwd)
# this tree's bench in one process, as these budgets were set and run (a child per section adds its start-up; an
# older tree's bench knows no --no-isolate and runs in one process anyway)
ONE=--no-isolate
timeout 120 python3 $BENCH $ONE --memory-kernel auto --decode-contexts 512 2048 8192 32768 --budget 100 \
    --out "$RESULTS/hope_bench_gpu_kernel.json" 2>&1 | grep -v Warning
if [ -n "$OLD" ]; then  # run from $OLD: `python -m` puts the working directory first on the path
    (cd "$OLD" && timeout 100 python3 $BENCH --memory-kernel auto --decode-contexts 512 8192 --budget 80 \
        --out "$RESULTS/hope_bench_gpu_kernel_old.json" 2>&1 | grep -v Warning)
else
    timeout 150 python3 $BENCH $ONE --memory-kernel torch --decode-contexts 512 2048 8192 --budget 120 \
        --out "$RESULTS/hope_bench_gpu_torch.json" 2>&1 | grep -v Warning
fi
timeout 240 python3 bench/gpu_check.py --out "$RESULTS/gpu_check.json" 2>&1 | tail -40
if [ "${TRAIN:-0}" = 1 ]; then
    timeout 100 python3 -m modeling_hope.cli bench --device cuda --preset hope-340m --threads 0 --no-plot $ONE --repeats 2 \
        --sections train --train-lengths 2048 --budget 80 \
        --out "$RESULTS/hope_bench_gpu_train.json" 2>&1 | grep -v Warning
fi
ls -la "$OUT"
