"""What the GPU would run, checked without one: the decode kernels compiled for sm_90.

The compile runs in a subprocess without ``TRITON_INTERPRET`` (this test session may use the
interpreter, which replaces the compiler); skipped where Triton cannot compile for sm_90.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {bench!r})
    import kernels_static as ks
    reason = ks.compiler_available()
    if reason:
        print(json.dumps({{"skip": reason}}))
        raise SystemExit(0)
    ks.import_kernels()
    k, n, group = ks.SHAPE[0], ks.SHAPE[1], 128
    rows = [ks.run_case(c, k, n, group) for c in ks.round2_cases(ks.BITS, [1], k, n, group)]
    print(json.dumps({{"rows": rows}}))
    """
)


@pytest.mark.slow
def test_decode_kernels_do_not_spill_and_load_weights_128_bits_at_a_time() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = SCRIPT.format(bench=str(ROOT / "benchmarks"))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    rows = report["rows"]
    assert {(r["bits"], r["note"]) for r in rows} >= {(b, "default") for b in (2, 3, 4, 5, 6, 8)}
    for row in rows:
        where = f"{row['bits']}-bit {row['config']}"
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, where
        assert row["stack"] == 0, where
        # the widest plane (all of a 2/4/8-bit weight) in 128-bit loads; a narrower plane of a
        # 3/5/6-bit weight is read 128 / (widest / its width) bits a thread, by design
        assert any(op.endswith(".128") for op in row["weight_loads"]), where
        if row["bits"] in (2, 4, 8):
            assert row["weight_128"], where
        assert row["load_ratio"] <= 1.25, where  # no word reloaded per code (round 1's 8x)
        assert row["loop_sass"] > 0 and row["sass_per_byte"] < 1.0, where
