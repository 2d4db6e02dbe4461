#!/usr/bin/env bash
# One GPU call comparing this tree with an older one ($OLD, a folder holding that commit's modeling_hope/, e.g.
# `git archive <commit> modeling_hope | tar -x -C old_tree`): exactness on the GPU, then hope-340m (bf16, batch 1)
# training throughput at 512 / 2048 / 8192 and training peak memory at 8192 for this tree, and training throughput
# at 2048 for the old tree, each against the Llama twin in the same process. Results go to $OUT.
set -u
OLD=${OLD:-old_tree}
. bench/gpu_env.sh
BENCH="-m modeling_hope.cli bench --device cuda --preset hope-340m --threads 0 --no-plot --repeats 2"
timeout 90 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -12
# this tree's bench in one process, as these budgets were set and run (a child per section adds its start-up; an
# older tree's bench knows no --no-isolate and runs in one process anyway)
timeout 330 python3 $BENCH --no-isolate --sections train memory --train-lengths 512 2048 8192 \
    --memory-modes train --memory-lengths 8192 --flops-max-length 2048 --budget 300 \
    --out "$OUT/hope_bench_gpu_train.json" 2>&1 | grep -v Warning
if [ -d "$OLD/modeling_hope" ]; then  # run from $OLD: `python -m` puts the working directory first on the path
    RESULTS=$(cd "$OUT" && pwd)
    (cd "$OLD" && timeout 90 python3 $BENCH --sections train --train-lengths 2048 --no-flops \
        --out "$RESULTS/hope_bench_gpu_train_old.json" 2>&1 | grep -v Warning)
fi
ls -la "$OUT"
