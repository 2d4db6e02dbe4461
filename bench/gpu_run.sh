#!/usr/bin/env bash
# The GPU part of issue 5 in one call: exactness on the GPU, then `hope bench` on the 340M preset (bf16) at batch 1,
# then a batch-8 training/prefill sweep. Results go to $OUT (default ./gpu-results). Budgets in seconds keep the
# whole script near 7 minutes on an H100/H200; a section that would start after its run's budget is recorded as
# skipped. A newer transformers than the machine's can be carried as a wheel in .whl/ (installed to /tmp/site).
set -u
. bench/gpu_env.sh
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 100 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -25
# --no-isolate: one process, as these budgets were set and run (a child per section adds its start-up)
BENCH="python3 -m modeling_hope.cli bench --device cuda --preset hope-340m --threads 0 --no-plot --no-isolate"
timeout 360 $BENCH --repeats 2 --memory-lengths 8192 --naive-len 256 --naive-model-len 0 \
    --budget ${MAIN_BUDGET:-250} --out "$OUT/hope_bench_gpu.json" 2>&1 | grep -v Warning
timeout 80 $BENCH --batch 8 --train-lengths 2048 --sections train prefill --repeats 2 \
    --budget 60 --out "$OUT/hope_bench_gpu_batch8.json" 2>&1 | grep -v Warning
ls -la "$OUT"
