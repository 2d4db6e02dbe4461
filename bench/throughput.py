"""Forward+backward training throughput: HOPE (chunked and naive memory paths) against its Llama twin.

    python bench/throughput.py --preset hope-5m --seq-len 2048 --batch 1 --out bench/results/throughput.json

Everything is measured in one process, interleaved, so the ratios are fair on a noisy machine."""

import argparse
import json
import platform
import time

import torch
from transformers import LlamaForCausalLM

from modeling_hope import HopeForCausalLM
from modeling_hope.presets import count_parameters, hope_config, llama_twin_config


def train_step_seconds(model, ids, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hope-5m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-seq-len", type=int, default=None, help="shorter length for the slow naive path")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = hope_config(args.preset)
    models = {"hope-chunked": HopeForCausalLM(config), "llama-twin": LlamaForCausalLM(llama_twin_config(config)),
              "hope-naive": HopeForCausalLM(hope_config(args.preset, memory_impl="naive"))}
    models["hope-naive"].load_state_dict(models["hope-chunked"].state_dict())
    results = {"preset": args.preset, "batch": args.batch, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
               "parameters": {"hope": count_parameters(config), "llama-twin": count_parameters(models["llama-twin"].config)},
               "tokens_per_second": {}, "seq_len": {}}
    for name, model in models.items():
        model.train()
        length = args.naive_seq_len or args.seq_len if name == "hope-naive" else args.seq_len
        ids = torch.randint(0, config.vocab_size, (args.batch, length))
        model(ids[:, :64], labels=ids[:, :64]).loss.backward()  # warm-up
        seconds = train_step_seconds(model, ids, 1 if name == "hope-naive" else args.repeats)
        results["tokens_per_second"][name] = args.batch * length / seconds
        results["seq_len"][name] = length
        print(f"{name:>13}: {results['tokens_per_second'][name]:10.1f} tokens/s  (seq {length})", flush=True)
    tps = results["tokens_per_second"]
    results["ratios"] = {"hope_over_llama": tps["hope-chunked"] / tps["llama-twin"],
                         "chunked_over_naive": tps["hope-chunked"] / tps["hope-naive"]}
    print(json.dumps(results["ratios"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
