"""``allocator apply --resume``: a killed apply continues from its journal of finished blocks
and writes the checkpoint an uninterrupted apply writes, byte for byte; a rerun without
``--resume`` over an existing journal is refused (as ``allocator profile`` refuses)."""

from __future__ import annotations

from pathlib import Path

import pytest

import allocator.quant.apply as apply_module
from allocator.cli.main import main
from tests.helpers import save_tiny_model
from tests.offload.conftest import same_folders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from allocator.models.loader import load_model
    from allocator.quant.apply import uniform_plan
    from allocator.schema.io import save_plan

    saved = save_tiny_model(tmp_path_factory.mktemp("apply-resume"), layers=3)
    plan = saved["model"].parent / "plan.json"
    save_plan(uniform_plan(load_model(str(saved["model"])).model, "b3-g32"), plan)
    return {**saved, "plan": plan}


def test_killed_apply_resumes_to_the_same_checkpoint(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["apply", "--plan", str(tiny["plan"]), "--model", str(tiny["model"]), "--method",
            "gptq", "--calib-text", str(tiny["calib"]), "--calib-windows", "4", "--seq-len",
            "32", "--quiet"]  # fmt: skip
    clean = tmp_path / "clean"
    assert main([*args, "--out", str(clean)]) == 0
    assert not (tmp_path / "clean.journal").exists()  # discarded once the checkpoint is saved

    real = apply_module.compress_unit
    calls: list[str] = []

    def dies_in_block_1(model, name, *a, **k):  # type: ignore[no-untyped-def]
        if ".1." in name:
            raise KeyboardInterrupt  # killed between blocks 0 and 1
        return real(model, name, *a, **k)

    monkeypatch.setattr(apply_module, "compress_unit", dies_in_block_1)
    out = tmp_path / "ckpt"
    assert main([*args, "--out", str(out)]) == 130
    journal = tmp_path / "ckpt.journal"
    assert (journal / "block-0000.safetensors").is_file()
    assert not (journal / "block-0001.safetensors").exists()
    assert not out.exists()

    def counting(model, name, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(model, name, *a, **k)

    monkeypatch.setattr(apply_module, "compress_unit", counting)
    assert main([*args, "--out", str(out)]) == 2  # the journal exists: --resume or delete it
    assert main([*args, "--no-act-order", "--out", str(out), "--resume"]) == 2  # another job
    assert calls == []
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert calls and not any(".0." in name for name in calls), "block 0 was compressed again"
    assert same_folders(clean, out) == []
    assert not journal.exists()


def test_journal_path_option(tiny: dict[str, Path], tmp_path: Path) -> None:
    """``--journal PATH`` puts the journal there (and a finished apply removes it)."""
    args = ["apply", "--plan", str(tiny["plan"]), "--model", str(tiny["model"]), "--method",
            "gptq", "--calib-text", str(tiny["calib"]), "--calib-windows", "2", "--seq-len",
            "16", "--quiet", "--out", str(tmp_path / "ckpt")]  # fmt: skip
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "block-0000.safetensors").write_bytes(b"")
    assert main([*args, "--journal", str(tmp_path / "j")]) == 2
    assert main([*args, "--journal", str(tmp_path / "elsewhere")]) == 0
    assert not (tmp_path / "elsewhere").exists()
