"""Forward+backward training throughput of HOPE (chunked and naive memories) against its Llama twin: the `train`
and `naive_model` sections of `hope bench` (modeling_hope/bench/), kept under this name for old command lines.

    python bench/throughput.py --preset hope-5m --seq-len 2048 --batch 1 4 --out bench/results/throughput.json

Measured in one process, interleaved (HOPE and Llama alternate within each repeat), best of --repeats. The naive
model runs once, at batch 1 and --naive-seq-len (0 to leave it out). For everything else run `hope bench`."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hope.bench.cli import main as bench_main  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hope-5m")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[2048])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-seq-len", type=int, default=64, help="shorter length for the slow naive model")
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args(argv)
    sections = ["train"] + (["naive_model"] if args.naive_seq_len > 0 else [])
    return bench_main(["--preset", args.preset, "--train-lengths", *map(str, args.seq_len),
                       "--batch", *map(str, args.batch), "--repeats", str(args.repeats),
                       "--naive-model-len", str(args.naive_seq_len), "--sections", *sections,
                       "--out", args.out, "--no-plot"])


if __name__ == "__main__":
    sys.exit(main())
