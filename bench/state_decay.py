"""What a long context does to HOPE's decoding state, and to decoding speed on a CPU.

Prefills one HopeCache with random tokens up to each context (continuing the same cache), and records for every
memory of layer 0 the largest fast weight |W1|, |W2| and momentum |S1|, the share of the whole state's float values
that are subnormal (nonzero and below float32's smallest normal, 1.18e-38), and the ms per decoded token, best and
median of --steps, first as torch runs by default, then with `torch.set_flush_denormal(True)` (subnormals read and
written as zero). Subnormal arithmetic is many times slower on x86 CPUs; the state's bytes do not change.

    PYTHONPATH=. python bench/state_decay.py --out bench/results/state_decay_cpu.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hope.bench.decode import Decoder  # noqa: E402
from modeling_hope.bench.machine import code_version, describe  # noqa: E402
from modeling_hope.bench.models import build, random_ids  # noqa: E402
from modeling_hope.bench.timing import summary  # noqa: E402
from modeling_hope.cache_hope import HopeCache  # noqa: E402

TINY = torch.finfo(torch.float32).tiny


def state_floats(cache):
    return [t for layer in cache.layers for t in layer.tensors.values() if t.is_floating_point()]


def decode_ms(decoder: Decoder, steps: int) -> dict:
    s = summary(decoder.steps(steps), 1)
    return {"best": 1e3 * s["best_seconds"], "median": 1e3 * s["median_seconds"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="hope-5m")
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192, 16384, 24576, 32768])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results/state_decay_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build("hope", args.preset).eval()
    ids = random_ids(model.config.vocab_size, 1, max(args.contexts), 0)
    cache, seen, rows = HopeCache(model.config), 0, []
    with torch.no_grad():
        for context in sorted(args.contexts):
            while seen < context:
                n = min(4096, context - seen)
                logits = model(ids[:, seen:seen + n], cache=cache, use_cache=True, logits_to_keep=1).logits
                seen += n
            floats = state_floats(cache)
            subnormal = sum(int(((t != 0) & (t.abs() < TINY)).sum()) for t in floats)
            st = cache.layers[0].tensors
            row = {"context": context, "cache_bytes": cache.nbytes(),
                   "subnormal_share": subnormal / sum(t.numel() for t in floats),
                   "layer0_max_abs": {f: [float(x) for x in st[f"memory.{f}"][0].abs().amax((-1, -2, -3))]
                                      for f in ("W1", "W2", "S1")}}
            # decoding continues the cache, so it runs on the state just measured (a few tokens more)
            decoder = Decoder(model, cache, logits)
            row["decode_ms"] = decode_ms(decoder, args.steps)
            torch.set_flush_denormal(True)
            row["decode_ms_flush_denormal"] = decode_ms(decoder, args.steps)
            torch.set_flush_denormal(False)
            seen = cache.get_seq_length()  # the decoded tokens count; the prompt goes on after them
            rows.append(row)
            print(f"context {context}: subnormal {row['subnormal_share']:.1%}, max |W1| "
                  f"{max(row['layer0_max_abs']['W1']):.2e}, decode {row['decode_ms']['best']:.1f} ms, flushing "
                  f"{row['decode_ms_flush_denormal']['best']:.1f} ms", flush=True)
    result = {"method": __doc__.split("\n\n")[1].replace("\n", " "), "preset": args.preset, "machine": describe(),
              "code": code_version(), "memories": "layer 0's memories in state order: the adaptive projection "
              "memories (k, v, eta, alpha), then the output memory", "by_context": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
