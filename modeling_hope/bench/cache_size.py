"""Decoding state per sequence: HOPE's HopeCache against Llama's KV cache, for the paper's presets at long contexts.

HOPE: `HopeCache.nbytes()` of the state a batch-1 cache is initialised with, the model built on the meta device
(no memory is allocated; every state tensor has its final shape from the start, and a forward replaces tensors
without changing their shapes, which the measured figures of the benchmarked preset confirm at several contexts).
Llama: 2 (keys, values) * layers * kv_heads * head_dim * context * bytes per element, from the twin's config
(transformers' DynamicCache holds exactly these tensors; the decode section measures it for the benchmarked
preset and `formula_matches_measured` compares)."""

import torch

from ..cache_hope import HopeCache
from ..modeling_hope import HopeForCausalLM
from ..presets import hope_config
from .models import twin_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hope_state(config, dtype=torch.float32, batch: int = 1) -> HopeCache:
    """A batch-`batch` HopeCache initialised by a model on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        model = HopeForCausalLM(config).to(dtype)
    return model.model._prepare_cache(HopeCache(config), batch, torch.device("meta"))


def hope_state_bytes(config, dtype=torch.float32, batch: int = 1) -> int:
    return hope_state(config, dtype, batch).nbytes()


def breakdown(cache: HopeCache) -> dict:
    """Bytes by kind of state: the memories' fast weights (with momenta and chunk-start copies), the in-context CMS
    levels (weights, accumulated gradients, pending activations), the short-convolution tails, the counters."""
    out = {}
    for layer in [*cache.layers, cache.shared]:
        for name, t in layer.tensors.items():
            kind = ("memories" if name.startswith("memory.") else "cms_levels" if name.startswith("cms")
                    else "conv" if name == "conv" else "attention_kv" if name in ("keys", "values", "key_mask")
                    else "counters")
            out[kind] = out.get(kind, 0) + t.numel() * t.element_size()
    return out


def llama_kv_bytes(llama_config, context: int, dtype=torch.float32, batch: int = 1) -> int:
    head_dim = getattr(llama_config, "head_dim", None) or llama_config.hidden_size // llama_config.num_attention_heads
    kv_heads = llama_config.num_key_value_heads or llama_config.num_attention_heads
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * llama_config.num_hidden_layers * kv_heads * head_dim * context * element * batch


def run(presets, contexts, measured_preset: str | None = None, measured_decode: dict | None = None) -> dict:
    table = {}
    for preset in presets:
        config = hope_config(preset)
        llama = twin_config(config)
        table[preset] = {"hope_float32_breakdown": breakdown(hope_state(config))}
        for dtype_name, dtype in DTYPES.items():
            hope = hope_state_bytes(config, dtype)
            rows = {}
            for context in contexts:
                kv = llama_kv_bytes(llama, context, dtype)
                rows[str(context)] = {"hope_bytes": hope, "llama_kv_bytes": kv, "llama_over_hope": kv / hope}
            table[preset][dtype_name] = rows
    out = {"method": __doc__.split("\n\n", 1)[1].replace("\n", " "), "per_sequence": table}
    if measured_preset is not None:
        config = hope_config(measured_preset)
        llama = twin_config(config)
        predicted = hope_state_bytes(config)
        check = {"preset": measured_preset, "hope_meta_init_bytes": predicted, "by_context": {}}
        for context, entry in (measured_decode or {}).items():
            row = {"hope_measured_bytes": entry["hope"]["cache_bytes"],
                   "hope_measured_bytes_after_decode": entry["hope"].get("cache_bytes_after")}
            if "cache_bytes" in entry["llama"]:
                kv_context = entry["llama"]["context_tokens"]
                row.update(llama_measured_bytes=entry["llama"]["cache_bytes"],
                           llama_formula_bytes=llama_kv_bytes(llama, kv_context))
            else:  # Llama was skipped at this context: the formula still says what its cache would hold
                row.update(llama_formula_bytes=llama_kv_bytes(llama, int(context)))
            check["by_context"][context] = row
        rows = check["by_context"].values()
        check["hope_bytes_independent_of_context"] = len({r["hope_measured_bytes"] for r in rows}) <= 1
        check["hope_meta_init_matches_measured"] = all(r["hope_measured_bytes"] == predicted for r in rows)
        check["llama_formula_matches_measured"] = all(r.get("llama_measured_bytes") == r.get("llama_formula_bytes")
                                                      for r in rows if "llama_measured_bytes" in r)
        out["measured"] = check
    return out
