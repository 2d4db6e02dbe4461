"""A description of the machine a benchmark ran on, for its JSON."""

import os
import platform

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def code_version() -> dict:
    """The git commit of the code measured (and whether the work tree differed from it), where there is a checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    if commit.returncode != 0:
        return {"git_commit": None}
    return {"git_commit": commit.stdout.strip(), "work_tree_modified": bool(dirty.stdout.strip())}


def describe(device="cpu") -> dict:
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(), "memory_gib": _memory_gib(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "cuda_available": torch.cuda.is_available(), "device": str(device),
            "load_average_at_start": list(load) if load else None, "triton": _triton_version()}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 2),
                   gpu_multiprocessors=props.multi_processor_count, gpu_capability=f"{props.major}.{props.minor}",
                   cuda=torch.version.cuda, gpu_driver=_driver())
    return out


def _triton_version() -> str | None:
    """Triton's version where it is installed (HOPE's fused memory kernel runs only with it)."""
    from ..memory_triton import triton

    return None if triton is None else triton.__version__


def _driver() -> str | None:
    import subprocess

    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None
