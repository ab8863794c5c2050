"""`cohort admin dashboard`: serve the local web dashboard (cli/dashboard_app.py) on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import secrets
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.admin_link import Admin, CaOption, CoordinatorOption, InsecureOption, TokenFileOption
from cli.common import console, err_console, fail, friendly_errors
from protos import admin_pb2

if TYPE_CHECKING:
    from cli.dashboard_app import Session


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_host(host: str) -> str:
    """The host name the page is served under: a fresh random ``*.localhost`` on loopback.

    Browsers keep cookies per host name, not per port: a session cookie set for
    127.0.0.1 or localhost would reach every other local server (any port, any user).
    Under ``cohort-<128 random bits>.localhost`` (which browsers resolve to loopback
    themselves, RFC 6761 §6.3) it reaches only a server the browser opens under that
    secret name, and the Host check refuses the page under any other name.
    """
    if _loopback(host):
        return f"cohort-{secrets.token_hex(16)}.localhost"
    return f"[{host}]" if ":" in host else host


def allowed_hosts(name: str, port: int) -> set[str]:
    """Host headers the dashboard answers (anything else: a DNS-rebinding page)."""
    return {f"{name}:{port}"}


class DashboardServer:
    """uvicorn on a daemon thread; ``port`` is the one bound (0 asks for any free one)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> int:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the dashboard's web server did not start")
            time.sleep(0.01)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self.port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_dashboard(
    admin: Any, host: str = "127.0.0.1", port: int = 0
) -> tuple[DashboardServer, Session]:
    """Ask the coordinator who this operator is, then serve the app on a thread."""
    from cli.dashboard_app import Session, create_app

    me = admin.DashboardWhoAmI(admin_pb2.DashboardWhoAmIRequest(), timeout=30)
    # Until the port is known allowed_hosts is empty, and the app answers nothing (421).
    session = Session(admin=admin, operator=me.name, role=me.role)
    server = DashboardServer(create_app(session), host, port)
    bound = server.start()
    name = page_host(host)
    session.base_url = f"http://{name}:{bound}"
    session.allowed_hosts = allowed_hosts(name, bound)
    return server, session


@friendly_errors
def dashboard(
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    host: Annotated[
        str, typer.Option(help="Address the page listens on (loopback unless you insist)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one)")] = 8765,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--i-understand-remote-dashboard",
            help="Listen off loopback: the page is plain HTTP, anyone on the path sees it",
        ),
    ] = False,
) -> None:
    """A live web dashboard of runs, rounds, sites, refusals and the audit log.

    It calls the admin API with your own token (--token-file / COHORT_ADMIN_TOKEN_FILE),
    so an auditor sees read-only pages and the coordinator decides every action. Open
    the printed link; the session token in it keeps other local users out.
    """
    if not _loopback(host) and not allow_remote:
        fail(f"--host {host} is not loopback: the dashboard is plain HTTP for this machine")
    admin = Admin(coordinator, ca, token_file, insecure)
    server, session = start_dashboard(admin, host, port)
    console.print(
        f"dashboard for {session.operator} ({session.role}) at "
        f"{session.base_url}/login?token={session.token}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    err_console.print("keep that link private: it signs in as you. Ctrl-C stops.")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
