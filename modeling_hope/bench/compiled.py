"""torch.compile on HOPE: the eager model against the same weights wrapped in `torch.compile(model)` (everything
outside the chunk loop compiled), with `compile_memory=True` (the per-chunk step compiled too) except on the CPU where
the C++ chunk kernel runs (`memory_cpu.py`: faster than the compiled PyTorch step; the loop stays eager), for a
training step and for decoding; the training step also for the Llama twin, eager and in `torch.compile(model)`, so that
the HOPE / Llama ratio is there with both models compiled. Compile time is the first call's time less an eager call's;
steps are interleaved, best of N."""

import torch

from .. import memory_cpu
from .decode import Decoder
from .models import build, random_ids
from .prefill import prefill
from .timing import interleaved, now, summary
from .training import train_step_seconds


def _compile_memory(hope) -> bool:
    return not (hope.device.type == "cpu" and hope.dtype == torch.float32 and memory_cpu.available())


def _pair(hope, preset: str, backend: str):
    compiled = build("hope", preset, device=hope.device, dtype=hope.dtype, compile_memory=_compile_memory(hope))
    compiled.load_state_dict(hope.state_dict())
    return compiled, torch.compile(compiled, backend=backend)


def run(hope, preset: str, length: int, context: int, steps: int, repeats: int, seed: int = 0, log=print,
        backend: str = "inductor", llama=None) -> dict:
    torch._dynamo.reset()
    model, compiled = _pair(hope, preset, backend)
    ids = random_ids(hope.config.vocab_size, 1, length, seed, hope.device)
    out = {"method": __doc__.replace("\n", " "), "backend": backend, "length": length, "context": context,
           "compile_memory": model.config.compile_memory}

    pairs = {"": (hope, compiled)}
    if llama is not None:
        pairs["llama_"] = (llama, torch.compile(llama, backend=backend))
    steps_by_name, compile_seconds = {}, {}
    for prefix, (eager, fast) in pairs.items():
        eager.train(), fast.train()
        eager_first = train_step_seconds(eager, ids)
        compile_seconds[prefix] = train_step_seconds(fast, ids) - eager_first
        steps_by_name[f"{prefix}eager"] = lambda m=eager: train_step_seconds(m, ids)
        steps_by_name[f"{prefix}compiled"] = lambda m=fast: train_step_seconds(m, ids)
    with torch.no_grad():
        diff = (hope(ids, labels=ids).loss - compiled(ids, labels=ids).loss).abs().item()
    times = interleaved(steps_by_name, repeats)
    train = {name: summary(t, length) for name, t in times.items()}
    for e in train.values():
        e["tokens_per_second"] = e.pop("per_second")
    tps = {name: e["tokens_per_second"] for name, e in train.items()}
    train.update(compile_seconds=compile_seconds[""], loss_abs_difference=diff,
                 compiled_over_eager=tps["compiled"] / tps["eager"])
    message = (f"compile, train length {length}: eager {tps['eager']:.0f} tok/s, compiled {tps['compiled']:.0f} "
               f"tok/s ({train['compiled_over_eager']:.2f}x), compile {train['compile_seconds']:.0f} s")
    if llama is not None:
        train.update(llama_compile_seconds=compile_seconds["llama_"],
                     llama_compiled_over_eager=tps["llama_compiled"] / tps["llama_eager"],
                     hope_over_llama_eager=tps["eager"] / tps["llama_eager"],
                     hope_over_llama_compiled=tps["compiled"] / tps["llama_compiled"],
                     # compiled HOPE against the Llama twin's faster mode (compile does not always pay for Llama)
                     hope_compiled_over_llama_best=tps["compiled"] / max(tps["llama_eager"], tps["llama_compiled"]))
        message += (f"; Llama eager {tps['llama_eager']:.0f}, compiled {tps['llama_compiled']:.0f} tok/s; HOPE / "
                    f"Llama {train['hope_over_llama_eager']:.3f} eager, {train['hope_over_llama_compiled']:.3f} "
                    f"compiled, {train['hope_compiled_over_llama_best']:.3f} against Llama's faster mode")
    out["train"] = train
    log(message)

    try:  # a compiler failure in decoding (seen with torch 2.11 on an H200) keeps the training figures
        out["decode"] = _decode(hope, model, compiled, context, steps, repeats, seed, log)
    except Exception as e:
        out["decode"] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
        log(f"compile, decode failed: {out['decode']['error']}")
    torch._dynamo.reset()
    return out


def _decode(hope, model, compiled, context: int, steps: int, repeats: int, seed: int, log) -> dict:
    hope.eval(), model.eval()
    prompt = random_ids(hope.config.vocab_size, 1, context, seed + 1, hope.device)
    decoders = {}
    for name, m in (("eager", hope), ("compiled", compiled)):
        with torch.no_grad():
            cache = prefill(hope, prompt)  # the same state for both; the compiled model continues it
            logits = hope(prompt[:, -1:], cache=cache, use_cache=True).logits
        decoders[name] = Decoder(m, cache, logits)
    start = now()
    decoders["compiled"].step()
    warmup = now() - start
    decoders["eager"].step()
    times = interleaved({name: (lambda d=d: sum(d.steps(steps)) / steps)
                         for name, d in decoders.items()}, repeats)
    decode = {name: {"ms_per_token": min(t) * 1e3, "ms_per_token_each_repeat": [x * 1e3 for x in t]}
              for name, t in times.items()}
    decode["first_call_seconds"] = warmup
    decode["compiled_over_eager_ms"] = decode["compiled"]["ms_per_token"] / decode["eager"]["ms_per_token"]
    log(f"compile, decode at {context}: eager {decode['eager']['ms_per_token']:.1f} ms/token, compiled "
        f"{decode['compiled']['ms_per_token']:.1f} ms/token (first call {warmup:.0f} s)")
    return decode
