"""Every job kind through the API on a tiny random Llama: solve -> apply (checkpoint
downloaded as .tar.gz) -> eval of that checkpoint (``job:ID/checkpoint``) against the original,
plus export and pareto; a job cannot read another key's artifacts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from fastapi.testclient import TestClient

from tests.serve.conftest import ALICE, BOB, make_client, wait
from tests.serve.tiny import save_tiny_model


def _done(client: TestClient, kind: str, settings: dict[str, Any], headers=ALICE) -> dict:
    response = client.post("/v1/jobs", json={"kind": kind, "settings": settings}, headers=headers)
    assert response.status_code == 201, response.text
    job = wait(client, response.json()["id"], headers, timeout=240)
    assert job["state"] == "succeeded", (job["error"], job["log_tail"][-5:])
    return job


def test_profile_solve_apply_eval_export(tmp_path: Path) -> None:
    with make_client(tmp_path, workers=0, job_slots=1) as client:
        save_tiny_model(client.app.state.config.root, layers=2)
        # (profile jobs are covered by test_restart.py; here the table is made in-process)
        from allocator.profile.api import profile

        root = client.app.state.config.root
        table = profile(str(root / "model"), [str(root / "calib.txt")], "hessian",
                        "bits=2,4,8 group=32", windows=2, seq_len=16,
                        progress=False).model_dump(mode="json")  # fmt: skip
        assert len(table["units"]) == 14
        fits = {"budget": {"avg_bits": 5}, "target": "gptqmodel"}  # exportable to gptqmodel
        solve = _done(client, "solve", {"table": table, "constraints": fits})
        plan = client.get(f"/v1/jobs/{solve['id']}/artifacts/plan.json", headers=ALICE).json()
        pareto = _done(client, "pareto", {"table": table, "constraints": {"budget": {"avg_bits": 5}},
                                          "budgets": [4, 6]})  # fmt: skip
        points = client.get(f"/v1/jobs/{pareto['id']}/artifacts/pareto.json", headers=ALICE)
        assert [p["budget_avg_bits"] for p in points.json()] == [4, 6]
        apply = _done(client, "apply", {"plan": plan, "model": "model", "method": "rtn"})
        archive = client.get(f"/v1/jobs/{apply['id']}/artifacts/checkpoint", headers=ALICE)
        assert archive.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as packed:
            names = packed.getnames()
        assert any(name.startswith("checkpoint/") for name in names)
        evaluation = _done(client, "eval", {"model": f"job:{apply['id']}/checkpoint",
                           "reference": "model", "text": ["calib.txt"], "windows": 2,
                           "seq_len": 16})  # fmt: skip
        result = client.get(f"/v1/jobs/{evaluation['id']}/artifacts/results.json", headers=ALICE)
        assert result.json()["kl"] > 0 and result.json()["perplexity"] > 1
        export = _done(client, "export", {"plan": plan, "to": "gptqmodel"})
        files = [a["path"] for a in client.get(f"/v1/jobs/{export['id']}/artifacts",
                                               headers=ALICE).json()["artifacts"]]  # fmt: skip
        assert files and all(f.startswith("export") for f in files)
        # another key cannot point a job at alice's artifacts; unknown or unfinished jobs refused
        response = client.post("/v1/jobs", json={"kind": "eval", "settings": {
            "model": f"job:{apply['id']}/checkpoint"}}, headers=BOB)  # fmt: skip
        assert response.status_code == 403
        for bad in (f"job:{apply['id']}/../job.json", f"job:{apply['id']}", "job:nope/x"):
            response = client.post("/v1/jobs", json={"kind": "eval", "settings": {"model": bad}},
                                   headers=ALICE)  # fmt: skip
            assert response.status_code in (400, 404), (bad, response.text)
        assert json.loads(json.dumps(evaluation["settings"]))["model"].endswith("out/checkpoint")
