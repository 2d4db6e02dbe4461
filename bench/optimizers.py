"""Each optimizer against AdamW: validation loss after the same steps and the same wall time, step-time overhead.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/optimizers.py [--model llama-tiny] [--steps 100] [--out r.json]

AdamW runs first; its training time for --steps steps is the wall-time budget of the others (only forward,
backward and optimizer step are timed; data and evaluation are not). Add models to MODELS and data to DATA.
"""

import argparse
import itertools
import json
import math
import time

import torch

from modeling_hope.optim import OPTIMIZER_NAMES, build_optimizer

# lr of the named optimizer (best of 3 on llama-tiny, 100 steps); the AdamW part of the others uses --adamw-lr.
LR = {"adamw": 3e-3, "muon": 3e-3, "m3": 1e-6, "dmgd": 1e-3, "delta_momentum": 0.02, "preconditioned_momentum": 1e-4}


def llama_tiny(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512))


MODELS = {"llama-tiny": llama_tiny}  # "hope-5m": the 5M HOPE preset's factory, once the model lands


def markov_tokens(vocab, batch, seq, seed):
    """Endless batches from one fixed random, peaked Markov chain: learnable, unlike uniform noise."""
    probs = (3 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))).softmax(-1)
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.empty(batch, seq, dtype=torch.long)
        x[:, 0] = torch.randint(vocab, (batch,), generator=gen)
        for t in range(1, seq):
            x[:, t] = torch.multinomial(probs[x[:, t - 1]], 1, generator=gen)[:, 0]
        yield x


DATA = {"synthetic": markov_tokens}  # the built-in training data loader plugs in here


@torch.no_grad()
def evaluate(model, batches):
    loss = sum(model(input_ids=x, labels=x).loss.item() for x in batches) / len(batches)
    return loss if math.isfinite(loss) else None


def run(name, args, val, budget_s):
    torch.manual_seed(args.seed)
    model = MODELS[args.model](args.vocab)
    extra = {} if name == "adamw" else {"adamw_lr": args.adamw_lr}
    opt = build_optimizer(model, name, args.lr.get(name, LR[name]), weight_decay=args.weight_decay, **extra)
    data, out, train_s, opt_s = DATA[args.data](args.vocab, args.batch, args.seq, args.seed), {}, 0.0, 0.0
    for step in range(1, args.max_factor * args.steps + 1):
        x = next(data)
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        train_s, opt_s = train_s + t2 - t0, opt_s + t2 - t1
        if step == args.steps:
            out.update(val_loss_at_steps=evaluate(model, val), step_ms=1e3 * train_s / step,
                       opt_step_ms=1e3 * opt_s / step, train_s=train_s)
        if "val_loss_at_time" not in out and (train_s >= budget_s or not math.isfinite(loss.item())):
            out.update(val_loss_at_time=evaluate(model, val), steps_at_time=step)
        if step >= args.steps and "val_loss_at_time" in out or not math.isfinite(loss.item()):
            break
    if "val_loss_at_steps" not in out:  # diverged before --steps
        out.update(val_loss_at_steps=None, step_ms=1e3 * train_s / step, opt_step_ms=1e3 * opt_s / step,
                   train_s=train_s)
    out.setdefault("val_loss_at_time", evaluate(model, val))  # hit max_factor * steps before the budget
    out.setdefault("steps_at_time", step)
    return {"lr": args.lr.get(name, LR[name]), **out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-tiny", choices=sorted(MODELS))
    p.add_argument("--data", default="synthetic", choices=sorted(DATA))
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZER_NAMES), choices=OPTIMIZER_NAMES)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--max-factor", type=int, default=3, help="at most this many times --steps to fill the budget")
    p.add_argument("--lr", nargs="*", default=[], metavar="NAME=LR", help="override LR, e.g. m3=1e-5")
    p.add_argument("--adamw-lr", type=float, default=LR["adamw"])
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the JSON here (it is always printed)")
    args = p.parse_args(argv)
    args.lr = {k: float(v) for k, v in (item.split("=", 1) for item in args.lr)}
    torch.set_num_threads(args.threads)
    val = list(itertools.islice(DATA[args.data](args.vocab, args.batch, args.seq, args.seed + 1), args.val_batches))
    names = ["adamw"] + [n for n in args.optimizers if n != "adamw"]
    results = {"adamw": run("adamw", args, val, math.inf)}
    budget = results["adamw"]["train_s"]
    results["adamw"].update(val_loss_at_time=results["adamw"]["val_loss_at_steps"], steps_at_time=args.steps)
    for name in names[1:]:
        results[name] = run(name, args, val, budget)
    base = results["adamw"]
    for r in results.values():
        r.update(step_overhead_vs_adamw=r["step_ms"] / base["step_ms"] - 1,
                 opt_step_overhead_vs_adamw=r["opt_step_ms"] / base["opt_step_ms"] - 1)
    print(f"{'optimizer':<24}{'lr':>9}{'val@steps':>11}{'val@time':>10}{'steps@time':>12}{'ms/step':>9}"
          f"{'overhead':>10}")
    fmt = lambda v: f"{v:.4f}" if v is not None else "nan"  # noqa: E731
    for n, r in results.items():
        print(f"{n:<24}{r['lr']:>9.1e}{fmt(r['val_loss_at_steps']):>11}{fmt(r['val_loss_at_time']):>10}"
              f"{r['steps_at_time']:>12}{r['step_ms']:>9.2f}{r['step_overhead_vs_adamw']:>+10.1%}")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    report = {"config": config, "time_budget_s": budget, "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
