"""Reports of a plan: figures (matplotlib) and one self-contained HTML file.

``build_report(plan, table=None, results=None, validation=None)`` returns a ``Report`` with SVG
figures (and PNG on request) and the HTML page; ``write_report(report, out)`` writes
``out`` plus ``<out stem>_files/*.svg|png``. Figures:

- bits per weight as a heatmap, layer x projection kind;
- size by projection kind;
- the Pareto frontier of the table (predicted loss vs average bits), the plan marked, measured
  KL of the run's rows overlaid on a second axis where results exist;
- predicted vs measured loss (the run's validation candidates);
- sensitivity curves (loss vs bits per weight) of the 3 most and 3 least sensitive units;
and the results table of a run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.errors import InputError
from allocator.schema.plan import Plan
from allocator.schema.size import DEFAULT_SIZE_MODEL
from allocator.schema.table import SensitivityTable

_LAYER = re.compile(r"(?:^|\.)(\d+)\.(.+)$")


@dataclass
class Report:
    title: str
    svgs: dict[str, str] = field(default_factory=dict)
    pngs: dict[str, bytes] = field(default_factory=dict)
    html: str = ""


def _split(name: str) -> tuple[int | None, str]:
    """(layer index, projection kind) of a unit name like ``model.layers.3.self_attn.q_proj``."""
    match = _LAYER.search(name)
    if match is None:
        return None, name.rsplit(".", 1)[-1]
    return int(match.group(1)), match.group(2)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise InputError(
            "report: matplotlib is not installed; pip install 'llm-bit-allocator[report]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, report: Report, name: str, png: bool) -> None:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    report.svgs[name] = buffer.getvalue()
    if png:
        raw = io.BytesIO()
        fig.savefig(raw, format="png", dpi=110, bbox_inches="tight")
        report.pngs[name] = raw.getvalue()
    import matplotlib.pyplot as plt

    plt.close(fig)


def heatmap(plan: Plan, plt: Any) -> Any:
    cells: dict[tuple[int, str], float] = {}
    for a in plan.assignments:
        layer, kind = _split(a.unit)
        cells[(layer if layer is not None else -1, kind)] = a.cost_bits / a.numel
    layers = sorted({k[0] for k in cells})
    kinds = sorted({k[1] for k in cells})
    import numpy as np

    grid = np.full((len(kinds), len(layers)), np.nan)
    for (layer, kind), bits in cells.items():
        grid[kinds.index(kind), layers.index(layer)] = bits
    fig, ax = plt.subplots(figsize=(max(5, 0.28 * len(layers) + 3), 0.4 * len(kinds) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
    step = max(1, len(layers) // 15)
    ax.set_xticks(range(0, len(layers), step), [str(x) for x in layers[::step]], fontsize=8)
    ax.set_xlabel("layer")
    ax.set_title(f"bits per weight (avg {plan.avg_bits:.3f})")
    fig.colorbar(image, ax=ax, label="bits/weight")
    return fig


def size_by_kind(plan: Plan, plt: Any) -> Any:
    sizes: dict[str, float] = {}
    for a in plan.assignments:
        kind = _split(a.unit)[1]
        sizes[kind] = sizes.get(kind, 0.0) + a.cost_bits / 8e6
    kinds = sorted(sizes, key=sizes.get, reverse=True)  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(kinds) + 1.2))
    ax.barh(kinds[::-1], [sizes[k] for k in kinds[::-1]], color="#4c72b0")
    ax.set_xlabel("MB")
    ax.set_title(f"size by projection kind (total {plan.size_bytes / 1e6:.2f} MB)")
    return fig


def frontier(
    plan: Plan, table: SensitivityTable, rows: list[dict[str, Any]], plt: Any
) -> Any | None:
    from allocator.schema.constraints import Constraints
    from allocator.solve.pareto import sweep

    top = max(DEFAULT_SIZE_MODEL.bits_per_weight(o, table.units[0]) for o in table.options)
    budgets = [b for b in (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0) if b <= top + 0.5]
    points = [p for p in sweep(table, Constraints.simple(plan.avg_bits), budgets) if p.feasible]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.avg_bits for p in points], [p.predicted_loss for p in points], "o-",
            label="predicted (table, budget only)")  # fmt: skip
    ax.plot([plan.avg_bits], [plan.predicted_loss], "r*", markersize=14, label="this plan")
    ax.set_xlabel("average bits per weight")
    ax.set_ylabel("predicted loss")
    ax.set_yscale("symlog", linthresh=1e-6)
    measured = [r for r in rows if r.get("kl") is not None and r.get("avg_bits", 99) < 16]
    if measured:
        twin = ax.twinx()
        twin.plot([r["avg_bits"] for r in measured], [r["kl"] for r in measured], "s",
                  color="#dd8452", label="measured KL")  # fmt: skip
        twin.set_ylabel("measured KL vs original")
        twin.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title("Pareto frontier")
    return fig


def predicted_vs_measured(validation: dict[str, Any], plt: Any) -> Any | None:
    predicted = validation.get("predicted_loss")
    measured = validation.get("measured_kl") or {}
    pairs = []
    if isinstance(predicted, dict):
        pairs = [(predicted[n], measured[n], n) for n in measured if n in predicted]
    elif predicted is not None and measured.get("plan") is not None:
        pairs = [(predicted, measured["plan"], "plan")]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for x, y, name in pairs:
        ax.plot([x], [y], "o")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("predicted loss")
    ax.set_ylabel("measured KL")
    ax.set_title("predicted vs measured")
    return fig


def sensitivity_curves(table: SensitivityTable, plt: Any, n: int = 3) -> Any:
    units = {u.name: u for u in table.units}
    options = {o.key: o for o in table.options}

    def worst(name: str) -> float:
        return max(table.losses[name].values(), default=0.0)

    ranked = sorted(table.losses, key=worst)
    chosen = ranked[-n:][::-1] + [u for u in ranked[:n] if u not in ranked[-n:]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in chosen:
        unit = units[name]
        xs = sorted(
            (DEFAULT_SIZE_MODEL.bits_per_weight(options[k], unit), v)
            for k, v in table.losses[name].items()
            if options[k].sparsity == 0
        )
        if xs:
            style = "-" if name in ranked[-n:] else "--"
            ax.plot([x for x, _ in xs], [max(v, 1e-12) for _, v in xs], style + "o",
                    markersize=3, label=name)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (dense options)")
    ax.set_ylabel("loss")
    ax.set_title("most (solid) and least (dashed) sensitive units")
    ax.legend(fontsize=6)
    return fig


def _table_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
        return f"<td>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [{"unit": a.unit, "option": a.option.key, "bits/weight": a.cost_bits / a.numel,
             "predicted loss": a.predicted_loss} for a in plan.assignments]  # fmt: skip


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}svg{max-width:100%;height:auto}"""


def build_report(
    plan: Plan,
    table: SensitivityTable | None = None,
    results: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    *,
    title: str = "allocator report",
    png: bool = False,
    plan_table: bool = True,
) -> Report:
    if not plan.assignments:
        raise InputError("report: the plan has no assignments; nothing to draw")
    if table is not None and not (table.units and table.options and table.losses):
        table = None  # an empty table adds no figure
    plt = _pyplot()
    report = Report(title=title)
    rows = list((results or {}).get("rows", []))
    _save(heatmap(plan, plt), report, "heatmap", png)
    _save(size_by_kind(plan, plt), report, "size_by_kind", png)
    if table is not None:
        fig = frontier(plan, table, rows, plt)
        if fig is not None:
            _save(fig, report, "pareto", png)
        _save(sensitivity_curves(table, plt), report, "sensitivity", png)
    if validation:
        fig = predicted_vs_measured(validation, plt)
        if fig is not None:
            _save(fig, report, "predicted_vs_measured", png)
    figures = "".join(
        f'<figure id="fig-{name}">{svg[svg.index("<svg") :]}<figcaption>{name}</figcaption></figure>'
        for name, svg in report.svgs.items()
    )
    summary = (f"{len(plan.assignments)} units, {plan.avg_bits:.4f} bits/weight, "
               f"{plan.size_bytes / 1e6:.3f} MB, predicted loss {plan.predicted_loss:.6g}, "
               f"solver {plan.solver} [{plan.status}]")  # fmt: skip
    parts = [f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>", figures]
    if rows:
        parts.append("<h2>results</h2>" + _table_html(rows))
    if plan_table:
        parts.append("<h2>plan</h2>" + _table_html(plan_rows(plan)))
    report.html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    return report


def write_report(report: Report, out: str | Path) -> list[Path]:
    from allocator.schema.io import atomic_write_bytes, atomic_write_text

    target = Path(out)
    files = target.with_name(target.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    written = [target]
    atomic_write_text(target, report.html)
    for name, svg in report.svgs.items():
        atomic_write_text(files / f"{name}.svg", svg)
        written.append(files / f"{name}.svg")
    for name, data in report.pngs.items():
        atomic_write_bytes(files / f"{name}.png", data)
        written.append(files / f"{name}.png")
    return written


def load_inputs(source: str | Path, table: str | Path | None = None) -> dict[str, Any]:
    """A run folder (plan.json, table.json, results.json, validation.json) or a plan file."""
    from allocator.schema.io import load_plan, load_table

    path = Path(source)
    found: dict[str, Any] = {}
    if path.is_dir():
        if not (path / "plan.json").is_file():
            raise InputError(f"{path}: no plan.json in this folder; give a run folder or a plan")
        found["plan"] = load_plan(path / "plan.json")
        if table is None and (path / "table.json").is_file():
            table = path / "table.json"
        for name in ("results", "validation"):
            if (path / f"{name}.json").is_file():
                found[name] = json.loads((path / f"{name}.json").read_text())
    else:
        found["plan"] = load_plan(path)
    if table is not None:
        found["table"] = load_table(Path(table))
    return found


def embed_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def report_run_folder(folder: str | Path, log: Any = print) -> Path | None:
    """Write ``folder/report.html`` for a finished run; a missing matplotlib is a logged note."""
    try:
        inputs = load_inputs(folder)
        report = build_report(
            inputs["plan"], inputs.get("table"), inputs.get("results"), inputs.get("validation"),
            title=f"allocator run {Path(folder).name}", png=True,
        )  # fmt: skip
    except Exception as exc:  # a report must never fail the run it describes
        log(f"report: skipped ({type(exc).__name__}: {exc})")
        return None
    write_report(report, Path(folder) / "report.html")
    log(f"report: wrote {Path(folder) / 'report.html'}")
    return Path(folder) / "report.html"
