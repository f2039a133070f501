"""``--offload`` on the CLI (profile, apply, eval, run): the same outputs as in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.cli.main import main
from tests.helpers import sample_text, save_tiny_model
from tests.offload.conftest import same_folders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-offload")
    saved = save_tiny_model(root, layers=2)
    held_out = root / "eval.txt"
    held_out.write_text(sample_text(2))
    from allocator.models.loader import load_model
    from allocator.quant.apply import uniform_plan
    from allocator.schema.io import save_plan

    plan = root / "plan.json"
    save_plan(uniform_plan(load_model(str(saved["model"])).model, "b3-g32"), plan)
    return {**saved, "eval": held_out, "plan": plan}


def _both(args: list[str], tmp_path: Path, out_name: str) -> tuple[Path, Path]:
    outs = []
    for extra in ([], ["--offload", "--offload-activations", str(tmp_path / "acts")]):
        out = tmp_path / f"{out_name}-{len(outs)}"
        assert main([*args, "--out", str(out), "--quiet", *extra]) == 0
        outs.append(out)
    return outs[0], outs[1]


@pytest.mark.parametrize("estimator", ["hessian", "fisher", "kl"])
def test_profile_offload(tiny, tmp_path: Path, estimator: str) -> None:
    windows = "2" if estimator == "kl" else "4"
    args = ["profile", "--model", str(tiny["model"]), "--text", str(tiny["calib"]),
            "--estimator", estimator, "--options", "bits=2,3 group=32", "--windows", windows,
            "--seq-len", "32"]  # fmt: skip
    a, b = _both(args, tmp_path, "table.json")
    assert json.loads(a.read_text())["losses"] == json.loads(b.read_text())["losses"]


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_apply_offload(tiny, tmp_path: Path, method: str) -> None:
    args = ["apply", "--plan", str(tiny["plan"]), "--model", str(tiny["model"]),
            "--method", method, "--calib-text", str(tiny["calib"]), "--calib-windows", "4",
            "--seq-len", "32"]  # fmt: skip
    a, b = _both(args, tmp_path, "checkpoint")
    assert same_folders(a, b) == []


def test_eval_offload(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = []
    for extra in ([], ["--offload"]):
        args = ["eval", "--model", str(tiny["model"]), "--reference", str(tiny["model"]),
                "--text", str(tiny["eval"]), "--windows", "4", "--seq-len", "32", "--json",
                "--quiet", *extra]  # fmt: skip
        assert main(args) == 0
        record = json.loads(capsys.readouterr().out)
        records.append((record["perplexity"], record["kl"]))
    assert records[0] == records[1]


def test_run_offload(tiny, tmp_path: Path) -> None:
    from allocator.pipeline import RunSettings, run

    fields = {
        "model": str(tiny["model"]), "budget": 3.5, "estimator": "hessian",
        "options": "bits=2,3,4,5 group=32", "profile_windows": 4, "profile_seq_len": 32,
        "quant_windows": 4, "eval_windows": 4, "seq_len": 32, "calib_text": [str(tiny["calib"])],
        "eval_text": [str(tiny["eval"])],
    }  # fmt: skip
    results = []
    for offload in (False, True):
        out = tmp_path / f"run-{offload}"
        settings = RunSettings(**fields, offload=offload)
        results.append(run(settings, out, progress=False, log=lambda _m: None))
    strip = ("seconds",)
    rows = [[{k: v for k, v in r.items() if k not in strip} for r in x["rows"]] for x in results]
    assert rows[0] == rows[1]
    assert (
        same_folders(tmp_path / "run-False" / "checkpoint", tmp_path / "run-True" / "checkpoint")
        == []
    )
    assert "offload" not in RunSettings(**fields, offload=True).model_dump()  # hashes unchanged
