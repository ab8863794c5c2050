"""`cohort coordinator serve`: the coordinator's gRPC server, and its /metrics when asked."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from cli.common import err_console, fail, friendly_errors


@friendly_errors
def serve(
    db: Annotated[
        str | None,
        typer.Option(
            envvar="COHORT_DATABASE_URL", help="SQLAlchemy URL; default SQLite in data dir"
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="COHORT_DATA_DIR", help="Folder for the database and model blobs."),
    ] = Path("cohort-data"),
    host: Annotated[
        str, typer.Option(envvar="COHORT_HOST", help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(envvar="COHORT_PORT", min=0, max=65535, help="Port to listen on (0: any)."),
    ] = 50051,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="COHORT_TLS_DIR", help="Folder from `cohort admin init` (TLS certificate)"
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="COHORT_INSECURE", help="Serve plaintext gRPC (no TLS): loopback and tests only"
        ),
    ] = False,
    auth: Annotated[
        bool | None,
        typer.Option(help="Require enrolment tokens and operator roles (default: on with TLS)"),
    ] = None,
    plaintext_off_loopback: Annotated[
        bool,
        typer.Option(
            "--i-understand-plaintext-off-loopback",
            help="Serve off loopback without TLS or auth: anyone on the network can read "
            "tokens and updates and act as an operator",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="COHORT_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve Prometheus /metrics on this port (off unless given; TLS with --tls-dir)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(envvar="COHORT_METRICS_HOST", help="Address /metrics listens on")
    ] = "127.0.0.1",
    metrics_token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="COHORT_METRICS_TOKEN_FILE",
            help="File with the bearer token a scraper must send (needed off loopback)",
        ),
    ] = None,
) -> None:
    """Serve the federation and admin services (plus gRPC health) until interrupted."""
    from coordinator.db import DatabaseInUse, default_database_url, sole_writer
    from coordinator.pki import FederationPki
    from coordinator.server import CoordinatorServer, exposure_problem

    if tls_dir is None and not insecure:
        fail(
            "TLS is on by default: pass --tls-dir DIR (made by `cohort admin init --dir DIR`) "
            "or --insecure"
        )
    if tls_dir is not None and insecure:
        fail("--tls-dir and --insecure contradict each other")
    pki = FederationPki(tls_dir) if tls_dir is not None else None
    auth_on = (pki is not None) if auth is None else auth
    problem = exposure_problem(host, pki is not None, auth_on)
    if problem is not None and not plaintext_off_loopback:
        fail(problem)
    if problem is not None:
        err_console.print(f"[bold red]warning[/]: {problem.split(':')[0]}, as asked")
    metrics_token = metrics_token_file.read_text().strip() if metrics_token_file else ""
    if metrics_port is not None and not metrics_token and not _loopback(metrics_host):
        fail(
            f"/metrics on {metrics_host} would be readable by anyone on the network: "
            "pass --metrics-token-file FILE (and --tls-dir) or keep --metrics-host 127.0.0.1"
        )
    if metrics_port is not None and pki is None and not _loopback(metrics_host):
        # The bearer token would cross the network in the clear with every scrape.
        fail(
            f"/metrics on {metrics_host} needs TLS (its bearer token must not travel in the "
            "clear): pass --tls-dir DIR or keep --metrics-host 127.0.0.1"
        )
    url = db or default_database_url(data_dir)
    held = contextlib.ExitStack()
    try:
        held.enter_context(sole_writer(url))
    except DatabaseInUse as exc:
        fail(f"{exc}: one coordinator process per database (stop the other first)")
    with held:
        server = CoordinatorServer(
            url,
            data_dir,
            host=host,
            port=port,
            tls=pki,
            auth=auth_on,
            allow_exposed=plaintext_off_loopback,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_token=metrics_token,
        )
        bound = server.start()
        transport = "TLS" if pki else "plaintext (--insecure)"
        err_console.print(
            f"coordinator on {host}:{bound} ({transport}, auth "
            f"{'on' if server.access.enabled else 'off'}), database {_redact(url)}, "
            f"data {data_dir}"
            + (
                f", metrics on {metrics_host}:{server.metrics_port}/metrics"
                if metrics_port is not None
                else ""
            ),
            soft_wrap=True,
        )
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        server.stop()


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
