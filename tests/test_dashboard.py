"""`cohort admin dashboard` in the system's real Chromium: a real run, watched live.

Playwright drives /usr/bin/chromium (no browser download). The coordinator runs with auth
on, so the dashboard acts with an operator token; screenshots go to the test's tmp folder
and are copied to test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from helpers import breast_cancer_sites

from cli.admin_link import Admin
from cli.dashboard import start_dashboard
from client.policy import SitePolicy
from coordinator.server import CoordinatorServer
from protos import admin_pb2

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no system chromium")


@pytest.fixture
def federation(tmp_path, agents):
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "data", port=0, tick_seconds=0.05, auth=True
    )
    address = f"127.0.0.1:{server.start()}"
    tokens = {}
    for name, role in (("ops", "admin"), ("aud", "auditor")):
        path = tmp_path / f"{name}.token"
        path.write_text(server.access.add_operator(name, role, actor="test"))
        tokens[role] = path
    trainers = breast_cancer_sites(3)
    # gamma's own policy refuses plaintext runs: the dashboard must show that and why.
    for name, trainer, policy in (
        ("alpha", trainers[0], SitePolicy()),
        ("beta", trainers[1], SitePolicy()),
        ("gamma", trainers[2], SitePolicy(require_secure=True)),
    ):
        token, _ = server.access.enrol_site(name, 3600, actor="test")
        agents.start(
            address, [trainer], tmp_path / "sites", [name], enrolment_token=token, policy=policy
        )
    yield server, address, tokens
    server.stop(grace=0.5)


def local(session, **kwargs) -> httpx.Client:
    """A client of the dashboard under its own host name (connecting to 127.0.0.1)."""
    host = session.base_url.removeprefix("http://")
    port = host.rsplit(":", 1)[1]
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Host": host}, **kwargs)


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def test_watch_a_real_run_live_then_an_auditor_cannot_act(federation, tmp_path):
    server, address, tokens = federation
    admin_ui, admin_session = start_dashboard(Admin(address, None, tokens["admin"], True))
    audit_ui, audit_session = start_dashboard(Admin(address, None, tokens["auditor"], True))
    assert (admin_session.role, audit_session.role) == ("admin", "auditor")
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            base = admin_session.base_url
            page.goto(f"{base}/login?token={admin_session.token}")
            assert page.url == f"{base}/"
            page.get_by_text("ops (admin)").wait_for()
            page.locator("#sites tbody tr").nth(2).wait_for()  # the three sites, online
            shot(page, tmp_path, "01-signed-in")

            # Start a run from the page (an admin action: CSRF header, coordinator decides).
            page.get_by_label("Rounds").fill("3")
            page.get_by_label("Sites per round").fill("2")
            page.get_by_label("Name").fill("dashboard-e2e")
            page.get_by_role("button", name="Start run").click()
            page.locator("#start-status").filter(has_text="started").wait_for()
            page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads

            for number in (1, 2, 3):
                row = page.locator(f'#rounds tr[data-round="{number}"]')
                row.filter(has_text="closed").wait_for(timeout=120_000)
                shot(page, tmp_path, f"02-round-{number}-closed")
            page.locator("#chart svg polyline").first.wait_for()
            refusal = page.locator("#refusals li.refusal").first
            refusal.wait_for(timeout=60_000)
            assert "gamma" in refusal.inner_text() and "policy" in refusal.inner_text()
            page.locator("#run-facts").filter(has_text="completed").wait_for(timeout=120_000)
            page.locator("#run-list").filter(has_text="completed").wait_for()
            assert page.evaluate("window.__sameDocument") is True
            page.locator("#audit-state.ok").wait_for()
            shot(page, tmp_path, "03-completed")

            with context.expect_page() as opened:
                page.get_by_role("link", name="HTML").click()
            report = opened.value
            report.wait_for_load_state()
            assert "dashboard-e2e" in report.content() or "Training" in report.content()
            shot(report, tmp_path, "04-report")
            run_id = page.evaluate("selected")

            # The auditor's page: no admin controls at all, and the API refuses them anyway.
            auditor = context.new_page()
            abase = audit_session.base_url
            auditor.goto(f"{abase}/login?token={audit_session.token}")
            auditor.get_by_text("aud (auditor)").wait_for()
            auditor.locator("#run-facts").filter(has_text="completed").wait_for()
            # Read-only, not less informed: the same rounds, refusal and custody facts.
            auditor.locator('#rounds tr[data-round="3"]').wait_for()
            assert "gamma" in auditor.locator("#refusals").inner_text()
            assert "plaintext" in auditor.locator("#custody").inner_text()
            assert auditor.locator("#start-form").count() == 0
            assert auditor.locator("#stop").count() == 0
            assert auditor.get_by_role("button", name="Start run").count() == 0
            shot(auditor, tmp_path, "05-auditor")
            status, body = auditor.evaluate(
                """async () => {
                    const s = await (await fetch('/api/session')).json();
                    const r = await fetch('/api/runs', {method: 'POST', headers: {
                        'X-CSRF-Token': s.csrf, 'Content-Type': 'application/json'},
                        body: JSON.stringify({model: 'tabular_mlp', rounds: 1})});
                    return [r.status, await r.json()];
                }"""
            )
            assert status == 403 and "auditor" in body["detail"] and "CreateRun" in body["detail"]
            browser.close()
        # Nothing the auditor tried reached the run list: still exactly one run.
        with local(admin_session, cookies={"cohort_dashboard": admin_session.token}) as c:
            runs = c.get("/api/overview").json()["runs"]
            assert [r["run_id"] for r in runs] == [run_id]
    finally:
        admin_ui.stop()
        audit_ui.stop()


def test_the_dashboards_own_http_keeps_others_out(federation):
    server, address, tokens = federation
    ui, session = start_dashboard(Admin(address, None, tokens["admin"], True))
    try:
        with local(session) as anonymous:
            assert anonymous.get("/api/overview").status_code == 401
            assert anonymous.get("/").status_code == 303  # to the login page
            assert anonymous.get("/login", params={"token": "guess"}).status_code == 401
            assert anonymous.post("/api/runs", json={"rounds": 1}).status_code == 401
        signed = {"cohort_dashboard": session.token}
        with local(session, cookies=signed) as c:
            assert c.get("/api/overview").status_code == 200
            # Another web page in the browser cannot add our custom header: no CSRF token.
            refused = c.post("/api/runs", json={"model": "tabular_mlp", "rounds": 1})
            assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
            csrf = {"X-CSRF-Token": session.csrf}
            bad = c.post("/api/runs", json={"rounds": "many"}, headers=csrf)
            assert bad.status_code == 400 and bad.json()["detail"].startswith("rounds:")
            bad = c.post("/api/runs", json={"rounds": 1, "evil": 1}, headers=csrf)
            assert bad.status_code == 400 and bad.json()["detail"].startswith("evil:")
            missing = c.get("/api/runs/nope")
            assert missing.status_code == 404 and "coordinator" in missing.json()["detail"]
            assert c.get("/api/runs/x/report.docx").status_code == 400
            # DNS rebinding: a page served as evil.example that resolves to 127.0.0.1.
            rebound = c.get("/api/overview", headers={"Host": f"evil.example:{ui.port}"})
            assert rebound.status_code == 421
            # Nor under 127.0.0.1 or localhost: cookies there reach every local port.
            for name in ("127.0.0.1", "localhost"):
                plain = c.get("/api/overview", headers={"Host": f"{name}:{ui.port}"})
                assert plain.status_code == 421
            # An admin's stop goes through (CSRF header present); a second one is refused
            # by the coordinator (the run has ended) with its reason.
            waiting = c.post(
                "/api/runs",
                json={"model": "tabular_mlp", "rounds": 1, "min_clients": 9},
                headers=csrf,
            )
            assert waiting.status_code == 200, waiting.text
            run_id = waiting.json()["run_id"]
            stopped = c.post(f"/api/runs/{run_id}/stop", json={"reason": "test"}, headers=csrf)
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
            again = c.post(f"/api/runs/{run_id}/stop", json={}, headers=csrf)
            assert again.status_code == 409 and "already ended" in again.json()["detail"]
            page = c.get("/")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert page.headers["x-frame-options"] == "DENY"
        with local(session) as anonymous:
            assert anonymous.get("/static/dashboard.css").status_code == 200
    finally:
        ui.stop()


def test_keyboard_alone_selects_a_run_and_reaches_the_controls(federation, tmp_path):
    server, address, tokens = federation
    admin = Admin(address, None, tokens["admin"], True)
    for name in ("first", "second"):
        admin.CreateRun(
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=9, name=name),
            timeout=10,
        )
    ui, session = start_dashboard(admin)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{session.base_url}/login?token={session.token}")
            page.locator('[data-run][aria-current="true"]').wait_for()
            page.keyboard.press("Tab")
            active = "document.activeElement.textContent.trim()"
            assert page.evaluate(active) == "Skip to the selected run"
            for _ in range(6):  # on through the run list, by keyboard only
                page.keyboard.press("Tab")
                if page.evaluate(active).startswith("first"):
                    break
            assert page.evaluate(active).startswith("first")
            page.keyboard.press("Enter")
            page.locator("#run-h").filter(has_text="Run first").wait_for()
            # Live refreshes (every second) must not steal the keyboard user's place.
            page.wait_for_timeout(2500)
            assert page.evaluate(active).startswith("first")
            # Every form control has a label a screen reader announces.
            unlabelled = page.evaluate(
                "[...document.querySelectorAll('input, select')]"
                ".filter((e) => !e.labels || !e.labels.length).length"
            )
            assert unlabelled == 0
            shot(page, tmp_path, "06-keyboard")
            browser.close()
    finally:
        ui.stop()


def test_the_dashboard_stays_import_light():
    """`cohort admin` (dashboard included) loads no torch, Flower or site-agent code."""
    import subprocess
    import sys

    probe = (
        "import sys, cli.admin, cli.dashboard, cli.dashboard_app, coordinator.metrics; "
        "print(sorted(m for m in ('torch', 'flwr', 'client', 'shap') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
