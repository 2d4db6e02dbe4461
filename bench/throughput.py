"""Forward+backward training throughput: HOPE (chunked and naive memory paths) against its Llama twin.

    python bench/throughput.py --preset hope-5m --seq-len 2048 --batch 1 4 --out bench/results/throughput.json

Everything is measured in one process, interleaved (HOPE and Llama alternate within each repeat), so the ratios are
fair on a noisy machine. The naive path runs once, at batch 1 and --naive-seq-len (it is ~1000x slower)."""

import argparse
import json
import platform
import time

import torch
from transformers import LlamaForCausalLM

from modeling_hope import HopeForCausalLM
from modeling_hope.presets import count_parameters, hope_config, llama_twin_config


def train_step_seconds(model, ids) -> float:
    start = time.perf_counter()
    model(ids, labels=ids).loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hope-5m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-seq-len", type=int, default=64, help="shorter length for the slow naive path")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = hope_config(args.preset)
    hope, llama = HopeForCausalLM(config).train(), LlamaForCausalLM(llama_twin_config(config)).train()
    naive = HopeForCausalLM(hope_config(args.preset, memory_impl="naive")).train()
    naive.load_state_dict(hope.state_dict())
    results = {"preset": args.preset, "seq_len": args.seq_len, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "machine": platform.platform(),
               "processor": platform.processor() or platform.machine(),
               "parameters": {"hope": count_parameters(config), "llama-twin": count_parameters(llama.config)},
               "by_batch": {}}
    for model in (hope, llama):
        warm = torch.randint(0, config.vocab_size, (1, 64))
        train_step_seconds(model, warm)
    for batch in args.batch:
        ids = torch.randint(0, config.vocab_size, (batch, args.seq_len))
        times = {"hope-chunked": [], "llama-twin": []}
        for _ in range(args.repeats):
            times["hope-chunked"].append(train_step_seconds(hope, ids))
            times["llama-twin"].append(train_step_seconds(llama, ids))
        tps = {name: batch * args.seq_len / min(t) for name, t in times.items()}
        results["by_batch"][str(batch)] = {"tokens_per_second": tps, "hope_over_llama": tps["hope-chunked"] / tps["llama-twin"]}
        print(f"batch {batch}: hope {tps['hope-chunked']:.1f} tok/s, llama twin {tps['llama-twin']:.1f} tok/s, "
              f"ratio {tps['hope-chunked'] / tps['llama-twin']:.3f}", flush=True)
    ids = torch.randint(0, config.vocab_size, (1, args.naive_seq_len))
    naive_tps = args.naive_seq_len / train_step_seconds(naive, ids)
    chunked_tps = args.naive_seq_len / min(train_step_seconds(hope, ids) for _ in range(args.repeats))
    results["naive"] = {"seq_len": args.naive_seq_len, "batch": 1, "tokens_per_second": naive_tps,
                        "chunked_tokens_per_second_same_shape": chunked_tps,
                        "chunked_over_naive_same_shape": chunked_tps / naive_tps,
                        "chunked_at_full_length_over_naive": results["by_batch"][str(args.batch[0])]["tokens_per_second"]["hope-chunked"] / naive_tps}
    print(json.dumps(results["naive"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
