"""README's "Use allocator from your library" example: the same file, run, and type-checked."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = Path(__file__).with_name("library_example.py")


def _readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use allocator from your library", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert found, "no python block in the README section"
    return found.group(1)


def test_readme_shows_the_example_file() -> None:
    assert _readme_block() == EXAMPLE.read_text()
    assert len(EXAMPLE.read_text().splitlines()) <= 30


def test_the_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert capsys.readouterr().out.startswith("optimal ")
    plan = namespace["plan"]
    assert plan.avg_bits <= 4.25 + 1e-9 and plan.status == "optimal"
    assert namespace["quantize_config"]["lm_head"] is True  # the plan quantizes lm_head


def test_no_any_leaks_into_the_example(tmp_path: Path) -> None:
    """Checked as a library user's project would be: its own (empty) mypy config, not ours."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed (it is in the dev extra)")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    args = [f"--config-file={config}", "--follow-imports=silent", "--disallow-any-expr"]
    args += ["--no-incremental", str(EXAMPLE)]
    out = subprocess.run([mypy, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
