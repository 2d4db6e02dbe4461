"""bench/study.py (issue 7) end to end at a tiny scale: two arms, a few steps, a local corpus written here.

Checks: an interrupted arm resumes and ends with the same token-stream hash as an uninterrupted one (every arm saw
the same tokens), each JSON holds the expected fields, a finished arm is skipped, and the study section of the
document is exactly what the report regenerates from the JSON files (also for the committed docs/RESULTS.md and
bench/results/study/).
"""

import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import study  # noqa: E402
import study_report  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True,
            cms_levels=[{"intermediate_size": 64, "period": 0, "lr": 0.0, "outer_period": 1},
                        {"intermediate_size": 32, "period": 16, "lr": 1e-3, "outer_period": 1}],
            max_position_embeddings=1024, memory_chunk_size=16, projection_chunk_size=16)

WORDS = ("the sea ship captain storm night house letter morning river king queen garden road town friend money "
         "war love child mother father door window light dark cold warm old young long small great little").split()


def _write_text(path: Path, rng: random.Random, n_words: int) -> None:
    sentences = []
    while sum(len(s.split()) for s in sentences) < n_words:
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "?", "!"]))
    path.write_text("\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)))


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    from modeling_hope import presets

    monkeypatch.setitem(presets.PRESETS, "hope-tiny", TINY)
    rng = random.Random(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        _write_text(corpus / f"book{i:02d}.txt", rng, 700)
    bench = tmp_path / "benchdata"
    (bench / "wikitext/wikitext-2-raw-hfrecon").mkdir(parents=True)
    _write_text(bench / "wikitext/wikitext-2-raw-hfrecon/wiki.test.raw", rng, 300)
    (bench / "lambada").mkdir()
    (bench / "lambada/lambada_test.jsonl").write_text(
        "".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(40))}) + "\n" for _ in range(8)))
    doc = tmp_path / "docs" / "RESULTS.md"
    doc.parent.mkdir()
    doc.write_text("# Results\n\n## Deep optimizers\n\nanother helper's section\n")
    argv = ["run", "--preset", "hope-tiny", "--tokens", "256", "--seq-len", "32", "--batch-size", "2",
            "--arms", "hope,transformer_pp", "--data", str(corpus), "--benchdata", str(bench),
            "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--doc", str(doc),
            "--val-fraction", "0.2", "--val-blocks", "2", "--tasks", "none", "--ood-blocks", "2",
            "--niah-lengths", "512", "--niah-samples", "1", "--position-length", "64", "--position-windows", "1"]
    return tmp_path, argv, doc


def test_study_end_to_end(tiny, capsys):
    tmp, argv, doc = tiny
    results = tmp / "results"

    # interrupted after 2 of 4 steps: the first arm has a checkpoint, no JSON, and the driver says "stopped"
    assert study.main(argv + ["--stop-after-steps", "2"]) == 130
    assert not list(results.glob("*.json"))
    assert list((tmp / "work/hope/train/checkpoints").glob("step-*2"))

    # resumed: both arms finish; the resumed arm's token stream equals the uninterrupted arm's
    assert study.main(argv) == 0
    records = {a: json.loads((results / f"{a}.json").read_text()) for a in ("hope", "transformer_pp")}
    invocations = (tmp / "work/hope/train_invocations.jsonl").read_text().splitlines()
    assert len(invocations) == 2 and json.loads(invocations[1])["resumed"]
    for name, r in records.items():
        for key in ("study", "config", "parameters", "parameters_vs_hope", "tokens", "token_stream_sha256",
                    "wall_time_s", "tokens_per_s", "val_curve", "final_val_loss", "final_val_ppl", "ood", "lm_eval",
                    "ppl_by_position", "passkey", "train_command", "tokenizer_fingerprint", "seed",
                    "driver_command"):
            assert key in r, (name, key)
        assert r["tokens"] == 4 * 2 * 32 and r["token_stream_batches"] == 4
        assert r["val_curve"][0]["step"] == 0 and r["val_curve"][-1]["step"] == 4
        assert set(r["ood"]) >= {"wikitext2_test", "lambada_text"} and r["ood"]["lambada_text"]["ppl"] > 1
        assert set(r["passkey"]["accuracy"]) == {"512"}
        assert r["ppl_by_position"]["seq_len"] == 64
        assert abs(r["parameters_vs_hope"]) <= 0.05
    assert records["hope"]["arch"] == "hope" and records["transformer_pp"]["arch"] == "llama"
    assert records["hope"]["token_stream_sha256"] == records["transformer_pp"]["token_stream_sha256"]
    assert records["hope"]["tokenizer_fingerprint"] == records["transformer_pp"]["tokenizer_fingerprint"]

    # rerun: finished arms are skipped (nothing retrained, the JSON untouched)
    before = {p.name: p.read_bytes() for p in results.glob("*.json")}
    capsys.readouterr()
    assert study.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"hope": "skipped",
                                                                           "transformer_pp": "skipped"}
    assert {p.name: p.read_bytes() for p in results.glob("*.json")} == before
    assert len((tmp / "work/hope/train_invocations.jsonl").read_text().splitlines()) == 2

    # the document's study section is exactly the report regenerated from the JSON; the other section is kept
    section = study_report.render(results)
    assert study_report.read_section(doc) == section
    text = doc.read_text()
    assert "## Deep optimizers\n\nanother helper's section" in text
    assert "| HOPE | " in section and "not yet run" in section and "Below the issue's scale" in section
    assert records["hope"]["token_stream_sha256"] in section
    assert f"Continue with `{records['hope']['driver_command']}`" in section and "--arms" not in section
    assert (doc.parent / "figures" / "study_val_loss.png").is_file()
    assert study.main(["report", "--results", str(results), "--doc", str(doc), "--check"]) == 0
    doc.write_text(text.replace("| HOPE | ", "| HOPE (edited) | "))
    assert study.main(["report", "--results", str(results), "--doc", str(doc), "--check"]) == 1


def test_committed_section_matches_committed_json():
    """docs/RESULTS.md's study section is what the report makes of the committed bench/results/study/*.json."""
    section = study_report.render(REPO / "bench" / "results" / "study")
    assert study_report.read_section(REPO / "docs" / "RESULTS.md") == section


def test_arms_within_five_percent():
    for name in study.ARMS:
        m = study.arm_model(name, "hope-5m")
        assert abs(m["parameters_vs_hope"]) <= 0.05, (name, m["parameters_vs_hope"])


def test_driver_command_drops_per_invocation_options():
    cmd = study.driver_command(["run", "--arms", "hope", "--tokens", "9", "--stop-after-steps=2", "--arms=x"])
    assert cmd == "PYTHONPATH=. python bench/study.py run --tokens 9"
