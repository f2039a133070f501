"""A sample of the fuzz cases through the command line: ``allocator solve`` and ``check`` on
mutated files end with exit 0 or a user-error code and a message, never a traceback or the
internal-error exit code; unmutated files (every fifth case on average) must solve."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from allocator import errors
from allocator.cli.main import main
from allocator.schema import io
from tests.schema.test_fuzz import _bases, mutate_csv, mutate_doc, render

N_CASES = int(__import__("os").environ.get("ALLOCATOR_CLI_FUZZ_CASES", "100"))
USER_CODES = {0, *(cls.exit_code for cls in vars(errors).values()
                    if isinstance(cls, type) and hasattr(cls, "exit_code"))}  # fmt: skip


def test_cli_fuzz_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert errors.INTERNAL_ERROR_EXIT_CODE not in USER_CODES
    bases = _bases(np.random.default_rng(5), 6)
    rng = random.Random(5)
    codes: dict[int, int] = {}
    for k in range(N_CASES):
        table, constraints, plan = rng.choice(bases)
        fmt = rng.choice(["json", "yaml", "toml"])
        t_path, c_path, p_path = (
            tmp_path / f"t{k}.json",
            tmp_path / f"c{k}.{fmt}",
            tmp_path / f"p{k}.json",
        )
        io.save_table(table, t_path)
        c_doc = constraints.model_dump(mode="json", exclude_none=True)
        c_path.write_bytes(render(c_doc, fmt, rng))
        target = rng.choice(["table", "csv", "constraints", "plan", "none"])
        if target == "none":  # the control: files written plainly, nothing mutated
            c_path = tmp_path / f"c{k}.json"
            c_path.write_text(json.dumps(c_doc))
        elif target == "table":
            t_path.write_bytes(render(mutate_doc(table.model_dump(mode="json"), rng), "json", rng))
        elif target == "csv":
            t_path = tmp_path / f"t{k}.csv"
            t_path.write_bytes(mutate_csv(io.table_to_csv(table), rng))
        elif target == "constraints":
            c_path.write_bytes(render(mutate_doc(c_doc, rng), fmt, rng))
        if target == "plan":
            p_path.write_bytes(render(mutate_doc(plan.model_dump(mode="json"), rng), "json", rng))
            args = ["check", "--plan", str(p_path), "--table", str(t_path),
                    "--constraints", str(c_path)]  # fmt: skip
        else:
            args = ["solve", "--table", str(t_path), "--constraints", str(c_path),
                    "--out", str(tmp_path / f"out{k}.json")]  # fmt: skip
        code = main(args)
        printed = capsys.readouterr()
        codes[code] = codes.get(code, 0) + 1
        assert code in USER_CODES, f"case {k} ({target}): exit {code}\n{printed.err[-2000:]}"
        assert "Traceback" not in printed.err + printed.out, f"case {k} ({target})"
        if target == "none":  # unmutated files: the control
            assert code == 0, f"case {k}: valid files refused\n{printed.err[-2000:]}"
        elif code != 0:
            assert printed.err.strip(), f"case {k} ({target}): exit {code} without a message"
    assert codes.get(0, 0) >= N_CASES // 10 and codes.get(2, 0) >= N_CASES // 2, codes
