"""`hope convert`: pretrained Llama-family models into HOPE, `hope train` checkpoints into Hub folders.

    hope convert llama-to-hope meta-llama/Llama-3.2-1B llama-1b-hope
    hope convert llama-to-hope ./llama ./llama-hope --mlp-level period=512,lr=1e-4 \\
        --levels period=2048,lr=1e-5,init=zero --dtype bfloat16 --max-shard-size 2GB
    hope convert llama-to-hope ./llama ./llama-titans --mixer self_modifying_titans   # not logit-preserving
    hope convert checkpoint outputs/hope-5m-shakespeare hope-5m-folder                # newest checkpoint of a run

Level SPEC: comma-separated KEY=VALUE with period (tokens between in-context updates, 0 = static), lr,
outer_period, and for --levels also init (zero: the level starts with a zero output, so the model stays the
original; mlp: a copy of the pretrained MLP, the paper's level stacking, which changes the function) and size (the
first SIZE units of the MLP). DST is written atomically: nothing appears there unless the conversion succeeds.
Exit status: 0 done, 2 bad input (a one-line message naming the problem)."""

import argparse
import json
import sys

EXIT_BAD_INPUT = 2
DTYPES = ("auto", "float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    from .levels import parse_level

    def level(allowed):
        def parse(text):
            try:
                return parse_level(text, allowed)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        return parse

    p = argparse.ArgumentParser(prog="hope convert", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{llama-to-hope,checkpoint}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype of the saved weights (auto: the source's)")
    common.add_argument("--max-shard-size", default=None, help="largest safetensors shard, e.g. 2GB (default 5GB)")
    common.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    ll = sub.add_parser("llama-to-hope", parents=[common], help="a LlamaForCausalLM-compatible model -> HOPE",
                        description="Convert a Llama-family model (folder or Hub name) into HopeForCausalLM.")
    ll.add_argument("src", help="folder or Hub name of a LlamaForCausalLM / MistralForCausalLM (no sliding window)")
    ll.add_argument("dst", help="output folder")
    ll.add_argument("--mixer", choices=("attention", "self_modifying_titans"), default="attention",
                    help="attention: keep the attention (logit-preserving); self_modifying_titans: fresh memories "
                         "in its place, MLPs kept as CMS levels (for continued pre-training; NOT logit-preserving)")
    ll.add_argument("--mlp-level", type=level(("period", "lr", "outer_period")), default=None, metavar="SPEC",
                    help="period/lr/outer_period of level 1, the pretrained MLP itself (default: static)")
    ll.add_argument("--levels", type=level(("period", "lr", "init", "size", "outer_period")), nargs="+",
                    default=[], metavar="SPEC", help="extra CMS levels after level 1, in order")
    ck = sub.add_parser("checkpoint", parents=[common], help="a hope train checkpoint -> Hub-ready folder",
                        description="Turn a `hope train` checkpoint (a step-N folder, or a run folder: its newest "
                                    "checkpoint) into a Hub-ready folder with a model card.")
    ck.add_argument("src", help="checkpoint folder (checkpoints/step-N) or run folder")
    ck.add_argument("dst", help="output folder")
    return p


def main(argv=None) -> int:
    from ..train.errors import TrainError
    from .levels import LevelSpec

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed its message (or the help)
        return int(exc.code or 0) and EXIT_BAD_INPUT
    dtype = None if args.dtype == "auto" else args.dtype
    try:
        if args.command == "llama-to-hope":
            from .from_llama import convert_llama

            first = args.mlp_level or LevelSpec()
            levels = [LevelSpec(period=first.period, lr=first.lr, outer_period=first.outer_period, init="mlp"),
                      *args.levels]
            summary = convert_llama(args.src, args.dst, levels, args.mixer, dtype, args.max_shard_size,
                                    args.overwrite)
        else:
            import torch

            from .checkpoint import convert_checkpoint

            summary = convert_checkpoint(args.src, args.dst, getattr(torch, dtype) if dtype else None,
                                         args.max_shard_size, args.overwrite)
    except (ValueError, OSError, TrainError) as err:
        print(f"hope convert: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report(summary)
    return 0


def report(summary: dict) -> None:
    if "logit_preserving" in summary:
        learning = [lvl["period"] for lvl in summary["levels"] if lvl["period"] and lvl["lr"]]
        if summary["logit_preserving"]:
            until = f" until its first in-context update (after {min(learning)} tokens)" if learning else ""
            print(f"hope convert: logit-preserving: the HOPE model computes the original's logits{until}",
                  file=sys.stderr)
        else:
            why = ("the attention was replaced by freshly initialised self-modifying Titans memories"
                   if summary["mixer_type"] != "attention" else "extra levels copied from the MLP (init=mlp) change "
                   "the function")
            print(f"hope convert: NOTE: this conversion is NOT logit-preserving: {why}. The model needs continued "
                  f"pre-training before use.", file=sys.stderr)
        if not summary["tokenizer"]:
            print("hope convert: note: the source has no tokenizer; none was copied", file=sys.stderr)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
