"""`hope` console script: `hope <command> [options]`; each command is a module with `main(argv) -> int`."""

import importlib
import sys

COMMANDS = {
    "train": ("modeling_hope.train.cli", "train a HOPE (or its Llama twin) with Accelerate"),
    "eval": ("modeling_hope.eval.cli", "run the paper's benchmark suite through lm-eval-harness"),
    "main-job": ("modeling_hope.main_job", "train a small HOPE on the built-in data, evaluate it, generate text"),
    "convert": ("modeling_hope.convert.cli", "Llama-family models into HOPE; training checkpoints into Hub folders"),
    "push": ("modeling_hope.convert.push", "upload a Hub-ready folder to the Hugging Face Hub"),
    "bench": ("modeling_hope.bench.cli", "benchmark HOPE against its Llama twin: speed, memory, cache size (JSON + PNG)"),
}


def usage() -> str:
    lines = ["usage: hope <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hope: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        print(f"hope: command {name!r} is not available in this installation ({err})", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
