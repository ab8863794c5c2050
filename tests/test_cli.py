"""The `cohort` CLI: one clear line and exit code 2 on bad input; commands against a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import breast_cancer_sites, create_run, wait_for_state
from typer.testing import CliRunner

from cli.main import app
from protos import common_pb2

runner = CliRunner()
DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


def assert_one_line_error(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert text.startswith("error:"), text
    for word in words:
        assert word in text


def test_unreachable_coordinator_is_one_line_and_exit_2():
    result = invoke("admin", "runs", "list", "--coordinator", "127.0.0.1:1", "--insecure")

    assert_one_line_error(result, "cannot reach the coordinator")


def test_unknown_run_is_one_line_and_exit_2(coordinator):
    result = invoke(
        "admin", "runs", "show", "nope", "--coordinator", coordinator.address, "--insecure"
    )

    assert_one_line_error(result, "no run", "NOT_FOUND")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--secure", "rsa"], ["paillier or none"]),
        (["--fraction", "3"], ["fraction"]),
        (["--secure", "paillier", "--strategy", "krum"], ["krum", "plaintext"]),
        (["--config", "[1]"], ["JSON object"]),
    ],
    ids=["scheme", "fraction", "strategy", "config"],
)
def test_bad_run_options_are_refused(coordinator, args, words):
    result = invoke(
        "admin", "runs", "start", "--coordinator", coordinator.address, "--insecure", *args
    )

    assert_one_line_error(result, *words)
    listed = invoke(
        "admin", "runs", "list", "--json", "--coordinator", coordinator.address, "--insecure"
    )
    assert json.loads(listed.output) == []


def test_client_without_data_is_refused():
    result = invoke("client", "run", "--name", "a", "--insecure")

    assert_one_line_error(result, "--data")


def test_client_with_missing_file_is_refused(tmp_path):
    result = invoke(
        "client", "run", "--name", "a", "--insecure", "--data", str(tmp_path / "none.csv")
    )

    assert_one_line_error(result, "no data file")


def test_client_with_bad_app_reference_is_refused():
    result = invoke("client", "run", "--name", "a", "--insecure", "--app", "no_such_module:fn")

    assert_one_line_error(result, "cannot import")


def test_bad_config_file_is_refused(tmp_path):
    bad = tmp_path / "cohort.toml"
    bad.write_text("this is = = not toml")

    result = invoke("--config", str(bad), "admin", "runs", "list")

    assert_one_line_error(result, "not valid TOML")


def test_config_file_sets_defaults_and_flags_win(coordinator, tmp_path):
    config = tmp_path / "cohort.toml"
    config.write_text(
        f'[admin.runs.start]\ncoordinator = "{coordinator.address}"\n'
        'insecure = true\nrounds = 7\nname = "from-toml"\n'
    )

    result = invoke(
        "--config", str(config), "admin", "runs", "start", "--name", "from-flag", "--json"
    )

    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert run["rounds"] == 7
    assert run["name"] == "from-flag"


def test_admin_commands_against_a_finished_run(coordinator, agents, tmp_path):
    agents.start(coordinator.address, breast_cancer_sites(2), tmp_path)
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, min_clients=2)
    wait_for_state(admin, run.run_id, DONE)
    where = ["--coordinator", coordinator.address, "--insecure"]

    shown = invoke("admin", "runs", "show", run.run_id, "--json", *where)
    listed = invoke("admin", "runs", "list", *where)
    watched = invoke("admin", "runs", "watch", run.run_id, "--json", *where)
    out = tmp_path / "model.npz"
    downloaded = invoke("admin", "models", "download", run.run_id, "--out", str(out), *where)
    sites = invoke("admin", "sites", "list", "--json", *where)
    verified = invoke("audit", "verify", run.run_id, *where)
    metrics = invoke("admin", "metrics", "--json", *where)

    assert json.loads(shown.output)["state"] == "completed"
    assert run.run_id in listed.output
    assert json.loads(watched.output.strip().splitlines()[-1])["state"] == "completed"
    assert downloaded.exit_code == 0 and out.exists()
    assert len(json.loads(sites.output)) == 2
    assert verified.exit_code == 0 and "intact" in verified.output
    counters = json.loads(metrics.output)
    assert counters["runs_completed"] == 1 and counters["updates_accepted"] == 2


def test_audit_verify_exits_1_on_a_tampered_log(tmp_path):
    from sqlalchemy import text

    from coordinator import auditlog
    from coordinator.db import Database

    url = f"sqlite:///{tmp_path / 'c.db'}"
    db = Database(url)
    db.migrate()
    with db.transaction() as session:
        for i in range(3):
            auditlog.append(session, "event", details={"i": i})
        session.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    db.close()

    result = invoke("audit", "verify", "--db", url)

    assert result.exit_code == 1
    assert "row 2" in result.output


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0
    for command in ("demo", "coordinator", "client", "admin", "audit"):
        assert command in result.stdout
