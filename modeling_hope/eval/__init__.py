"""Evaluation of HOPE checkpoints: the paper's benchmark suite through lm-eval-harness (offline or from the
Hub), the paper-style table, long-context checks, and a hook for evaluation during training.

Modules (one job each): `suite` (tasks, metrics, published rows, table), `data` (offline sets -> Hub fields
+ include-override YAMLs), `runner` (HFLM + simple_evaluate, results files, training hook), `long_context`
(S-NIAH and loss by position), `cli` (`hope eval`). Importing this package is cheap; torch, transformers and
lm-eval load on first use.
"""

from .suite import COLUMNS, TASKS, format_table, paper_rows, print_table

__all__ = ["COLUMNS", "TASKS", "format_table", "paper_rows", "print_table", "evaluate_in_memory",
           "TrainingEvaluator"]


def __getattr__(name):
    if name in ("evaluate_in_memory", "TrainingEvaluator"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
