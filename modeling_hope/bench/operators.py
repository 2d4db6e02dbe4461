"""The chunked memory operators against their naive token-by-token references (fast_weight_memory.py), on one layer's
memories of the benchmarked preset: `memory` is the output memory's scan (one memory per head), `projection` the
adaptive k, v, eta, alpha memories' scan, `fused` both in one pass (`chunked_fused_scan`: the model's path when the
chunk sizes agree; its naive reference is the two naive scans in turn), also as the fused Triton kernel
(`memory_triton.fused_scan`) where it runs (a GPU with Triton). `chunked` is the model's path: on the CPU its chunks
run in C++ (`memory_cpu.py`) where that builds (`cpu_kernel` says whether they did); `torch` is the same scan with
the chunks in PyTorch, `compiled` with the PyTorch chunk step under torch.compile. Forward only, under torch.no_grad
(the naive reference still takes each token's inner gradient with autograd, as it must). Inputs come from a real
HopeMemoryMixer's initial state and its own `_produce`; the naive reference walks the tokens one by one, so its cost per
token does not depend on the length: where it is timed on fewer tokens than the chunked operator, tokens/s are compared.
Each variant's figure is its best of `repeats`, all variants (the naive one included) timed in turn within each
repeat."""

import copy

import torch
import torch.nn.functional as F

from ..fast_weight_memory import (FastWeights, chunked_fused_scan, chunked_memory_scan, chunked_projection_scan,
                                  naive_memory_scan, naive_projection_scan)
from .. import memory_cpu
from ..memory_triton import applies as kernel_applies
from ..memory_triton import fused_scan as kernel_fused_scan
from ..modeling_hope import HopeMemoryMixer
from ..presets import hope_config
from .timing import interleaved, now

OPERATORS = ("memory", "projection", "fused")


def _inputs(config, length: int, seed: int, device="cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mixer = HopeMemoryMixer(config, 0)
    for p in mixer.parameters():  # the model's init ranges, without building a whole model
        torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        H, d = mixer.num_heads, mixer.head_dim
        W1, W2 = mixer.initial_fast_weights()
        W1.normal_(0, 0.5 / W1.shape[-1] ** 0.5)
        W2.normal_(0, 1 / W2.shape[-1] ** 0.5)
        mixer.eta_bias.fill_(-2.0)
        if mixer.alpha_bias is not None:
            mixer.alpha_bias.fill_(6.0)
    state = mixer.init_state(1)
    memory = FastWeights(*(state[f"memory.{f}"].detach() for f in FastWeights._fields))
    q = F.normalize(torch.randn(1, H, length, d, generator=gen), dim=-1)
    k = F.normalize(torch.randn(1, H, length, d, generator=gen), dim=-1)
    v = F.normalize(torch.randn(1, H, length, d, generator=gen), dim=-1)
    eta = torch.full((1, H, length), 0.12 * config.eta_max)
    log_alpha = torch.full((1, H, length), float(torch.log(torch.tensor(0.9975))))
    boxes = 0.5 * torch.randn(1, 4, H, length, d, generator=gen)
    log_beta = F.logsigmoid(torch.ones(H))
    mask = torch.ones(1, length, dtype=torch.bool)
    counts = torch.zeros(1, dtype=torch.long)
    move = lambda t: t.to(device, dtype if t.is_floating_point() else t.dtype)  # noqa: E731 (drawn on the CPU)
    inputs = tuple(map(move, (q, k, v, eta, log_alpha, boxes)))
    return mixer.to(device, dtype), FastWeights(*map(move, memory)), inputs, move(log_beta), move(mask), move(counts)


def _runner(op: str, config, length: int, seed: int, impl: str, device="cpu", dtype=torch.float32):
    if impl == "torch":  # the chunked scan with its chunks in PyTorch
        fn = _runner(op, config, length, seed, "chunked", device, dtype)

        def without_kernel():
            with memory_cpu.disabled():
                return fn()
        return without_kernel
    if op == "fused" and impl == "naive":  # the mixer's own path for unequal chunk sizes, with the naive scans
        config = copy.copy(config)
        config.memory_impl = "naive"
    mixer, memory, (q, k, v, eta, log_alpha, boxes), log_beta, mask, counts = _inputs(config, length, seed, device,
                                                                                      dtype)
    common = dict(act=config.memory_activation, dgd=1.0 if config.use_dgd else 0.0,
                  self_generated=config.self_generated_values)
    if impl in ("chunked", "compiled"):
        common["compile"] = impl == "compiled"
    if op == "memory":
        C = config.memory_chunk_size
        scan = chunked_memory_scan if impl != "naive" else naive_memory_scan
        state = FastWeights(*(t[:, -1] for t in memory))
        return lambda: scan(state, q, k, v, eta, log_alpha, log_beta, mask, counts, C, lr_scale=1.0 / C, **common)
    n = sum(mixer.adaptive)
    if op == "fused":
        C = config.memory_chunk_size
        if impl == "kernel":
            return lambda: kernel_fused_scan(memory, q, boxes, mixer.adaptive, mixer.eta_weight, mixer.eta_bias,
                                             mixer.alpha_weight, mixer.alpha_bias, log_beta, mask, counts, C,
                                             config.eta_max, config.value_norm, lr_scale=1.0 / C, **common)
        if impl != "naive":
            return lambda: chunked_fused_scan(memory, q, boxes, mixer.adaptive, mixer._produce, log_beta, mask,
                                              counts, C, lr_scale=1.0 / C, **common)
        return lambda: mixer._separate_scans(memory, q, boxes, log_beta, mask, counts, common)
    C = config.projection_chunk_size
    scan = chunked_projection_scan if impl != "naive" else naive_projection_scan
    state = FastWeights(*(t[:, :n].flatten(1, 2) for t in memory))
    return lambda: scan(state, boxes, mixer.adaptive, mixer._produce, log_beta, mask, counts, C,
                        lr_scale=1.0 / C, **common)


@torch.no_grad()
def _seconds(fn) -> float:
    start = now()
    fn()
    return now() - start


def run(preset: str, length: int, naive_length: int, repeats: int, seed: int = 0, operators=OPERATORS, log=print,
        device="cpu", dtype=torch.float32) -> dict:
    config = hope_config(preset)
    results, skipped = {}, []
    if "fused" in operators and config.memory_chunk_size != config.projection_chunk_size:
        operators = [op for op in operators if op != "fused"]
        skipped.append({"section": "operators", "operator": "fused", "reason": "the preset's chunk sizes differ"})
    with torch.no_grad():
        kernel = kernel_applies(torch.empty(0, device=device), 1, 1)
    for op in operators:
        entry = {}
        impls = [("chunked", length), ("chunked", naive_length), ("torch", length), ("compiled", length),
                 ("naive", naive_length)]
        if op == "fused" and kernel:
            impls.insert(3, ("kernel", length))
        runners = {}
        for impl, n in impls:
            runners[impl, n] = fn = _runner(op, config, n, seed, impl, device, dtype)
            if impl != "naive":
                calls = memory_cpu.CALLS
                _seconds(fn)  # warm-up (and the compilation)
                if (impl, n) == ("chunked", length):
                    cpu_kernel = memory_cpu.CALLS > calls
        # every variant once per repeat, in turn: a slow moment of a shared machine hits both sides of a ratio, where
        # timing the naive reference once after the others made single runs' ratios move by 1.5x
        times = interleaved({key: (lambda fn=fn: _seconds(fn)) for key, fn in runners.items()}, repeats)
        for (impl, n), seconds in times.items():
            entry.setdefault(impl, {})[str(n)] = {"seconds": min(seconds), "tokens_per_second": n / min(seconds),
                                                  "all_seconds": seconds}
        chunked, naive = entry["chunked"], entry["naive"][str(naive_length)]
        entry["speedup_at_length"] = chunked[str(length)]["tokens_per_second"] / naive["tokens_per_second"]
        entry["speedup_same_shape"] = chunked[str(naive_length)]["tokens_per_second"] / naive["tokens_per_second"]
        entry["speedup_compiled_at_length"] = (entry["compiled"][str(length)]["tokens_per_second"]
                                               / naive["tokens_per_second"])
        entry["speedup_torch_at_length"] = entry["torch"][str(length)]["tokens_per_second"] / naive["tokens_per_second"]
        entry["cpu_kernel"] = cpu_kernel
        adaptive = sum(HopeMemoryMixer(config, 0).adaptive)
        per_head = {"memory": 1, "projection": adaptive, "fused": adaptive + 1}[op]
        entry["memories"] = config.num_attention_heads * per_head
        if "kernel" in entry:
            entry["speedup_kernel_at_length"] = entry["kernel"][str(length)]["tokens_per_second"] / naive[
                "tokens_per_second"]
        results[op] = entry
        log(f"operator {op}: chunked {chunked[str(length)]['tokens_per_second']:.0f} tok/s at {length}, naive "
            f"{naive['tokens_per_second']:.1f} tok/s at {naive_length}: {entry['speedup_at_length']:.0f}x "
            f"({'C++ chunks' if cpu_kernel else 'PyTorch chunks'}; {entry['speedup_torch_at_length']:.0f}x with "
            f"PyTorch chunks, {entry['speedup_compiled_at_length']:.0f}x with the compiled chunk step"
            + (f", {entry['speedup_kernel_at_length']:.0f}x with the kernel)" if "kernel" in entry else ")"))
    return {"method": __doc__.split("\n\n", 1)[0].replace("\n", " "), "length": length, "naive_length": naive_length,
            "batch": 1, "head_dim": config.hidden_size // config.num_attention_heads,
            "chunk_size": config.memory_chunk_size, "by_operator": results, "skipped": skipped,
            "kernel_timed": kernel if kernel else "no: the fused Triton kernel runs on a GPU with Triton installed"}
