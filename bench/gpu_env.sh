# Sourced by the bench/gpu_*.sh scripts: $OUT made, a newer transformers carried as a wheel in .whl/ installed to
# /tmp/site and put first on PYTHONPATH (with the repository root), and the GPU described in $OUT/nvidia_smi.txt.
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/nvidia_smi.txt"
