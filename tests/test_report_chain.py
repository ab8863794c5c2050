"""The report against the audit chain: edited tables are named, not vouched for (review 2026-12-03).

An operator with database access edits the tables the report reads (not the hash-chained
log, which would show as broken). Before, the report took the edits as facts and still
said "Audit log: verified". Now every fact the chain also records is compared with it.
Also here: a stopped run's unaggregated round trains nothing, the stop reason is in the
report, an unrecorded starter is not made up, and `runs show` prints site words as text.
"""

from __future__ import annotations

import json
import time

import pytest
from fuzzing import FakeSite
from rich.console import Console
from sqlalchemy import text
from test_federation_errors import WEIGHTS
from test_report_authenticity import first_task
from test_sovereign import secure_round  # noqa: F401  (fixture)

from cli import runs as cli_runs
from coordinator.report import report_facts
from explain import narrative
from explain.regulations import map_regulations
from explain.report_html import render_html
from protos import admin_pb2, common_pb2, federation_pb2, wire


def start(coordinator, rounds: int, **config: object) -> tuple[list[FakeSite], str]:
    """Three hand-driven sites in a plaintext run (no audit unless ``config`` says)."""
    sites = [FakeSite(coordinator.federation(), name=n) for n in ("alpha", "beta", "gamma")]
    run = coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=rounds,
            min_clients=3,
            round_deadline_seconds=60,
            config_json=json.dumps({"audit": False, **config}),
        )
    )
    site, init = first_task(sites, federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    return sites, run.run_id


def finished(coordinator) -> tuple[list[FakeSite], str]:
    sites, run_id = start(coordinator, rounds=1)
    for site in sites:
        site.submit(site.pull(federation_pb2.TASK_KIND_TRAIN), wire.encode_tensors(WEIGHTS))
    deadline = time.time() + 30
    while report_facts(coordinator.hub, run_id)["run"]["state"] != "completed":
        assert time.time() < deadline, "the run did not complete"
        time.sleep(0.1)
    return sites, run_id


def test_an_untouched_run_agrees_with_its_log(coordinator):
    _, run_id = finished(coordinator)

    facts = report_facts(coordinator.hub, run_id)

    assert facts["audit_log"]["verified"] is True
    assert facts["audit_log"]["discrepancies"] == []
    assert ("Audit log", "verified", "ok") in narrative.headline(facts)
    art12 = next(r for r in facts["regulations"] if r["article"] == "Art. 12")
    assert art12["status"] == "evidenced" and "agree with it" in art12["evidence"]


@pytest.mark.parametrize(
    "edit, named",
    [
        (
            "UPDATE runs SET model='certified_model_v9' WHERE id=:r",
            "run model is 'certified_model_v9'",
        ),
        (
            "UPDATE run_sites SET site_name='Mayo Clinic', rows=99999 WHERE run_id=:r "
            "AND site_name='alpha'",
            "site 'Mayo Clinic': name is 'Mayo Clinic', the log says 'alpha'",
        ),
        (
            "UPDATE rounds SET metrics='{\"accuracy\": 0.99}' WHERE run_id=:r",
            "round 1: metrics",
        ),
        ("DELETE FROM updates WHERE run_id=:r AND node_id=:n", "round 1: contributing nodes"),
        ("UPDATE rounds SET num_updates=5 WHERE run_id=:r", "round 1: updates 5, the log says 3"),
        ("UPDATE runs SET final_model_sha256=:fake WHERE id=:r", "final model sha256 is cccc"),
    ],
)
def test_a_table_edited_after_the_fact_is_named_and_not_vouched_for(coordinator, edit, named):
    sites, run_id = finished(coordinator)
    with coordinator.hub.db.engine.begin() as connection:
        connection.execute(text(edit), {"r": run_id, "n": sites[2].node_id, "fake": "cc" * 32})

    facts = report_facts(coordinator.hub, run_id)

    log = facts["audit_log"]
    assert log["verified"] is True  # the chain itself is intact
    assert any(named in d for d in log["discrepancies"]), log["discrepancies"]
    label, value, tone = next(b for b in narrative.headline(facts) if b[0] == "Audit log")
    assert tone == "bad" and "DISAGREE" in value
    assert next(r for r in map_regulations(facts) if r["article"] == "Art. 12")["status"] == "gap"
    assert "Facts the log contradicts" in render_html(facts)


def test_a_stopped_runs_unaggregated_round_trained_nothing_and_its_reason_is_reported(
    coordinator,
):
    sites, run_id = start(coordinator, rounds=3)
    sites[0].submit(sites[0].pull(federation_pb2.TASK_KIND_TRAIN), wire.encode_tensors(WEIGHTS))
    coordinator.admin().StopRun(admin_pb2.StopRunRequest(run_id=run_id, reason="DPO halted it"))

    facts = report_facts(coordinator.hub, run_id)

    assert facts["run"]["rounds_completed"] == 0
    assert facts["sites"] == []  # round 1 never closed: no site's update trained the model
    assert "DPO halted it" in (facts["run"]["failure_reason"] or "")
    assert ("Failure or stop reason", facts["run"]["failure_reason"]) in narrative.run_pairs(facts)
    assert facts["audit_log"]["discrepancies"] == []


def test_an_unrecorded_starter_is_not_made_up(coordinator):
    _, run_id = finished(coordinator)
    with coordinator.hub.db.engine.begin() as connection:
        connection.execute(text("UPDATE runs SET created_by='' WHERE id=:r"), {"r": run_id})

    assert report_facts(coordinator.hub, run_id)["run"]["started_by"] == "not recorded"


def test_runs_show_prints_site_words_as_text_not_markup(monkeypatch):
    console = Console(width=200, record=True)
    monkeypatch.setattr(cli_runs, "console", console)
    run = admin_pb2.RunInfo(
        run_id="r1",
        name="[bold]trusted[/]",
        model="tabular_mlp",
        state=common_pb2.RUN_STATE_FAILED,
        failure_reason="site alpha refused: [/] [white on white]COMPLETED fine[/]",
        rounds=1,
    )

    cli_runs.print_run(run)  # raised MarkupError on the stray "[/]" before

    shown = console.export_text()
    assert "[white on white]COMPLETED fine[/]" in shown
    assert "[bold]trusted[/]" in shown


def test_a_secure_runs_key_facts_come_from_the_log_and_an_edited_fingerprint_is_named(
    secure_round,  # noqa: F811
):
    coordinator, _site, run, _ = secure_round
    honest = report_facts(coordinator.hub, run.run_id)["privacy"]
    assert honest["key_custodian"]  # "—" before, though one site holds the whole key
    assert honest["key_bits"] == 1024 and len(honest["key_fingerprints"]) == 1
    with coordinator.hub.db.engine.begin() as connection:
        connection.execute(
            text("UPDATE runs SET key_fingerprint=:f, custodian='Escrow Trust' WHERE id=:r"),
            {"f": "00" * 16, "r": run.run_id},
        )

    facts = report_facts(coordinator.hub, run.run_id)

    assert facts["privacy"]["key_custodian"] == honest["key_custodian"]
    assert facts["privacy"]["key_fingerprints"] == honest["key_fingerprints"]
    assert any("key fingerprint is 0000" in d for d in facts["audit_log"]["discrepancies"])


# -- final review of 2026-12-03 -------------------------------------------------------------


def test_an_edited_scheme_or_strategy_is_named(coordinator):
    _, run_id = finished(coordinator)
    with coordinator.hub.db.engine.begin() as connection:
        connection.execute(
            text("UPDATE runs SET secure='paillier', strategy='fedprox' WHERE id=:r"),
            {"r": run_id},
        )

    found = report_facts(coordinator.hub, run_id)["audit_log"]["discrepancies"]

    assert any("run secure is 'paillier'" in d for d in found), found
    assert any("run strategy is 'fedprox'" in d for d in found), found


def test_a_final_model_edited_after_a_stop_in_the_audit_phase_is_named(coordinator):
    sites, run_id = start(coordinator, rounds=1, audit=True)
    for each in sites:
        each.submit(each.pull(federation_pb2.TASK_KIND_TRAIN), wire.encode_tensors(WEIGHTS))
    deadline = time.time() + 30
    while not report_facts(coordinator.hub, run_id)["run"]["model_sha256"]:
        assert time.time() < deadline, "training did not finish"
        time.sleep(0.1)
    coordinator.admin().StopRun(admin_pb2.StopRunRequest(run_id=run_id, reason="halt"))
    with coordinator.hub.db.engine.begin() as connection:
        connection.execute(
            text("UPDATE runs SET final_model_sha256=:f WHERE id=:r"),
            {"r": run_id, "f": "cc" * 32},
        )

    found = report_facts(coordinator.hub, run_id)["audit_log"]["discrepancies"]

    assert any("final model sha256 is cccc" in d for d in found), found


def test_a_site_revoked_before_the_close_is_not_a_contributor_nor_a_disagreement(coordinator):
    sites, run_id = start(coordinator, rounds=1, quorum=2)
    tasks = [(each, each.pull(federation_pb2.TASK_KIND_TRAIN)) for each in sites]
    for each, task in (tasks[0], tasks[2]):
        each.submit(task, wire.encode_tensors(WEIGHTS))
    coordinator.admin().RevokeSite(admin_pb2.RevokeRequest(name="gamma", reason="test"))
    tasks[1][0].submit(tasks[1][1], wire.encode_tensors(WEIGHTS))
    deadline = time.time() + 30
    while report_facts(coordinator.hub, run_id)["run"]["state"] != "completed":
        assert time.time() < deadline, "the run did not complete"
        time.sleep(0.1)

    facts = report_facts(coordinator.hub, run_id)

    assert facts["audit_log"]["discrepancies"] == []
    assert sorted(s["name"] for s in facts["sites"]) == ["alpha", "beta"]


def test_round_metrics_that_overflow_when_weighted_are_left_out():
    from types import SimpleNamespace

    from coordinator.scheduler import weighted_metrics

    updates = [
        SimpleNamespace(metrics={"loss": 1e308, "accuracy": 0.5}, num_examples=10),
        SimpleNamespace(metrics={"loss": 1.0, "accuracy": 1.0}, num_examples=10),
    ]

    # inf would reach the round's JSON column, which PostgreSQL refuses ("Infinity").
    assert weighted_metrics(updates) == {"loss": 1.0, "accuracy": 0.75}


def test_the_code_version_is_the_one_that_ran_the_run(coordinator, monkeypatch):
    import coordinator.report as report_module

    _, run_id = finished(coordinator)
    ran = report_facts(coordinator.hub, run_id)["run"]["code_version"]
    monkeypatch.setattr(report_module, "code_version", lambda: "cohort 9.9.9")  # an upgrade

    after = report_facts(coordinator.hub, run_id)["run"]["code_version"]

    assert after == ran and "9.9.9" not in after and "not logged" not in after
