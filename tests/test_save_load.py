"""Spec checks for the Hub path: safetensors round trip, remote code in a fresh process, pipeline, beam search."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, pipeline

from conftest import build, tiny_config

TEXT = ["the cat sat on the mat", "a dog ran in the park", "memory learns in context", "nested learning of levels"]


def make_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tokenizer = make_tokenizer()
    levels = [{"intermediate_size": 16}, {"intermediate_size": 8, "period": 3, "lr": 0.2}]
    config = tiny_config(vocab_size=len(tokenizer), cms_levels=levels, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    model = build(config, seed=9)
    folder = tmp_path_factory.mktemp("hope-tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def test_save_then_load_is_bit_identical(saved):
    model, _, folder = saved
    assert (folder / "model.safetensors").exists()
    for name in ("modeling_hope.py", "configuration_hope.py", "cache_hope.py", "fast_weight_memory.py",
                 "memory_chunk.py", "continuum_memory.py", "lm_head.py", "memory_triton.py",
                 "fused_scan_kernel.py"):
        assert (folder / name).exists(), name
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"].endswith("HopeForCausalLM")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


REMOTE_SCRIPT = textwrap.dedent("""
    import sys, json, torch
    sys.modules["modeling_hope"] = None  # the installed package must not be used: only the folder's code
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    folder = sys.argv[1]
    torch.set_num_threads(int(sys.argv[4]))  # as many as the parent: bit-equal logits need the same reductions
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        raise SystemExit("loaded without trust_remote_code")
    except ValueError:
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        logits = model(ids).logits
    torch.save(logits, sys.argv[3])
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    text = gen("the cat", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the cat"), text
    prompt = tok(["the cat sat", "a dog"], return_tensors="pt", padding=True, padding_side="left")
    beams = model.generate(**prompt, max_new_tokens=4, num_beams=3, do_sample=False)
    samples = model.generate(**prompt, max_new_tokens=4, do_sample=True, num_return_sequences=3)
    assert beams.shape == (2, prompt.input_ids.shape[1] + 4), beams.shape
    assert samples.shape == (6, prompt.input_ids.shape[1] + 4), samples.shape
    print("REMOTE OK", text)
""")


def test_remote_code_in_a_fresh_process(saved, tmp_path):
    model, _, folder = saved
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), str(folder), json.dumps(ids.tolist()),
                             str(tmp_path / "logits.pt"), str(torch.get_num_threads())], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE OK" in result.stdout
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), model(ids).logits)


def test_pipeline_beam_search_and_sampling_in_process(saved):
    model, tokenizer, folder = saved
    gen = pipeline("text-generation", model=str(folder), tokenizer=tokenizer)
    assert gen("a dog", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith("a dog")
    prompt = tokenizer(["nested learning", "the"], return_tensors="pt", padding=True, padding_side="left")
    beams = model.generate(**prompt, max_new_tokens=5, num_beams=3, do_sample=False, num_return_sequences=2)
    assert beams.shape == (4, prompt.input_ids.shape[1] + 5)
    torch.manual_seed(0)
    samples = model.generate(**prompt, max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert samples.shape == (6, prompt.input_ids.shape[1] + 5)
    # the first beam equals an exhaustive check of the beam search's own score ordering: greedy is one candidate,
    # so the best beam's log-probability is at least the greedy sequence's
    greedy = model.generate(**prompt, max_new_tokens=5, do_sample=False)

    def logprob(seqs):
        with torch.no_grad():
            attn = (seqs != tokenizer.pad_token_id).long()
            attn[:, prompt.input_ids.shape[1]:] = 1
            logp = model(seqs, attention_mask=attn).logits.log_softmax(-1)
        new = seqs[:, prompt.input_ids.shape[1]:]
        return logp[:, prompt.input_ids.shape[1] - 1:-1].gather(-1, new[..., None]).squeeze(-1).sum(-1)

    assert (logprob(beams[::2]) >= logprob(greedy) - 1e-4).all()
