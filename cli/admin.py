"""`cohort admin …`: the command group; models, sites, operators, metrics (runs: cli/runs.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from cli.admin_link import (
    Admin,
    CaOption,
    CoordinatorOption,
    InsecureOption,
    JsonOption,
    TokenFileOption,
)
from cli.common import console, fail, friendly_errors
from cli.runs import runs_app
from protos import admin_pb2, wire

app = typer.Typer(help="Operate the federation (runs, models, sites).", no_args_is_help=True)
models_app = typer.Typer(help="Download models.", no_args_is_help=True)
sites_app = typer.Typer(help="Enrol, list and revoke sites.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.add_typer(sites_app, name="sites")


@models_app.command("download")
@friendly_errors
def download(
    run_id: str,
    out: Annotated[Path, typer.Option(help="File to write (.npz of the weights)")],
    round_number: Annotated[int, typer.Option("--round", help="0 = final")] = 0,
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Download a plaintext run's model (secure runs: a site exports it)."""
    import numpy as np

    payload = wire.join_chunks(
        Admin(coordinator, ca, token_file, insecure).DownloadModel(
            admin_pb2.DownloadModelRequest(run_id=run_id, round=round_number),
            timeout=300,
        )
    )
    weights = wire.decode_tensors(payload)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, *weights)
    console.print(f"wrote {len(weights)} tensors ({len(payload)} bytes) to {out}")


@sites_app.command("list")
@friendly_errors
def list_sites(
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Sites that joined, online or not."""
    reply = Admin(coordinator, ca, token_file, insecure).ListNodes(
        admin_pb2.ListNodesRequest(), timeout=30
    )
    rows = [
        MessageToDict(
            n, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for n in reply.nodes
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="sites")
    for column in ("site", "node", "online", "x25519 fingerprint"):
        table.add_column(column)
    for node in reply.nodes:
        table.add_row(
            node.site_name, node.node_id, "yes" if node.online else "no", node.x25519_fingerprint
        )
    console.print(table)


operators_app = typer.Typer(
    help="Operators of the admin service and their roles.", no_args_is_help=True
)
app.add_typer(operators_app, name="operators")


@app.command("init")
@friendly_errors
def init(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir", help="Where to write the federation's CA, TLS certificate and admin token"
        ),
    ],
    hostname: Annotated[
        list[str] | None, typer.Option(help="Name(s) sites use to reach the coordinator (repeat)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing CA")] = False,
) -> None:
    """Make the federation CA, the coordinator's TLS certificate and the first admin token."""
    from coordinator.pki import create_federation

    hosts = hostname or ["localhost", "127.0.0.1"]
    try:
        pki = create_federation(directory, hosts, force=force)
    except FileExistsError as exc:
        fail(str(exc))
    console.print(f"federation CA      {pki.ca_cert}  (give this file to every site)")
    console.print(f"coordinator cert   {pki.server_cert} for {', '.join(hosts)}")
    console.print(f"first admin token  {pki.admin_token}  (mode 0600; keep it secret)")
    console.print(f"serve with: cohort coordinator serve --tls-dir {directory}")


@sites_app.command("enrol")
@friendly_errors
def enrol(
    site_name: str,
    ttl: Annotated[float, typer.Option(help="Seconds the one-time token stays valid")] = 86400.0,
    out: Annotated[Path | None, typer.Option(help="Write the token to this file (0600)")] = None,
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Issue a one-time enrolment token that SITE exchanges for its credential at first join."""
    reply = Admin(coordinator, ca, token_file, insecure).EnrolSite(
        admin_pb2.EnrolSiteRequest(site_name=site_name, ttl_seconds=ttl), timeout=30
    )
    if out is None:
        print(reply.token)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(reply.token)
    console.print(f"enrolment token for {site_name} written to {out}")


@operators_app.command("add")
@friendly_errors
def add_operator(
    name: str,
    role: Annotated[str, typer.Option(help="admin or auditor")] = "auditor",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Add an operator; prints their bearer token once."""
    if role not in ("admin", "auditor"):
        fail(f"--role must be admin or auditor, not {role!r}")
    reply = Admin(coordinator, ca, token_file, insecure).AddOperator(
        admin_pb2.AddOperatorRequest(name=name, role=role), timeout=30
    )
    print(reply.token)


@sites_app.command("revoke")
@friendly_errors
def revoke_site(
    site_name: str,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log")] = "",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Revoke every node credential of SITE and its unused enrolment tokens, at once."""
    reply = Admin(coordinator, ca, token_file, insecure).RevokeSite(
        admin_pb2.RevokeRequest(name=site_name, reason=reason), timeout=30
    )
    console.print(
        f"revoked {reply.revoked} node credential(s) of {site_name}; it can rejoin only "
        f"with a new `cohort admin sites enrol {site_name}`"
    )


@operators_app.command("revoke")
@friendly_errors
def revoke_operator(
    name: str,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log")] = "",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Revoke an operator's token at once; their next call is refused."""
    reply = Admin(coordinator, ca, token_file, insecure).RevokeOperator(
        admin_pb2.RevokeRequest(name=name, reason=reason), timeout=30
    )
    if reply.revoked:
        console.print(f"operator {name} revoked")
    else:
        console.print(f"operator {name} was already revoked")


@app.command("metrics")
@friendly_errors
def metrics(
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Basic counters: runs by state, sites online, updates accepted and rejected, bytes in."""
    reply = Admin(coordinator, ca, token_file, insecure).GetMetrics(
        admin_pb2.GetMetricsRequest(), timeout=30
    )
    values = dict(sorted(reply.values.items()))
    if as_json:
        print(json.dumps(values))
        return
    table = Table(title="coordinator metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(key, f"{value:g}")
    console.print(table)


def _register_dashboard() -> None:
    """`cohort admin dashboard` (its web stack is imported only when it runs)."""
    from cli.dashboard import dashboard

    app.command("dashboard")(dashboard)


_register_dashboard()
