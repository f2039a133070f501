"""results/peers.md from results/peers/*.json and allocator's rows (results/models/MODEL@*.json).

The generated part (every tool run with its settings, then one comparison per budget) is
rewritten on each call; hand-written notes below the ``NOTES`` heading are kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NOTES = "## What ran and what did not"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def allocator_records(model_results: Path, model: str) -> list[dict[str, Any]]:
    """``allocator run``'s default job at each budget (benchmarks/models.py), where present."""
    out = []
    for path in sorted(model_results.glob(f"{model}@*.json")):
        rec = json.loads(path.read_text())
        for row in rec["rows"]:
            if row["method"] == "unmodified":
                continue
            label = "allocator run" + (
                " --calibrate-options" if rec.get("calibrate_options") else ""
            )
            out.append({"tool": f"{label}: {row['method']}", "budget": rec["budget"],
                        "real_avg_bits": row["avg_bits"], "perplexity": row["perplexity"],
                        "kl": row["kl"], "wall_seconds": rec.get("run_seconds"),
                        "status": "ok", "settings": {"source": path.name}})  # fmt: skip
    return out


def _detail_line(rec: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in rec.get("settings", {}).items())
    package = rec.get("package", "allocator")
    status = "ok" if rec["status"] == "ok" else f"**{rec['status']}**: {rec['error']}"
    return (
        f"| {rec['tool']} | {rec['budget']} | {package}; {settings} | "
        f"{_fmt(rec.get('real_avg_bits'), '.3f')} | {_fmt(rec.get('perplexity'), '.2f')} | "
        f"{_fmt(rec.get('kl'), '.4f')} | {rec.get('wall_seconds', '-')} | "
        f"{rec.get('peak_rss_mb', '-')} | {status} |"
    )


def comparison(records: list[dict[str, Any]]) -> list[str]:
    """One row per (budget, tool that produced a number), best KL first within a budget."""
    lines = ["| budget | tool | real avg bits | perplexity | KL |", "|---|---|---|---|---|"]
    done = [r for r in records if r["status"] == "ok" and r.get("perplexity") is not None]
    for budget in sorted({r["budget"] for r in done}):
        rows = sorted((r for r in done if r["budget"] == budget), key=lambda r: r["kl"])
        for i, r in enumerate(rows):
            mark = "**" if i == 0 else ""
            lines.append(
                f"| {budget} | {mark}{r['tool']}{mark} | {r['real_avg_bits']:.3f} | "
                f"{r['perplexity']:.2f} | {r['kl']:.4f} |"
            )
    return lines


def write_table(peers_dir: Path, model_results: Path, model: str, held_out: str) -> Path:
    records = [json.loads(p.read_text()) for p in sorted(peers_dir.glob("*.json"))]
    records = [r for r in records if Path(r["model"]).name == model]
    ours = allocator_records(model_results, model)
    lines = [
        f"# Head-to-head: real mixed-precision tools on {model} (`python benchmarks/peers.py`)",
        "",
        "Each tool runs its own pipeline on CPU (2 cores, shared with other jobs, `nice`); "
        f"evaluation is allocator's: {held_out}, contiguous windows of 512 tokens, perplexity "
        "and mean KL vs the unmodified fp32 model. Real bits: block linear layers, "
        "b + 16/g (symmetric) or b + 32/g per weight, 16 for unquantized layers.",
        "",
        "## At each budget (best KL first)",
        "",
        *comparison(records + ours),
        "",
        "## Every run",
        "",
        "| tool | budget | version / settings | real avg bits | perplexity | KL | wall s | "
        "peak RSS MiB | status |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_detail_line(r) for r in records + ours),
    ]
    target = peers_dir.parent / ("peers.md" if model == "smollm2" else f"peers_{model}.md")
    old = target.read_text() if target.is_file() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else ""
    target.write_text("\n".join(lines) + "\n\n" + notes)
    return target
