"""`cohort audit …`: verify the hash-chained audit log; write a run's compliance report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.admin_link import Admin, CaOption, CoordinatorOption, InsecureOption, TokenFileOption
from cli.common import console, fail, friendly_errors
from protos import admin_pb2, wire

app = typer.Typer(help="Audit log and compliance reports.", no_args_is_help=True)


PAGE_ROWS = 1000


def _entry_rows(log: admin_pb2.AuditLog) -> list[Any]:
    from coordinator.schema import AuditEvent

    return [
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


def receipt_files(paths: list[Path]) -> list[Path]:
    """Each path itself when a file, else the ``*.receipts.jsonl`` files in that folder."""
    from client.receipts import RECEIPTS_SUFFIX

    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(path.glob(f"*{RECEIPTS_SUFFIX}"))
            if not found:
                fail(f"{path} holds no *{RECEIPTS_SUFFIX} file (a site's --state-dir does)")
            files.extend(found)
        else:
            fail(f"--receipts {path}: no such file or folder")
    return files


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
    receipts: Annotated[
        list[Path] | None,
        typer.Option(
            "--receipts",
            help="A site's state dir (or receipts file) whose log heads the log must still "
            "hold; repeat for each site",
        ),
    ] = None,
    page_rows: Annotated[
        int, typer.Option(min=1, max=5000, help="Rows asked for per page")
    ] = PAGE_ROWS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Recompute the chain a page at a time and check the sites' receipts against it.

    Exit 1 naming the first changed, deleted or reordered row, or a receipt the log no
    longer matches (cut off or rewritten); exit 2 for a run with no rows.
    """
    from client.receipts import load_receipts
    from coordinator import auditlog

    held: list[auditlog.Receipt] = []
    for path in receipt_files(list(receipts or [])):
        try:
            lines = load_receipts(path)
            held.extend(auditlog.Receipt(seq, digest, at, str(path)) for seq, digest, at in lines)
        except ValueError as exc:
            fail(str(exc))
    checker = auditlog.ChainChecker(watch=(r.seq for r in held))
    run_rows = 0

    def feed(rows: list[Any]) -> bool:
        nonlocal run_rows
        run_rows += sum(1 for r in rows if r.run_id == run_id) if run_id else len(rows)
        return checker.feed(rows)

    if db:
        from coordinator.db import Database

        database = Database(db)
        with database.transaction() as session:
            after = 0
            while True:
                rows = auditlog.page(session, after, page_rows)
                if not feed(rows) or len(rows) < page_rows:
                    break
                after = rows[-1].seq
        database.close()
    else:
        admin = Admin(coordinator, ca, token_file, insecure)
        after = 0
        while True:
            log = admin.GetAuditLog(
                admin_pb2.GetAuditLogRequest(after_seq=after, limit=page_rows), timeout=60
            )
            rows = _entry_rows(log)
            if not feed(rows) or not log.more or not rows:
                break
            after = rows[-1].seq
    verdict = checker.verdict()
    problems = auditlog.check_receipts(checker, held) if verdict.ok else []
    if verdict.ok and run_id and run_rows == 0:
        fail(f"the audit log has no rows for run {run_id!r}: `cohort admin runs list` shows runs")
    ok = verdict.ok and not problems
    if as_json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "rows": verdict.rows,
                    "run_rows": run_rows,
                    "first_bad_row": verdict.first_bad_seq,
                    "reason": verdict.reason,
                    "head_hash": verdict.head_hash,
                    "receipts": len(held),
                    "receipt_problems": problems,
                }
            )
        )
    elif not verdict.ok:
        console.print(
            f"[bold red]audit log broken at row {verdict.first_bad_seq}[/]: {verdict.reason}"
        )
    elif problems:
        console.print(
            f"[bold red]audit log does not match {len(problems)} site receipt(s)[/]: {problems[0]}"
        )
    else:
        console.print(
            f"[green]audit log intact[/]: {verdict.rows} rows"
            + (f" ({run_rows} for run {run_id})" if run_id else "")
            + (f", {len(held)} site receipts match" if held else "")
            + f", head {verdict.head_hash[:16]}…"
        )
    if not ok:
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
    db: Annotated[
        str,
        typer.Option(
            help="Build the report from this database (SQLAlchemy URL, e.g. a backup) with "
            "no coordinator running"
        ),
    ] = "",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="A coordinator's data folder (its cohort.db is the database unless --db "
            "names one): build the report offline"
        ),
    ] = None,
) -> None:
    """Write a run's compliance report: provenance, privacy, metrics, SHAP, log, regulations.

    With --db or --data-dir the report is built from the database directly, exactly as
    the coordinator builds it (only its generation time differs), and nothing is written
    to that database: a compliance officer can work from a backup.
    """
    if fmt not in ("html", "pdf", "json"):
        fail(f"--format must be html, pdf or json, not {fmt!r}")
    if db or data_dir is not None:
        payload = offline_report(run_id, fmt, db, data_dir)
    else:
        payload = wire.join_chunks(
            Admin(coordinator, ca, token_file, insecure).ExportReport(
                admin_pb2.ExportReportRequest(run_id=run_id, format=fmt), timeout=300
            )
        )
    if out.is_dir():
        out = out / f"cohort-report-{run_id}.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(payload)
    console.print(f"wrote {fmt} report ({len(payload)} bytes) to {out}", soft_wrap=True)


def offline_report(run_id: str, fmt: str, db: str, data_dir: Path | None) -> bytes:
    """The report of ``run_id`` rendered from the database alone (no coordinator)."""
    import tempfile

    from coordinator.db import Database
    from coordinator.report import facts_from_database
    from explain.report import write_report

    url = db or f"sqlite:///{(data_dir or Path('.')) / 'cohort.db'}"
    if url.startswith("sqlite") and ":memory:" not in url:
        # Opening a missing SQLite file would create an empty database: say so instead.
        path = Path(url.split("///", 1)[-1])
        if not path.is_file():
            fail(f"no database at {path} (--db sqlite:///PATH or --data-dir DIR)")
    database = Database(url)
    try:
        facts = facts_from_database(database, run_id)
    except KeyError:
        fail(f"the database has no run {run_id!r}")
    finally:
        database.close()
    with tempfile.TemporaryDirectory() as tmp:
        return write_report(facts, fmt, Path(tmp) / f"report.{fmt}").read_bytes()


@app.command("keygen")
@friendly_errors
def keygen(
    out: Annotated[Path, typer.Option(help="Folder for report-signing.key and .pub")],
) -> None:
    """Make an operator's Ed25519 key for signing reports (private key file mode 0600)."""
    from crypto import identity

    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / "report-signing.key", out / "report-signing.pub"
    if private_path.exists():
        fail(f"{private_path} exists already: a signing key is never overwritten")
    private, public = identity.generate_ed25519()
    private_path.touch(mode=0o600)
    private_path.write_text(private.hex() + "\n")
    public_path.write_text(public.hex() + "\n")
    console.print(
        f"signing key {private_path}; give {public_path} (fingerprint "
        f"{identity.format_fingerprint(identity.fingerprint(public))}) to whoever checks",
        soft_wrap=True,
    )


@app.command("sign-report")
@friendly_errors
def sign_report_command(
    report_file: Annotated[Path, typer.Argument(help="The report (HTML, PDF or JSON)")],
    key: Annotated[Path, typer.Option(help="Private key file from `cohort audit keygen`")],
    signer: Annotated[str, typer.Option(help="Who signs, as the statement names them")],
) -> None:
    """Sign a report file: writes REPORT.sig.json beside it (Ed25519, detached)."""
    from explain.report_signing import SUFFIX, read_key, sign_report, write

    if not report_file.is_file():
        fail(f"{report_file}: no such file")
    if not signer.strip() or len(signer) > 200:
        fail("--signer must be 1-200 characters")
    document = sign_report(report_file, read_key(key, private=True), signer)
    path = write(document, report_file.with_name(report_file.name + SUFFIX))
    console.print(f"signed {report_file.name} as {signer}: {path}", soft_wrap=True)


@app.command("check-report")
@friendly_errors
def check_report_command(
    report_file: Annotated[Path, typer.Argument(help="The report file to check")],
    key: Annotated[Path, typer.Option(help="The signer's public key file (.pub)")],
    signature: Annotated[
        Path | None, typer.Option(help="Signature file (default: REPORT.sig.json)")
    ] = None,
) -> None:
    """Check offline that a report is byte for byte what the key's holder signed (exit 1 if not)."""
    from explain.report_signing import SUFFIX, check_report, read_key

    sig_path = signature or report_file.with_name(report_file.name + SUFFIX)
    if not report_file.is_file():
        fail(f"{report_file}: no such file")
    if not sig_path.is_file():
        fail(f"{sig_path}: no signature file (sign with `cohort audit sign-report`)")
    try:
        document = json.loads(sig_path.read_text())
    except ValueError as exc:
        fail(f"{sig_path} is not JSON: {exc}")
    if not isinstance(document, dict):
        fail(f"{sig_path} is not a Cohort report signature")
    try:
        signer = check_report(report_file, document, read_key(key, private=False))
    except ValueError as exc:
        console.print(f"[bold red]report NOT verified[/]: {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green]report verified[/]: signed by {signer}", soft_wrap=True)
