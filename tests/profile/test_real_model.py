"""On the real SmolLM2-135M (a few short windows, to stay within minutes)."""

from __future__ import annotations

import pytest

from allocator.cli.main import main

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2():
    from allocator.models.loader import load_model

    return load_model("smollm2")


def test_hessian_and_kl_tables_on_smollm2(smollm2, tmp_path):
    from allocator.models.units import find_units
    from allocator.profile.api import profile
    from allocator.schema.io import load_table, save_table

    table = profile(smollm2, None, "hessian", "bits=2,4 group=128", windows=2, seq_len=64,
                    progress=False)  # fmt: skip
    assert len(table.units) == 210
    assert all(
        table.losses[u.name]["b2-g128"] > table.losses[u.name]["b4-g128"] for u in table.units
    )
    save_table(table, tmp_path / "t.json")
    assert load_table(tmp_path / "t.json").losses == table.losses

    units = find_units(smollm2.model)
    picked = [units[-1], units[-7]]  # block 29 down_proj and q_proj: cheap to re-run
    kl = profile(smollm2, None, "kl", "bits=2,4 group=128", windows=1, seq_len=64, units=picked,
                 progress=False)  # fmt: skip
    for unit in picked:
        row = kl.losses[unit.name]
        assert row["b2-g128"] > row["b4-g128"] >= 0


def test_cli_short_text_is_a_clear_error(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    code = main(["profile", "--text", str(short), "--seq-len", "256", "--windows", "1",
                 "--out", str(tmp_path / "t.json"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "fewer than one window" in capsys.readouterr().err
