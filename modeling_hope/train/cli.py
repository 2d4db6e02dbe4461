"""`hope train [options]`: see `hope train --help`. Multi-process: `accelerate launch --num_processes N -m
modeling_hope.cli train [options]` (or torchrun). Exit codes: 0 done (or stopped by --max-steps-this-run /
--max-minutes, with a checkpoint), 2 bad input (a one-line message, no traceback), 130 interrupted by Ctrl-C /
SIGTERM after saving a checkpoint."""

import json
import sys

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, TrainError


def main(argv=None) -> int:
    from .config import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
    except SystemExit as exc:  # argparse printed its message (or the help)
        return int(exc.code or 0) and EXIT_BAD_INPUT
    except TrainError as err:
        print(f"hope train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        from .loop import train

        summary = train(cfg)
    except TrainError as err:
        print(f"hope train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the loop (data, tokenizer) or a second Ctrl-C: no new checkpoint
        print("hope train: interrupted (the last complete checkpoint, if any, is intact)", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary.pop("evals", None)
    if summary.pop("process_index", 0) == 0:
        print(json.dumps(summary), flush=True)
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
