"""Runs say what is true: audits are part of the run, stops are prompt, the log is ordered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from helpers import breast_cancer_sites, create_run, wait_for, wait_for_state
from sqlalchemy import select

from coordinator.schema import AuditEvent, Task, TaskKind, TaskState
from protos import admin_pb2, common_pb2, federation_pb2, wire

DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_STOPPED)
ROOT = Path(__file__).resolve().parent.parent


def _quick_audit(trainer, release: threading.Event | None = None):  # type: ignore[no-untyped-def]
    """A real trainer with a fast audit hook (SHAP itself is tested in test_explain_*).

    With ``release`` the audit hangs until it is set: that site's audit misses the deadline.
    """
    from explain.summary import AttributionSummary

    def audit(weights, config):  # type: ignore[no-untyped-def]
        if release is not None:
            release.wait(60)
            return None
        features = list(trainer.feature_names)
        return AttributionSummary(
            site="ignored",
            kind="tabular",
            feature_names=features,
            class_names=["class_0", "class_1"],
            mean_abs=[0.01] * len(features),
            mean_signed={"class_0": [0.0] * len(features), "class_1": [0.0] * len(features)},
            row_count=len(trainer.holdout_data.y),
            base_value=[0.5, 0.5],
        )

    trainer.audit = audit
    return trainer


def _events(coordinator, kind: str) -> list[dict]:
    with coordinator.hub.db.transaction() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.kind == kind)).all()
        return [json.loads(r.details) for r in rows]


def test_run_completes_once_audits_are_in_or_past_their_deadline(coordinator, agents, tmp_path):
    release = threading.Event()
    trainers = breast_cancer_sites(3)
    trainers = [_quick_audit(t) for t in trainers[:2]] + [_quick_audit(trainers[2], release)]
    agents.start(
        coordinator.address, trainers, tmp_path, names=["bank-a", "bank-b", "bank-c"], audit_rows=20
    )
    admin = coordinator.admin()
    try:
        run = create_run(admin, rounds=1, audit=True, audit_deadline_seconds=10)
        seen: list[admin_pb2.RunInfo] = []

        def auditing() -> bool:
            info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
            seen.append(info)
            return info.waiting_for.startswith("audits:") or info.state in DONE

        wait_for(auditing, 120, "the audit phase")
        during = seen[-1]
        info = wait_for_state(admin, run.run_id, DONE, timeout=120)
        report = json.loads(
            wire.join_chunks(
                admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run.run_id, format="json"))
            )
        )
        html = wire.join_chunks(
            admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run.run_id, format="html"))
        ).decode()
    finally:
        release.set()

    # The audit phase is part of the run: RUNNING, saying whose audits it waits for.
    assert during.state == common_pb2.RUN_STATE_RUNNING
    assert during.final_model_sha256
    assert "bank-c" in during.waiting_for
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    # Completed after the deadline, naming the site whose audit is missing.
    completed = _events(coordinator, "run.completed")[-1]
    assert completed["audits_missing"] == ["bank-c"]
    assert completed["audits_received"] == 2
    results = {r.site_name: r for r in info.site_results}
    assert results["bank-c"].audit == "missing"
    for site in ("bank-a", "bank-b"):
        assert results[site].audit == "in"
        assert 0.0 <= results[site].holdout_metrics["accuracy"] <= 1.0
        assert results[site].holdout_metrics["examples"] > 0
    # A report made right after completion has the audits, each with its held-out score.
    sites = {s["site"]: s for s in report["attribution"]["sites"]}
    assert set(sites) == {"bank-a", "bank-b"}
    assert "accuracy" in sites["bank-a"]["holdout_metrics"]
    assert "Final model on each site&#x27;s held-out rows" in html or "held-out rows" in html


def test_waiting_for_names_the_sites_a_pending_run_lacks(coordinator):
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, min_clients=3)

    info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))

    assert info.state == common_pb2.RUN_STATE_PENDING
    assert info.waiting_for == "sites: 0 of 3 online"


def test_a_pending_run_gives_up_after_its_start_deadline_saying_why(coordinator):
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, min_clients=3, start_deadline_seconds=1)

    info = wait_for_state(admin, run.run_id, (common_pb2.RUN_STATE_FAILED,), timeout=30)

    assert "gave up after 1 s pending" in info.failure_reason
    assert "sites: 0 of 3 online" in info.failure_reason


def test_sigterm_during_an_audit_stops_the_site_within_ten_seconds(coordinator, tmp_path):
    admin = coordinator.admin()
    run = create_run(admin, rounds=1, min_clients=1, audit=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    site = subprocess.Popen(
        [
            sys.executable, "-m", "cli.main", "client", "run",
            "--app", "slow_audit_app:client_fn", "--name", "clinic",
            "--coordinator", coordinator.address, "--insecure",
            "--state-dir", str(tmp_path / "clinic"),
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def auditing() -> bool:
            with coordinator.hub.db.transaction() as session:
                return (
                    session.scalar(
                        select(Task.id).where(
                            Task.run_id == run.run_id,
                            Task.kind == TaskKind.AUDIT,
                            Task.state == TaskState.DELIVERED,
                        )
                    )
                    is not None
                )

        wait_for(auditing, 120, "the site to take its audit task")
        time.sleep(1.0)  # well inside the (hour-long) audit

        started = time.monotonic()
        site.send_signal(signal.SIGTERM)
        _, stderr = site.communicate(timeout=10)
        took = time.monotonic() - started
    finally:
        if site.poll() is None:
            site.kill()
            site.communicate()

    assert took < 10
    assert "SIGTERM: stopping" in stderr
    assert "the audit task in progress was abandoned" in stderr
    assert "shutting down" in stderr
    assert "Traceback" not in stderr


def test_exports_while_a_run_closes_leave_no_duplicate_audit_seq(coordinator, agents, tmp_path):
    """Sites export one run's model in many threads while another run trains and closes."""
    admin = coordinator.admin()
    pool = agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    first = create_run(admin, rounds=1)
    assert wait_for_state(admin, first.run_id, DONE).state == common_pb2.RUN_STATE_COMPLETED
    second = create_run(admin, rounds=2)
    stubs = [(a.stub, a._metadata()) for a in pool]
    errors: list[BaseException] = []
    stop = threading.Event()

    def export(stub, metadata) -> None:  # type: ignore[no-untyped-def]
        while not stop.is_set():
            try:
                stub.GetFinalModel(
                    federation_pb2.FinalModelRequest(run_id=first.run_id),
                    metadata=metadata,
                    timeout=30,
                )
            except grpc.RpcError as exc:  # any failure here is the bug under test
                errors.append(exc)
                return

    threads = [
        threading.Thread(target=export, args=stubs[i % len(stubs)], daemon=True) for i in range(12)
    ]
    for thread in threads:
        thread.start()
    try:
        info = wait_for_state(admin, second.run_id, DONE)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert not errors, errors[:1]
    with coordinator.hub.db.transaction() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        kinds = Counter(r.kind for r in rows)
        seqs = [r.seq for r in rows]
        from coordinator import auditlog

        assert auditlog.verify_chain(rows).ok
    assert seqs == list(range(1, len(seqs) + 1))
    assert kinds["model.exported"] >= 12
    assert kinds["run.completed"] == 2
    assert kinds["coordinator.started"] == 1


def test_coordinator_start_and_stop_are_in_the_log(tmp_path):
    from conftest import start_coordinator

    url = f"sqlite:///{tmp_path / 'c.db'}"
    running = start_coordinator(url, tmp_path / "d")
    running.server.stop(grace=0.2)
    running = start_coordinator(url, tmp_path / "d")
    try:
        with running.hub.db.transaction() as session:
            rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
            kinds = [r.kind for r in rows]
            started = json.loads(rows[0].details)
    finally:
        running.server.stop(grace=0.2)

    assert kinds == ["coordinator.started", "coordinator.stopped", "coordinator.started"]
    assert started["db"] == "sqlite"
    assert started["version"].startswith("cohort")


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: "
            "ipv4:127.0.0.1:1: Socket closed",
            "serves TLS",
        ),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
            "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL "
            "routines:OPENSSL_internal:WRONG_VERSION_NUMBER",
            "answers in plaintext",
        ),
        ("failed to connect to all addresses; last error: Connection refused", None),
    ],
    ids=["plaintext-to-tls", "tls-to-plaintext", "down"],
)
def test_transport_mismatch_is_named(detail, expected):
    from protos.transport import transport_mismatch

    said = transport_mismatch(detail)

    assert (said is None) if expected is None else (expected in said)


def test_agent_events_are_one_plain_line():
    from cli.events import event_line

    line = event_line(
        "disconnected", {"code": "UNAVAILABLE", "detail": "Connection refused", "retry_in": 16.0}
    )

    assert line == "disconnected (Connection refused); retrying in 16 s"
    assert event_line("reconnected", {"coordinator": "c:1"}) == "reconnected to c:1"
    assert event_line("shutting_down", {}) == "shutting down"
    assert "{" not in event_line("joined", {"node_id": "n1", "site": "a"})


def _summary_dict(**extra: object) -> dict:
    return {
        "site": "a",
        "kind": "tabular",
        "feature_names": ["x"],
        "class_names": ["no", "yes"],
        "mean_abs": [0.1],
        "mean_signed": {"no": [0.0], "yes": [0.0]},
        "row_count": 3,
        "base_value": [0.5, 0.5],
        "noise_scale": 0.0,
        "explainer": "test",
        **extra,
    }


@pytest.mark.parametrize(
    "metrics",
    [
        {"accuracy": float("nan")},
        {"accuracy": "high"},
        {"accuracy": True},
        {"": 1.0},
        {"x" * 65: 1.0},
        {f"m{i}": 1.0 for i in range(33)},
        [1.0],
    ],
    ids=["nan", "text", "bool", "empty-name", "long-name", "too-many", "not-an-object"],
)
def test_holdout_metrics_a_site_sends_are_checked(metrics):
    from explain.summary import AttributionSummary

    with pytest.raises(ValueError, match="holdout"):
        AttributionSummary.from_dict(_summary_dict(holdout_metrics=metrics))


def test_a_summary_without_holdout_metrics_still_parses():
    from explain.summary import AttributionSummary

    summary = AttributionSummary.from_dict(_summary_dict())

    assert summary.holdout_metrics == {}
    assert AttributionSummary.from_dict(summary.to_dict()) == summary
