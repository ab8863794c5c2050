"""`cohort audit report --db`: the same report from a database backup, no coordinator."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3

from helpers import wait_for
from sqlalchemy import func, select
from test_report_authenticity import audited_run, export, send_audit, summary  # noqa: F401
from typer.testing import CliRunner

from cli.main import app
from coordinator.schema import AuditEvent
from protos import admin_pb2, common_pb2

runner = CliRunner()
STAMP = re.compile(r"generated \d{4}-\d\d-\d\dT[0-9:.]+Z")


def offline(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["audit", "report", *args], catch_exceptions=False)


def test_offline_report_equals_the_coordinators(audited_run, tmp_path):  # noqa: F811
    coordinator, sites, audits, run_id = audited_run
    for name in sites:
        send_audit(sites[name], audits[name], summary(name))
    # A finished run's report is anchored at its last row: later rows do not change it.
    wait_for(
        lambda: (
            coordinator.admin().GetRun(admin_pb2.GetRunRequest(run_id=run_id)).state
            == common_pb2.RUN_STATE_COMPLETED
        ),
        what="run completed",
    )
    online = json.loads(export(coordinator, run_id, "json"))
    online_html = export(coordinator, run_id, "html").decode()
    # A backup taken while the coordinator runs: the copy is what the officer holds.
    db = coordinator.server.hub.db.url.split("///", 1)[1]
    backup = tmp_path / "backup.db"
    with coordinator.hub.db.transaction() as session:
        session.connection().exec_driver_sql(f"VACUUM INTO '{backup}'")
        rows_before = session.scalar(select(func.count()).select_from(AuditEvent))
    assert backup.is_file() and db != str(backup)

    result = offline(
        run_id, "--db", f"sqlite:///{backup}", "--format", "json", "--out", str(tmp_path / "r.json")
    )
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "r.json").read_text())
    assert facts.pop("generated_at") != "" and online.pop("generated_at") != ""
    assert facts == online
    assert facts["attribution"] is not None and facts["audit_log"]["verified"] is True

    result = offline(run_id, "--db", f"sqlite:///{backup}", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    html = (tmp_path / f"cohort-report-{run_id}.html").read_text()
    assert STAMP.sub("", html) == STAMP.sub("", online_html)

    # --data-dir alone finds the folder's cohort.db; PDF renders too.
    folder = tmp_path / "restored"
    folder.mkdir()
    shutil.copy(backup, folder / "cohort.db")
    result = offline(
        run_id, "--data-dir", str(folder), "--format", "pdf", "--out", str(tmp_path / "r.pdf")
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")

    # Building offline writes nothing to the database it reads.
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT count(*) FROM audit_events").fetchone()[0] == rows_before


def test_offline_report_refuses_what_it_cannot_read(audited_run, tmp_path):  # noqa: F811
    coordinator, _, _, run_id = audited_run
    missing = tmp_path / "nope.db"
    result = offline(run_id, "--db", f"sqlite:///{missing}", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "no database" in result.output
    assert not missing.exists()  # not created empty
    url = coordinator.server.hub.db.url
    result = offline("no-such-run", "--db", url, "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "no run 'no-such-run'" in result.output
    result = offline(run_id, "--db", url, "--format", "docx", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "--format" in result.output


def test_the_demos_closing_commands_run_as_printed(audited_run, tmp_path):  # noqa: F811
    coordinator, sites, audits, run_id = audited_run
    from cli.demo import check_commands

    folder = tmp_path / "a folder with spaces"
    folder.mkdir()
    with coordinator.hub.db.transaction() as session:
        session.connection().exec_driver_sql(f"VACUUM INTO '{folder / 'cohort.db'}'")
    verify, rebuild = check_commands(run_id, folder)
    assert str(folder.resolve()) in shlex.split(verify)[-1]
    for line in (verify, rebuild):
        args = shlex.split(line)
        assert args[0] == "cohort"
        result = runner.invoke(app, args[1:], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert (folder / f"report-{run_id}.pdf").read_bytes().startswith(b"%PDF")
