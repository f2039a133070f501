"""A real browser on the web page: Playwright driving Debian's chromium opens the page, solves
the bundled example, sees the heatmap and the plan table, downloads the plan and checks it with
``allocator check``. The screenshot is kept under $ALLOCATOR_TEST_ARTIFACTS (default
``test-artifacts/`` in the repository). Skipped, with the reason, where there is no chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from allocator.cli.main import main
from tests.serve.conftest import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(
    os.environ.get("ALLOCATOR_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install chromium")
def test_solve_in_the_browser(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with live_server(tmp_path / "data") as url, sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
        except sync_api.Error as exc:  # e.g. a chromium build Playwright cannot drive
            pytest.skip(f"chromium at {CHROMIUM} did not start under Playwright: {exc}"[:400])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
            page.goto(url + "/")
            page.fill("#key", "alice-secret-1")
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('table').value.length > 1000")
            page.click("#solve")
            page.wait_for_selector("#plantable", timeout=60_000)
            page.wait_for_selector("#fig-heatmap svg", timeout=60_000)
            assert page.locator("#plantable tr").count() == 211  # header + 210 units
            assert "bits" in page.inner_text("#status")
            with page.expect_download() as download:
                page.click("#download")
            plan = tmp_path / "plan.json"
            download.value.save_as(plan)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_solve.png"), full_page=False)
            page.goto(url + "/jobs")
            page.wait_for_selector("#status:has-text('jobs')")
            page.goto(url + "/docs")  # Swagger UI from local assets renders the operations
            page.wait_for_selector(
                "span.opblock-summary-path:has-text('/v1/solve')", timeout=30_000
            )
        finally:
            browser.close()
    assert main(["check", "--plan", str(plan)]) == 0
