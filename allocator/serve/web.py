"""The web page: server-rendered HTML with a little JavaScript (no build step).

``/`` solves a pasted or uploaded table under constraints (the bundled example preloaded) and
shows the plan's figures and table; ``/jobs`` lists this key's jobs with live progress (polling),
cancel and download buttons. The API key is kept in the browser's localStorage and sent as
``X-API-Key``. ``POST /v1/figures`` renders a plan's figures (SVG) on the process pool."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from allocator.errors import InputError
from allocator.schema.plan import Plan
from allocator.schema.table import SensitivityTable
from allocator.serve.auth import owner_of
from allocator.serve.limits import check_table

router = APIRouter()


class FiguresRequest(BaseModel):
    plan: Plan
    table: SensitivityTable | None = None


class Figures(BaseModel):
    figures: dict[str, str]


def render_figures(request: FiguresRequest) -> Figures:
    from allocator.report import build_report

    try:
        report = build_report(request.plan, request.table, plan_table=False)
    except (ValueError, KeyError, IndexError, ZeroDivisionError) as exc:  # odd but valid input
        raise InputError(
            f"figures: cannot draw this plan/table ({type(exc).__name__}: {exc})"
        ) from None

    return Figures(figures={k: v[v.index("<svg") :] for k, v in report.svgs.items()})


@router.post("/v1/figures", response_model=Figures, tags=["report"])
async def figures(body: FiguresRequest, request: Request, _: str = Depends(owner_of)) -> Any:
    """SVG figures of a plan (heatmap, size by kind; with a table also frontier and curves)."""
    if body.table is not None:
        check_table(body.table, request.app.state.config.max_table_cells)
    result, _seconds = await request.app.state.pool.run(render_figures, body)
    return result


@router.get("/v1/example", tags=["solve"])
async def example() -> dict[str, Any]:
    """The bundled example table and constraints (a synthetic SmolLM2-shaped table)."""
    from allocator.data.example import load_example

    table, constraints = load_example()
    return {"table": table.model_dump(mode="json"),
            "constraints": constraints.model_dump(mode="json")}  # fmt: skip


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}
textarea{width:100%;font-family:monospace;font-size:11px}nav a{margin-right:1em}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
#figures svg{max-width:560px;height:auto;margin:0 1em 1em 0}.err{color:#b00}
progress{width:10em}"""

HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>allocator</title>
<style>{style}</style></head><body><nav><b>allocator</b> <a href="/">solve</a>
<a href="/jobs">jobs</a> <a href="/docs">API docs</a>
<label>API key <input id="key" type="password" size="18"></label></nav>
<script>
const keyBox = document.getElementById('key');
keyBox.value = localStorage.getItem('allocator-key') || '';
keyBox.onchange = () => localStorage.setItem('allocator-key', keyBox.value);
async function api(method, path, body) {{
  const headers = {{'X-API-Key': keyBox.value}};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {{method, headers, body: body === undefined ? undefined : JSON.stringify(body)}});
  if (!r.ok) {{ let e; try {{ e = (await r.json()).error; }} catch (_) {{ e = r.statusText; }}
    throw new Error(r.status + ': ' + e); }}
  return r;
}}
function save(name, blob) {{
  const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}}
</script>"""

SOLVE_PAGE = """<h1>Solve</h1>
<p>Table (JSON) <input type="file" id="tablefile" accept=".json"></p>
<textarea id="table" rows="8"></textarea>
<p>Constraints (JSON)</p><textarea id="constraints" rows="6"></textarea>
<p><button id="solve">Solve</button> <button id="download" disabled>Download plan</button>
<span id="status"></span></p>
<div id="figures"></div><div id="plan"></div>
<script>
let plan = null;
const status = document.getElementById('status');
api('GET', '/v1/example').then(r => r.json()).then(ex => {
  document.getElementById('table').value = JSON.stringify(ex.table);
  document.getElementById('constraints').value = JSON.stringify(ex.constraints, null, 1);
});
document.getElementById('tablefile').onchange = async (e) => {
  document.getElementById('table').value = await e.target.files[0].text();
};
document.getElementById('solve').onclick = async () => {
  status.textContent = 'solving...'; status.className = '';
  try {
    const table = JSON.parse(document.getElementById('table').value);
    const constraints = JSON.parse(document.getElementById('constraints').value);
    plan = await (await api('POST', '/v1/solve', {table, constraints})).json();
    status.textContent = `${plan.assignments.length} units, ${plan.avg_bits.toFixed(4)} bits, ` +
      `loss ${plan.predicted_loss.toPrecision(5)} (${plan.solver}, ${plan.status})`;
    document.getElementById('download').disabled = false;
    const rows = plan.assignments.map(a => [a.unit, a.option.bits + 'b g' + (a.option.group_size ?? 'c') +
      (a.option.sparsity ? ' s' + a.option.sparsity : ''), (a.cost_bits / a.numel).toFixed(3), a.predicted_loss.toPrecision(4)]);
    const t = document.createElement('table'); t.id = 'plantable';
    const head = t.insertRow(); ['unit', 'option', 'bits/weight', 'predicted loss'].forEach(h => {
      const th = document.createElement('th'); th.textContent = h; head.appendChild(th); });
    rows.forEach(r => { const tr = t.insertRow(); r.forEach(c => { tr.insertCell().textContent = c; }); });
    const holder = document.getElementById('plan'); holder.replaceChildren(t);
    const figs = await (await api('POST', '/v1/figures', {plan, table})).json();
    const box = document.getElementById('figures'); box.replaceChildren();
    for (const [name, svg] of Object.entries(figs.figures)) {
      const div = document.createElement('div'); div.id = 'fig-' + name; div.style.display = 'inline-block';
      div.innerHTML = svg; box.appendChild(div);
    }
  } catch (err) { status.textContent = String(err.message || err); status.className = 'err'; }
};
document.getElementById('download').onclick = () =>
  save('plan.json', new Blob([JSON.stringify(plan, null, 1)], {type: 'application/json'}));
</script></body></html>"""

JOBS_PAGE = """<h1>Jobs</h1><p id="status"></p><table id="jobs"><thead><tr><th>id</th><th>kind</th>
<th>state</th><th>stage</th><th>progress</th><th>created</th><th>error</th><th></th></tr></thead>
<tbody></tbody></table><h2 id="arttitle"></h2><ul id="artifacts"></ul>
<script>
async function artifacts(id) {
  const list = (await (await api('GET', `/v1/jobs/${id}/artifacts`)).json()).artifacts;
  document.getElementById('arttitle').textContent = 'artifacts of ' + id;
  const ul = document.getElementById('artifacts'); ul.replaceChildren();
  for (const a of list) {
    const li = document.createElement('li'); const b = document.createElement('button');
    b.textContent = `download ${a.path}${a.kind === 'folder' ? '.tar.gz' : ''} (${a.bytes} bytes)`;
    b.onclick = async () => save(a.path + (a.kind === 'folder' ? '.tar.gz' : ''),
      await (await api('GET', `/v1/jobs/${id}/artifacts/${a.path}`)).blob());
    li.appendChild(b); ul.appendChild(li);
  }
}
async function refresh() {
  try {
    const jobs = (await (await api('GET', '/v1/jobs')).json()).jobs;
    const body = document.querySelector('#jobs tbody'); body.replaceChildren();
    for (const j of jobs) {
      const tr = body.insertRow();
      [j.id.slice(0, 8), j.kind, j.state, j.stage || ''].forEach(c => { tr.insertCell().textContent = c; });
      const p = document.createElement('progress'); p.max = 1; p.value = j.progress; tr.insertCell().appendChild(p);
      tr.insertCell().textContent = new Date(j.created_at * 1000).toLocaleString();
      tr.insertCell().textContent = j.error || '';
      const cell = tr.insertCell();
      if (j.state === 'queued' || j.state === 'running') {
        const c = document.createElement('button'); c.textContent = 'cancel';
        c.onclick = () => api('POST', `/v1/jobs/${j.id}/cancel`).then(refresh); cell.appendChild(c);
      }
      const d = document.createElement('button'); d.textContent = 'artifacts';
      d.onclick = () => artifacts(j.id); cell.appendChild(d);
    }
    document.getElementById('status').textContent = `${jobs.length} jobs (refreshes every 2 s)`;
  } catch (err) { document.getElementById('status').textContent = String(err.message || err); }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def solve_page() -> str:
    return HEAD.format(style=STYLE) + SOLVE_PAGE


@router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
async def jobs_page() -> str:
    return HEAD.format(style=STYLE) + JOBS_PAGE
