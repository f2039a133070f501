"""A BERT-style encoder folder through the CLI: profile (fisher, hessian), solve, apply, eval."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from allocator.cli.main import main
from tests.helpers import tiny_model

TEXT = " ".join(
    f"The {w} walked to the {v} near the river. It was a quiet day in the {u}."
    for w, v, u in zip(
        ["fox", "cat", "dog", "owl", "man", "boy"] * 12,
        ["mill", "barn", "farm", "town", "hill", "lake"] * 12,
        ["north", "south", "east", "west", "valley", "forest"] * 12,
        strict=True,
    )
)


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random BERT (vocabulary: special tokens and characters) saved with a tokenizer."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("encoder")
    letters = list(string.ascii_lowercase + string.digits + ".,")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab[:128]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    model = tiny_model("bert")
    model.config.architectures = ["BertModel"]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "text.txt").write_text(TEXT)
    return folder


def test_encoder_profile_solve_apply_eval(
    encoder_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, text = str(encoder_folder), str(encoder_folder / "text.txt")
    common = ["--model", model, "--text", text, "--windows", "4", "--seq-len", "32", "--quiet"]
    grid = ["--options", "bits=2,3,4,8 group=32"]
    for estimator in ("fisher", "hessian"):
        out = tmp_path / f"{estimator}.json"
        assert main(["profile", *common, *grid, "--estimator", estimator, "--out", str(out)]) == 0
    assert "24 units" in capsys.readouterr().out
    constraints = tmp_path / "c.yaml"
    constraints.write_text("budget:\n  avg_bits: 4.0\ntie_presets: [qkv]\n")
    plan = tmp_path / "plan.json"
    assert main(["solve", "--table", str(tmp_path / "fisher.json"), "--constraints",
                 str(constraints), "--out", str(plan), "--quiet"]) == 0  # fmt: skip
    checkpoint = tmp_path / "ckpt"
    assert main(["apply", "--model", model, "--plan", str(plan), "--out", str(checkpoint),
                 "--method", "gptq", "--calib-text", text, "--calib-windows", "4",
                 "--seq-len", "32", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--model", str(checkpoint), "--reference", model, "--text", text,
                 "--windows", "8", "--json", "--quiet"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "embedding" and 0.5 < record["cosine"] < 1.0
    assert record["relative_mse"] > 0 and record["texts"] == 8


def test_encoder_errors_name_the_fix(
    encoder_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, text = str(encoder_folder), str(encoder_folder / "text.txt")
    cases = [
        (["eval", "--model", model, "--text", text], "--reference"),
        (["eval", "--model", model, "--text", text, "--task", "causal_lm"], "--task embedding"),
        (["profile", "--model", model, "--text", text, "--estimator", "kl",
          "--out", str(tmp_path / "t.json")], "causal-LM head"),
    ]  # fmt: skip
    for args, message in cases:
        capsys.readouterr()
        assert main([*args, "--quiet"]) in (2, 3, 4, 5)  # an AllocatorError, not a crash (70)
        assert message in capsys.readouterr().err


def test_run_on_an_encoder_reports_embedding_similarity(
    encoder_folder: Path, tmp_path: Path
) -> None:
    """allocator run detects the encoder: Fisher table, validation and evaluation by cosine."""
    out = tmp_path / "run"
    text = str(encoder_folder / "text.txt")
    args = ["run", "--model", str(encoder_folder), "--budget", "4", "--out", str(out),
            "--options", "bits=2,3,4,8 group=32", "--profile-windows", "4",
            "--profile-seq-len", "32", "--quant-windows", "4", "--eval-windows", "8",
            "--validate-windows", "2", "--seq-len", "32", "--calib-text", text,
            "--eval-text", text, "--quiet"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "embedding"
    assert results["validation"]["metric"] == "1 - cosine"
    plan_row = next(r for r in results["rows"] if r["method"].startswith("plan"))
    assert 0.0 < plan_row["cosine"] <= 1.0 + 1e-6
    assert "mean cosine" in (out / "results.md").read_text()
