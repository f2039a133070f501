"""``allocator export`` and ``allocator import`` end to end through the CLI entry point."""

from __future__ import annotations

import json
import re

import numpy as np

from allocator.cli.main import main
from allocator.schema import Option, SensitivityTable
from allocator.schema.io import load_table, save_plan, save_table


def _units_table(units, path):
    table = SensitivityTable(
        units=units,
        options=[Option.parse("b4-g128")],
        losses={u.name: {"b4-g128": 1.0} for u in units},
    )
    save_table(table, path)
    return path


def test_export_llamacpp(target_plans, units, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    save_plan(target_plans["llamacpp"], plan_path)
    table = _units_table(units, tmp_path / "units.json")
    out = tmp_path / "types.txt"
    code = main(
        [
            "export",
            "--plan",
            str(plan_path),
            "--to",
            "llama.cpp",
            "--out",
            str(out),
            "--units",
            str(table),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "size: planned" in text and f"wrote {out}" in text
    assert out.read_text().count("=") == len(out.read_text().split())


def test_export_compressed_tensors_writes_both_files(target_plans, tmp_path):
    plan_path = tmp_path / "plan.json"
    save_plan(target_plans["compressed-tensors"], plan_path)
    out = tmp_path / "recipe.yaml"
    assert (
        main(
            [
                "export",
                "--plan",
                str(plan_path),
                "--to",
                "llm-compressor",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    qc = json.loads((tmp_path / "recipe.quantization_config.json").read_text())
    assert qc["quant_method"] == "compressed-tensors"


def test_export_refuses_with_exit_code(mixed_plan, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    save_plan(mixed_plan, plan_path)
    code = main(
        ["export", "--plan", str(plan_path), "--to", "vllm", "--out", str(tmp_path / "x.yaml")]
    )
    assert code == 4
    assert "does not fit target 'vllm'" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_export_list(capsys):
    assert main(["export", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "gptqmodel",
        "autoround",
        "compressed-tensors",
        "llamacpp",
        "torchao",
        "modelopt",
        "hqq",
    ):
        assert name in listed


def test_export_list_names_every_target_the_cli_accepts(capsys):
    from allocator.export import EXPORTERS
    from allocator.schema.targets import TARGETS, get_rules

    assert main(["export", "--list"]) == 0
    listed: set[str] = set()
    for line in capsys.readouterr().out.splitlines():
        head = re.match(r"(\S+?)(?: \(also: ([^)]*)\))?: ", line)
        assert head, line
        listed |= {head[1], *(head[2] or "").split(", ")} - {""}
    accepted = {
        f"{base}{suffix}"
        for name, rules in TARGETS.items()
        for base in (name, *rules.aliases)
        for suffix in ("", *(f"+{v}" for v in rules.variants))
    }
    assert listed == accepted
    assert {"gptqmodel+vllm", "autoround+vllm", "compressed-tensors+vllm"} <= listed
    for name in listed:  # each one resolves to rules and an exporter, as --to NAME does
        EXPORTERS.get(get_rules(name).name.partition("+")[0])


def test_import_imatrix_and_exl2(tmp_path, units):
    from tests.profile.importers.test_exl2_measurement import ATTN, MLP, candidate
    from tests.profile.importers.test_imatrix import ACTS, write_legacy_imatrix

    dat = tmp_path / "imatrix.dat"
    write_legacy_imatrix(dat, ACTS)
    out = tmp_path / "imatrix.npz"
    assert main(["import", "--from", "imatrix", "--in", str(dat), "--out", str(out)]) == 0
    with np.load(out) as data:
        np.testing.assert_allclose(
            data["model.layers.0.mlp.down_proj"],
            (ACTS["blk.0.ffn_down.weight"] ** 2).mean(0),
            rtol=1e-5,
        )
    measurement = {
        "model.layers.0.self_attn": [candidate(0.9, "self_attn", c) for c in ATTN],
        "model.layers.0.mlp": [candidate(0.95, "mlp", c) for c in MLP],
    }
    meas = tmp_path / "measurement.json"
    meas.write_text(json.dumps({"measurement": measurement}))
    table_path = _units_table(units, tmp_path / "units.json")
    out_table = tmp_path / "exl2_table.json"
    args = [
        "import",
        "--from",
        "exl2",
        "--in",
        str(meas),
        "--out",
        str(out_table),
        "--units",
        str(table_path),
    ]
    assert main(args) == 0
    assert [u.name for u in load_table(out_table).units] == [
        "model.layers.0.self_attn",
        "model.layers.0.mlp",
    ]
