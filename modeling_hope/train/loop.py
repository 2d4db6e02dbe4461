"""The training loop (nanoGPT style: the whole loop on one screen; everything else is built in setup.py)."""

import math
import sys
import time

import torch
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .errors import EXIT_DIVERGED, EXIT_INTERRUPTED
from .evaluate import validation_loss
from .export import export_model
from .metrics import plot_loss_curve, read_metrics
from .setup import Run, setup
from .signals import StopRequest


def train(cfg, callback=None) -> dict:
    """Train with `cfg`; `callback(step, run)` runs after every optimizer step. Returns a summary dict."""
    run = setup(cfg)
    acc, model, opt, sched = run.accelerator, run.model, run.optimizer, run.scheduler
    step = logged = run.start_step
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * acc.num_processes
    batches = run.batches.iterate(step * cfg.grad_accum)  # micro-batch k depends on k only: resuming needs the step
    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and acc.is_main_process))
    evals = [evaluate(run, 0, bar)] if step == 0 and cfg.eval_at_start else []
    t_start = t_log = time.perf_counter()
    stopped, bad_steps = None, 0
    with StopRequest() as stop:
        while step < cfg.max_steps:
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                if run.token_digest is not None:
                    run.token_digest.update(batch)
                x = batch.to(acc.device)
                with acc.accumulate(model):  # gradients are synced between processes at the last micro-batch only
                    loss = model(input_ids=x, labels=x, use_cache=False).loss
                    acc.backward(loss)
                step_loss += loss.detach() / cfg.grad_accum
            grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            if all_finite(acc, step_loss, grad_norm):
                run.slow.before_step(step + 1)  # slow CMS levels: accumulate; update every outer_period steps only
                opt.step()
                bad_steps = 0
            else:  # a NaN/inf loss or gradient: skip the update, so the weights stay good
                bad_steps += 1
                note(acc, f"step {step + 1}: non-finite loss or gradient; update skipped ({bad_steps} in a row)")
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                record = {"step": step, "loss": acc.reduce(step_loss, reduction="mean").item(),
                          "lr": sched.get_last_lr()[0], "tokens": step * tokens_per_step,
                          "tokens_per_s": tokens_per_step * (step - logged) / max(now - t_log, 1e-9),
                          "grad_norm": None if grad_norm is None else float(grad_norm), "elapsed_s": now - t_start}
                log(run, record, bar)
                t_log, logged = time.perf_counter(), step
            if callback is not None:
                callback(step, run)
            t_pause = time.perf_counter()  # evaluation and checkpoint time do not count against tokens/s
            stopped = "diverged" if bad_steps >= cfg.max_bad_steps else stop_reason(cfg, run, stop, step, t_start)
            if step % cfg.eval_every == 0 or step == cfg.max_steps or stopped == "max_minutes":
                evals.append(evaluate(run, step, bar))
            if step % cfg.save_every == 0 or step == cfg.max_steps or stopped:
                save_checkpoint(acc, run.output_dir, step, run.trainer_state(step), run.tokenizer, cfg.keep_checkpoints)
            t_log += time.perf_counter() - t_pause
            if stopped:
                break
    bar.close()
    return finish(run, step, stopped, evals, time.perf_counter() - t_start)


# ---------------------------------------------------------------------------------------------------------------
# Helpers of the loop.


def log(run: Run, record: dict, bar) -> None:
    run.metrics.log(record)
    run.accelerator.log({"train/loss": record["loss"], "train/lr": record["lr"],
                         "train/tokens_per_s": record["tokens_per_s"]}, step=record["step"])
    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")


def evaluate(run: Run, step: int, bar) -> dict:
    acc, out = run.accelerator, {"step": step}
    if run.val_blocks is not None:
        out.update(validation_loss(run.model, run.val_blocks, run.cfg.batch_size, acc))
    if run.lm_evaluator is not None:  # main process only (lm-eval on the unwrapped model)
        out.update(run.lm_evaluator(acc.unwrap_model(run.model), run.tokenizer))
    acc.wait_for_everyone()
    if len(out) > 1:
        run.metrics.log(out)
        acc.log({k.replace("val_", "val/"): v for k, v in out.items() if k != "step"}, step=step)
        if "val_loss" in out and acc.is_main_process:
            bar.write(f"[hope train] step {step}: val loss {out['val_loss']:.4f}, ppl {out['val_ppl']:.2f}",
                      file=sys.stderr)
        if acc.is_main_process:
            plot_loss_curve(run.metrics.path, run.output_dir / "loss_curve.png", run.output_dir.name)
    return out


def all_finite(accelerator, loss, grad_norm) -> bool:
    """Loss and gradient norm finite on every process (one small collective when there are several)."""
    value = torch.as_tensor(loss, dtype=torch.float32, device=accelerator.device).reshape(1)
    if grad_norm is not None:
        value = value + 0.0 * torch.as_tensor(grad_norm, dtype=torch.float32, device=accelerator.device).reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(torch.isfinite(value).item())


def stop_reason(cfg, run: Run, stop: StopRequest, step: int, t_start: float) -> str | None:
    if cfg.max_steps_this_run is not None and step - run.start_step >= cfg.max_steps_this_run and step < cfg.max_steps:
        return "max_steps_this_run"
    timed_out = cfg.max_minutes is not None and time.perf_counter() - t_start > 60 * cfg.max_minutes
    # every process asks at every step: a signal or the time limit on any of them stops all at the same step
    flags = torch.tensor([float(stop.signal is not None), float(timed_out)], device=run.accelerator.device)
    if run.accelerator.num_processes > 1:
        flags = run.accelerator.reduce(flags, reduction="sum")
    return "signal" if flags[0] > 0 else "max_minutes" if flags[1] > 0 else None


def finish(run: Run, step: int, stopped: str | None, evals: list, seconds: float) -> dict:
    acc, cfg = run.accelerator, run.cfg
    model_dir = None
    if stopped in (None, "max_minutes"):  # a finished run (or one out of time) is exported as a Hub-ready folder
        model_dir = export_model(acc, run.model, run.tokenizer, run.output_dir / "model", cfg.seq_len)
    if acc.is_main_process:
        plot_loss_curve(run.metrics.path, run.output_dir / "loss_curve.png", run.output_dir.name)
    if cfg.record_ranks:
        record_rank(run)
    acc.end_training()
    speed, memory = throughput(run), peak_memory(acc)
    last = next((e for e in reversed(evals) if "val_loss" in e), {})
    first = next((e for e in evals if "val_loss" in e and e["step"] == 0), {})
    summary = {"step": step, "stopped": stopped, "output_dir": str(run.output_dir),
               "model_dir": None if model_dir is None else str(model_dir), "train_seconds": seconds,
               "val_loss_start": first.get("val_loss"), "val_ppl_start": first.get("val_ppl"),
               "val_loss": last.get("val_loss"), "val_ppl": last.get("val_ppl"), "evals": evals,
               "tokens_per_s": speed, **memory,
               **(run.token_digest.to_dict() if run.token_digest is not None else {"token_stream_sha256": None}),
               "exit_code": {"signal": EXIT_INTERRUPTED, "diverged": EXIT_DIVERGED}.get(stopped, 0),
               "process_index": acc.process_index}
    if stopped == "diverged":
        note(acc, f"stopped at step {step}: {cfg.max_bad_steps} steps in a row had a non-finite loss or gradient "
                  f"(updates skipped, the checkpoint holds the last good weights); try a lower --lr")
    if stopped == "signal":
        note(acc, f"interrupted: checkpoint saved at step {step} in {run.output_dir / 'checkpoints'}; continue with "
                  f"--resume")
    if summary["val_ppl"] is not None and not math.isnan(summary["val_ppl"]):
        note(acc, f"validation perplexity {summary['val_ppl']:.2f} (at step {last['step']})")
    return summary


def throughput(run: Run) -> float | None:
    """Training tokens per second of this run (evaluation and checkpoint time excluded), from the log records;
    the first record's interval (warm-up: first allocations, lazy initialisation) is left out when there are more."""
    records = [r for r in read_metrics(run.metrics.path) if "tokens_per_s" in r and r["step"] > run.start_step]
    tokens, seconds, previous = 0.0, 0.0, run.start_step
    if len(records) > 2:
        previous, records = records[0]["step"], records[1:]
    for r in records:
        n = (r["step"] - previous) * r["tokens"] / r["step"]
        tokens, seconds, previous = tokens + n, seconds + n / max(r["tokens_per_s"], 1e-9), r["step"]
    return tokens / seconds if seconds > 0 else None


def peak_memory(accelerator) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, the peak allocated by torch."""
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if accelerator.device.type == "cuda":
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    return out


def note(accelerator, message: str) -> None:
    """A status line on stderr from the main process (stdout carries only the final JSON summary)."""
    if accelerator.is_main_process:
        print(f"[hope train] {message}", file=sys.stderr, flush=True)


def record_rank(run: Run) -> None:
    """(--record-ranks, for tests) this process's data (block indices per micro-batch) and a checksum of its weights."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, tensor in sorted(run.unwrapped.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    out = run.output_dir / "ranks" / f"rank{run.accelerator.process_index}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rank": run.accelerator.process_index, "world": run.accelerator.num_processes,
                               "weights_sha256": digest.hexdigest(), "batches": getattr(run.batches, "seen", None)}))
