"""`cohort admin runs show` re-verifies a threshold run's custody statement, never echoes it."""

from __future__ import annotations

import json

from test_report_custody_verified import store_forged
from test_sovereign import secure_round  # noqa: F401
from typer.testing import CliRunner

from cli.main import app
from coordinator.schema import Run
from protos import admin_pb2

runner = CliRunner()


def test_runs_show_says_a_forged_custody_statement_is_unverified(secure_round):  # noqa: F811
    coordinator, _site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        fingerprint = session.get(Run, run.run_id).key_fingerprint
        store_forged(session, run.run_id, fingerprint, threshold=2)
    base = ["admin", "runs", "show", run.run_id, "--coordinator", coordinator.address]

    shown = runner.invoke(app, [*base, "--insecure"])
    as_json = runner.invoke(app, [*base, "--insecure", "--json"])
    info = coordinator.admin().GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))

    assert shown.exit_code == 0, shown.output
    assert "UNVERIFIED" in shown.output and "custodian" in shown.output
    assert "share holders must join" not in shown.output
    assert "erasure" not in shown.output.lower()
    custody = info.threshold_custody
    assert not custody.verified and custody.problem
    assert (custody.threshold, custody.parties, list(custody.holders)) == (0, 0, [])
    assert as_json.exit_code == 0, as_json.output
    assert "site-1" not in as_json.output
    assert json.loads(as_json.output)["threshold_custody"]["problem"] == custody.problem
