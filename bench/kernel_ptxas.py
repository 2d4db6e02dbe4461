"""Compiles the fused memory kernel (`modeling_hope/fused_scan_kernel.py`) for an NVIDIA GPU without one, with Triton's
own compiler and its bundled ptxas, and reports what ptxas says of it: registers per thread, stack frame and spill
bytes, and the shared memory Triton asks for. A static check of register pressure (spills become local-memory traffic
inside the chunk loop), not a timing. hope-340m's shapes (heads of 64, r = 1, five memories, chunks of 64), bf16
state.

    python bench/kernel_ptxas.py --out bench/results/kernel_ptxas_sm90.json
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def compile_report(block: int, precision: str, num_warps: int, arch: int) -> dict:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from modeling_hope.fused_scan_kernel import fused_scan_kernel as kernel

    constants = dict(C=64, CB=block, D=64, DB=64, R=64, RB=64, P=5, AK=True, AV=True, AE=True, AA=True,
                     HAS_ALPHA=True, MOMENTUM=True, SELF_GEN=True, VALUE_NORM=True, GELU=False, DTYPE=tl.float32,
                     PREC=precision)
    pointers = {"u_ptr", "q_ptr", "o_ptr", "ew_ptr", "eb_ptr", "aw_ptr", "ab_ptr", "lb_ptr"}
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith(("_in", "_out")) or name in pointers:
            signature[name] = "*bf16"
        elif name in ("offsets_ptr", "lengths_ptr"):
            signature[name] = "*i32"
        else:
            signature[name] = "i32" if name in ("T", "H") else "fp32"
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        Path(ptx).write_text(compiled.asm["ptx"])
        info = subprocess.run([str(ptxas), f"-arch=sm_{arch}a", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, check=True).stderr

    def number(pattern):
        found = re.search(pattern, info)
        return int(found.group(1)) if found else None

    return {"block_slots": block, "precision": precision, "num_warps": num_warps,
            "registers": number(r"Used (\d+) registers"), "stack_frame_bytes": number(r"(\d+) bytes stack frame"),
            "spill_store_bytes": number(r"(\d+) bytes spill stores"),
            "spill_load_bytes": number(r"(\d+) bytes spill loads"), "shared_bytes": compiled.metadata.shared,
            "serialized_wgmma_warning": "C7512" in info}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability (90: H100 / H200)")
    p.add_argument("--num-warps", type=int, nargs="+", default=[8])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    import triton

    runs = [compile_report(block, precision, warps, args.arch)
            for block in (64, 16) for precision in ("tf32",) for warps in args.num_warps]
    for r in runs:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps({"triton": triton.__version__, "arch": f"sm_{args.arch}", "bf16": True,
                                              "kernel": "modeling_hope/fused_scan_kernel.py", "runs": runs},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
