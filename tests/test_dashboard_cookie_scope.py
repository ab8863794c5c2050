"""The dashboard's session cookie never reaches another server on this machine.

Browsers keep cookies per host name, not per port (RFC 6265 §8.5), and SameSite does not
separate ports of one site: a cookie set for 127.0.0.1 goes to every local server. A
hostile local user's page on another port must neither receive the session nor use it.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli.dashboard import start_dashboard
from cli.dashboard_app import Session, create_app
from protos import admin_pb2

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api")


class FakeAdmin:
    """Only what the page reads on sign-in; a stop is recorded so the test can see one."""

    def __init__(self) -> None:
        self.stops: list[str] = []

    def DashboardWhoAmI(self, request, timeout=None):
        return admin_pb2.DashboardWhoAmIReply(name="op", role="admin")

    def ListRuns(self, request, timeout=None):
        return admin_pb2.ListRunsReply()

    def ListNodes(self, request, timeout=None):
        return admin_pb2.ListNodesReply()

    def GetMetrics(self, request, timeout=None):
        return admin_pb2.GetMetricsReply()

    def GetAuditLog(self, request, timeout=None):
        return admin_pb2.GetAuditLogReply()

    def StopRun(self, request, timeout=None):
        self.stops.append(request.run_id)
        return admin_pb2.RunInfo(run_id=request.run_id)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no system chromium")
def test_another_local_server_gets_no_session_cookie():
    seen: list[str] = []

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Cookie") or "")
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html><body>another local page</body></html>")

        def log_message(self, *args) -> None:
            pass

    other = http.server.HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    admin = FakeAdmin()
    ui, session = start_dashboard(admin)
    try:
        assert ".localhost:" in session.base_url and "127.0.0.1" not in session.base_url
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{session.base_url}/login?token={session.token}")
            assert page.url == f"{session.base_url}/"
            page.get_by_text("op (admin)").wait_for()
            for name in ("127.0.0.1", "localhost"):
                page.goto(f"http://{name}:{other.server_port}/")
                page.get_by_text("another local page").wait_for()
            # The dashboard itself under a name the other server could host: refused.
            page.goto(f"http://127.0.0.1:{ui.port}/api/session")
            assert "unexpected Host" in page.content()
            browser.close()
        assert len(seen) >= 2 and not any("cohort_dashboard" in c for c in seen), seen
        assert admin.stops == []
    finally:
        ui.stop()
        other.shutdown()


def test_the_host_check_is_never_off():
    """Before the dashboard knows its port (and name) it answers nothing at all."""
    app = create_app(Session(admin=FakeAdmin()))
    with TestClient(app) as client:
        for path in ("/login", "/api/session", "/static/dashboard.css"):
            assert client.get(path).status_code == 421
