#!/usr/bin/env bash
# The fused Triton kernel of the memories on a GPU, in one call: exactness (bench/gpu_check.py, which includes the
# kernel against the PyTorch chunk loop and the CPU), then hope-340m (bf16, batch 1) prefill and decoding with the
# kernel (memory_kernel=auto) and without it (torch), each run beside the Llama twin. Results go to $OUT. The first
# call of the float32 kernel in gpu_check.py compiles for about 110 s on an H100 (the bf16 one in under 30 s).
set -u
. bench/gpu_env.sh
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
timeout 300 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -32
BENCH="python3 -m modeling_hope.cli bench --device cuda --preset hope-340m --threads 0 --no-plot --repeats 3 \
    --sections prefill decode --train-lengths 512 2048 8192"
timeout 200 $BENCH --memory-kernel auto --decode-contexts 512 2048 8192 32768 --budget 170 \
    --out "$OUT/hope_bench_gpu_kernel.json" 2>&1 | grep -v Warning
timeout 150 $BENCH --memory-kernel torch --decode-contexts 512 2048 8192 --budget 120 \
    --out "$OUT/hope_bench_gpu_torch.json" 2>&1 | grep -v Warning
ls -la "$OUT"
