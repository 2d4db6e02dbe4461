"""Decoding cost at a given context: ms per generated token (greedy, one sequence) after a prompt of `context`
tokens. HOPE carries a HopeCache, which it reaches by prefilling in chunks (its state has a fixed size, so the
chunking changes nothing but the peak memory of the prefill), continuing the same cache from one context to the next
(each context decodes from its own copy); Llama prefills each context in one call into its DynamicCache (KV cache), as
generate() would. Every context is reached first, and then all (model, context) pairs decode in turn, so that a slow
phase of a shared machine hits every context, not only the ones measured during it."""

import copy

import torch

from ..cache_hope import HopeCache
from .models import random_ids
from .timing import interleaved, now, summary


def cache_nbytes(cache) -> int:
    """Bytes held by a cache: HopeCache.nbytes(), or the keys and values of each layer of a transformers Cache."""
    if isinstance(cache, HopeCache):
        return cache.nbytes()
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class Decoder:
    """Greedy decoding of one sequence from a given cache; `step()` times one token."""

    def __init__(self, model, cache, last_logits):
        self.model, self.cache = model, cache
        self.token = last_logits[:, -1:].argmax(-1)

    @torch.no_grad()
    def step(self) -> float:
        start = now()
        out = self.model(self.token, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.token = out.logits[:, -1:].argmax(-1)
        return now() - start

    def steps(self, n: int) -> list:
        return [self.step() for _ in range(n)]


@torch.no_grad()
def _advance_hope(model, cache, prompt, target: int, chunk: int):
    """Prefill `cache` with prompt tokens until it has seen `target` tokens; returns (seconds, last logits)."""
    start, logits = now(), None
    while cache.get_seq_length() < target:
        seen = cache.get_seq_length()
        n = min(chunk, target - seen)
        logits = model(prompt[:, seen:seen + n], cache=cache, use_cache=True, logits_to_keep=1).logits
    return now() - start, logits


def run(models: dict, contexts, steps: int, prefill_chunk: int, llama_max_context: int | None, seed: int = 0,
        warmup: int = 2, log=print, block: int = 8, warm_prefill: int = 2048) -> dict:
    hope, llama = models["hope"].eval(), models["llama"].eval()
    contexts = sorted(contexts)
    prompt = random_ids(hope.config.vocab_size, 1, max(contexts) + (warmup + steps) * len(contexts), seed,
                        hope.device)
    # an untimed prefill per model first: in a fresh process the first context otherwise decoded 1.2-1.3x slower
    # for both models (HOPE 19.8 / 18.6 against 15.4 / 14.8 ms at 512, Llama 7.0 against 5.3-5.9), the allocator
    # still settling
    warm = min(warm_prefill, max(contexts))
    with torch.no_grad():
        for model in (hope, llama):
            model(prompt[:, :warm], use_cache=True, logits_to_keep=1)
    hope_cache = HopeCache(hope.config)
    results, skipped, decoders = {}, [], {}
    for context in contexts:
        entry = {}
        seconds, logits = _advance_hope(hope, hope_cache, prompt, context, prefill_chunk)
        # a copy decodes: the original goes on to the next context
        decoders["hope", context] = Decoder(hope, copy.deepcopy(hope_cache), logits)
        entry["hope"] = {"context_tokens": hope_cache.get_seq_length(), "cache_bytes": cache_nbytes(hope_cache),
                         "prefill_seconds_to_reach": seconds,
                         "prefill_chunk": prefill_chunk}
        if llama_max_context is not None and context > llama_max_context:
            reason = f"context {context} > --llama-max-context {llama_max_context}"
            entry["llama"] = {"skipped": reason}
            skipped.append({"section": "decode", "model": "llama", "context": context, "reason": reason})
        else:
            start = now()
            with torch.no_grad():
                out = llama(prompt[:, :context], use_cache=True, logits_to_keep=1)
            entry["llama"] = {"context_tokens": out.cache.get_seq_length(), "cache_bytes": cache_nbytes(out.cache),
                              "prefill_seconds_to_reach": now() - start}
            decoders["llama", context] = Decoder(llama, out.cache, out.logits)
            del out
        results[str(context)] = entry
    del hope_cache
    for decoder in decoders.values():
        for _ in range(warmup):
            decoder.step()
    # blocks of consecutive tokens per (model, context), as generate() runs them, rather than one step always starting
    # with another's working set in the CPU caches; every pair once per round, the order reversed every round
    n = min(block, steps)
    times = interleaved({key: (lambda d=d: d.steps(n)) for key, d in decoders.items()}, max(1, steps // n))
    for (name, context), t in times.items():
        t = [x for b in t for x in b]
        s = summary(t, 1)
        results[str(context)][name].update(ms_per_token=1000 * s["best_seconds"],
                                           ms_per_token_median=1000 * s["median_seconds"], steps=len(t),
                                           cache_bytes_after=cache_nbytes(decoders[name, context].cache))
    del decoders
    for context in contexts:
        entry = results[str(context)]
        if "ms_per_token" in entry["llama"]:
            entry["hope_over_llama_ms"] = entry["hope"]["ms_per_token"] / entry["llama"]["ms_per_token"]
        log(f"decode context {context}: hope {entry['hope']['ms_per_token']:.2f} ms/token "
            f"({entry['hope']['cache_bytes']} B state), llama "
            + (f"{entry['llama']['ms_per_token']:.2f} ms/token ({entry['llama']['cache_bytes']} B KV)"
               if "ms_per_token" in entry["llama"] else entry["llama"]["skipped"]))
    first, last = str(contexts[0]), str(contexts[-1])
    growth = results[last]["hope"]["ms_per_token"] / results[first]["hope"]["ms_per_token"]
    return {"method": f"an untimed prefill of {warm} tokens per model (discarded), then greedy decoding of one "
                      "sequence with the model's cache after a random prompt of `context` "
                      f"tokens; every context reached first (HOPE by continuing one HopeCache in prefill chunks, "
                      "each context decoding from its own copy; Llama by one prefill call per context), then "
                      f"{warmup} untimed steps and {steps} timed steps per model and context in blocks of {block} "
                      "consecutive tokens, every (model, context) pair's block once per round, the order reversed "
                      "every round; ms_per_token is the best step, ms_per_token_median the median",
            "steps": steps, "by_context": results,
            "hope_ms_at_largest_over_smallest_context": growth, "skipped": skipped}
