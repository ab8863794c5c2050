"""`cohort audit …`: verify the hash-chained audit log; write a run's compliance report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.admin import Admin, CaOption, CoordinatorOption, InsecureOption, TokenFileOption
from cli.common import console, fail, friendly_errors
from protos import admin_pb2, wire

app = typer.Typer(help="Audit log and compliance reports.", no_args_is_help=True)


@app.command("verify")
@friendly_errors
def verify(
    run_id: Annotated[
        str, typer.Argument(help="Report on this run's rows (the chain is always checked whole)")
    ] = "",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    db: Annotated[
        str,
        typer.Option(
            help="Check the database directly (SQLAlchemy URL) instead of asking the coordinator"
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute the chain; exit 1 naming the first changed, deleted or reordered row."""
    from coordinator import auditlog
    from coordinator.schema import AuditEvent

    if db:
        from coordinator.db import Database

        database = Database(db)
        with database.transaction() as session:
            rows = auditlog.all_rows(session)
            session.expunge_all()
        database.close()
    else:
        log = Admin(coordinator, ca, token_file, insecure).GetAuditLog(
            admin_pb2.GetAuditLogRequest(run_id=run_id), timeout=60
        )
        rows = [
            AuditEvent(
                seq=e.seq,
                time=e.time_unix,
                run_id=e.run_id,
                kind=e.kind,
                actor=e.actor,
                details=e.details_json,
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in log.entries
        ]
    verdict = auditlog.verify_chain(rows)
    run_rows = sum(1 for r in rows if r.run_id == run_id) if run_id else len(rows)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": verdict.ok,
                    "rows": verdict.rows,
                    "run_rows": run_rows,
                    "first_bad_row": verdict.first_bad_seq,
                    "reason": verdict.reason,
                    "head_hash": verdict.head_hash,
                }
            )
        )
    elif verdict.ok:
        console.print(
            f"[green]audit log intact[/]: {verdict.rows} rows"
            + (f" ({run_rows} for run {run_id})" if run_id else "")
            + f", head {verdict.head_hash[:16]}…"
        )
    else:
        console.print(
            f"[bold red]audit log broken at row {verdict.first_bad_seq}[/]: {verdict.reason}"
        )
    if not verdict.ok:
        raise typer.Exit(1)


@app.command("report")
@friendly_errors
def report(
    run_id: str,
    out: Annotated[Path, typer.Option(help="File (or folder) to write")],
    fmt: Annotated[str, typer.Option("--format", help="html, pdf or json")] = "html",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Write a run's compliance report: provenance, privacy, metrics, SHAP, log, regulations."""
    if fmt not in ("html", "pdf", "json"):
        fail(f"--format must be html, pdf or json, not {fmt!r}")
    payload = wire.join_chunks(
        Admin(coordinator, ca, token_file, insecure).ExportReport(
            admin_pb2.ExportReportRequest(run_id=run_id, format=fmt), timeout=300
        )
    )
    if out.is_dir():
        out = out / f"cohort-report-{run_id}.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(payload)
    console.print(f"wrote {fmt} report ({len(payload)} bytes) to {out}")
