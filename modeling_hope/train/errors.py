"""The one exception type of `hope train` for bad input: its message says what is wrong and how to fix it."""

EXIT_BAD_INPUT = 2      # argparse's code for a bad command line; used for every input error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, after the checkpoint has been written
EXIT_DIVERGED = 3       # --max-bad-steps steps in a row had a NaN/inf loss or gradient


class TrainError(Exception):
    """Bad input (missing data, unknown preset, incompatible checkpoint, ...). `hope train` prints the message
    and exits with EXIT_BAD_INPUT; no traceback."""
