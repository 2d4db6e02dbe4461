"""Exactness on a GPU: the same hope-5m weights on the CPU and on the GPU, float32, must give the same loss, logits and
gradients (to float32 reduction-order rounding), the chunked memories must match the naive token-by-token ones on the
GPU, and greedy generate() must choose the same tokens. The fused Triton kernel of the memories (`memory_kernel="auto"`,
no-grad calls) is checked against the PyTorch chunk loop on the GPU and against the CPU: a no-grad forward into a cache
(logits and every state tensor), decoding from that cache, and generate(). Writes JSON and exits 1 when a check fails.

    python bench/gpu_check.py --out gpu_check.json      # needs a CUDA device
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hope.bench.models import build  # noqa: E402


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def loss_logits_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), out.logits.detach(), {n: p.grad.detach() for n, p in model.named_parameters()}


@torch.no_grad()
def kernel_checks(cpu, gpu, ids, device) -> dict:
    """No-grad forward of `ids` into a fresh cache, then 3 tokens one by one (a piece inside a chunk each), with the
    Triton kernel (memory_kernel="auto") against the PyTorch chunk loop on the GPU ("torch") and against the CPU.
    Relative errors of the logits and of the worst state tensor of the caches."""
    from modeling_hope import memory_triton

    if not memory_triton.available():
        raise RuntimeError("Triton is not installed: the kernel cannot be checked")

    def run(model, config_kernel, x):
        model.config.memory_kernel = config_kernel
        out = model(x, use_cache=True)
        logits = [out.logits]
        for j in range(3):
            step = model(x[:, j:j + 1], cache=out.cache, use_cache=True)
            logits.append(step.logits)
        states = {f"{i}.{k}": t for i, layer in enumerate(out.cache.layers) for k, t in layer.tensors.items()}
        model.config.memory_kernel = "auto"
        return torch.cat(logits, 1), states

    t0 = time.perf_counter()
    calls = memory_triton.CALLS
    k_logits, k_state = run(gpu, "auto", ids)
    if memory_triton.CALLS == calls:
        raise RuntimeError("the kernel did not run (memory_triton.applies refused these calls)")
    t_logits, t_state = run(gpu, "torch", ids)
    c_logits, c_state = run(cpu, "torch", ids.cpu())
    padded = padded_generate(gpu, ids[:, :45])
    return {"kernel_vs_torch_logits": rel(k_logits, t_logits),
            "kernel_vs_torch_worst_state": max(rel(k_state[k], t) for k, t in t_state.items()),
            "kernel_vs_cpu_logits": rel(k_logits, c_logits),
            "kernel_vs_cpu_worst_state": max(rel(k_state[k], t) for k, t in c_state.items()),
            "padded_generate_scores": padded["scores"], "padded_generate_same_tokens": padded["same_tokens"],
            "seconds": time.perf_counter() - t0}


def padded_generate(model, prompt) -> dict:
    """Greedy generate() on a batch whose second row is left-padded by 13 tokens (its rows walk the chunks out of
    step), with the kernel against the PyTorch loop: the same tokens, and the worst relative error of the scores."""
    prompt = prompt.clone()
    mask = torch.ones_like(prompt)
    prompt[1, :13], mask[1, :13] = model.config.pad_token_id or 0, 0
    out = {}
    for kernel in ("auto", "torch"):
        model.config.memory_kernel = kernel
        out[kernel] = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                     return_dict_in_generate=True, output_scores=True)
    model.config.memory_kernel = "auto"
    return {"same_tokens": bool(torch.equal(out["auto"].sequences, out["torch"].sequences)),
            "scores": max(rel(a, b) for a, b in zip(out["auto"].scores, out["torch"].scores))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--length", type=int, default=200, help="tokens (not a multiple of the chunk: partial chunks run)")
    p.add_argument("--naive-length", type=int, default=40, help="tokens of the naive-memory comparison (slow)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error allowed (float32 on both)")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 on the GPU too, not TensorFloat-32
    torch.backends.cudnn.allow_tf32 = False
    cpu = build("hope", "hope-5m").train()
    gpu = build("hope", "hope-5m", device=args.device).train()
    naive = build("hope", "hope-5m", device=args.device, memory_impl="naive").train()
    for model in (gpu, naive):
        model.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, cpu.config.vocab_size, (2, args.length), generator=torch.Generator().manual_seed(1))
    checks = {}
    for name, model, n in (("gpu_vs_cpu", gpu, args.length), ("gpu_naive_vs_cpu", naive, args.naive_length)):
        t0 = time.perf_counter()
        ref = loss_logits_grads(cpu, ids[:, :n])
        loss, logits, grads = loss_logits_grads(model, ids[:, :n].to(args.device))
        checks[name] = {"loss": rel(loss, ref[0]), "logits": rel(logits, ref[1]),
                        "worst_gradient": max(rel(grads[n], g) for n, g in ref[2].items()),
                        "seconds": time.perf_counter() - t0}
    cpu.eval(), gpu.eval()
    checks["kernel"] = kernel_checks(cpu, gpu, ids.to(args.device), args.device)
    prompt = ids[:1, :32]
    want = cpu.generate(prompt, max_new_tokens=16, do_sample=False)
    got = gpu.generate(prompt.to(args.device), max_new_tokens=16, do_sample=False).cpu()
    where = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else args.device
    result = {"device": where, "torch": torch.__version__, "length": args.length, "naive_length": args.naive_length,
              "tolerance": args.tolerance, "relative_errors": checks,
              "generate_same_tokens": bool(torch.equal(want, got))}
    result["passed"] = result["generate_same_tokens"] and all(
        v is True or (not isinstance(v, bool) and v <= args.tolerance)
        for c in checks.values() for k, v in c.items() if k != "seconds")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
