"""The audit log anchored at the sites: receipts catch cut and rewritten logs; paging; bounds."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from fuzzing import header_for, submit, update_messages
from helpers import breast_cancer_sites
from sqlalchemy import delete, func, select
from test_federation_errors import FakeSite, expect_status
from test_federation_errors import training_round as training_round
from typer.testing import CliRunner

from cli.main import app
from client.agent import AgentConfig, SiteAgent
from client.receipts import ReceiptBook, load_receipts, receipts_path
from coordinator import auditlog
from coordinator.db import Database
from coordinator.schema import AuditEvent
from protos import admin_pb2, federation_pb2, federation_pb2_grpc, wire

runner = CliRunner()


def grow_log(coordinator, runs: int = 3) -> None:
    """Append rows the way an operator does: each CreateRun writes one."""
    admin = coordinator.admin()
    for _ in range(runs):
        admin.CreateRun(admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=9))


def verify(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify", *args])
    return result.exit_code, result.output


@pytest.fixture
def site_with_receipts(coordinator, tmp_path):
    """A real SiteAgent (its own channel and interceptor) that joined and polled once."""
    state = tmp_path / "site"
    agent = SiteAgent(
        AgentConfig(coordinator.address, "site-r", state, poll_seconds=1.0),
        breast_cancer_sites(1)[0],
    )
    agent.join()
    grow_log(coordinator)
    agent.stub.PullTask(
        federation_pb2.PullTaskRequest(wait_seconds=0), metadata=agent._metadata(), timeout=10
    )
    yield agent, state
    agent.close()


def stop_and_open(coordinator) -> Database:
    """Stop the coordinator (no more appends), then open its database as an attacker would."""
    url = str(coordinator.hub.db.engine.url)
    for channel in coordinator.channels:
        channel.close()
    coordinator.channels.clear()
    coordinator.server.stop(grace=0.2)
    return Database(url)


def test_agent_keeps_a_receipt_of_the_log_head_from_each_reply(site_with_receipts, coordinator):
    agent, state = site_with_receipts

    receipts = load_receipts(receipts_path(state, "site-r"))

    with coordinator.hub.db.transaction() as session:
        head_seq, head_hash = auditlog.head(session)
    assert len(receipts) >= 2  # the join's head, then the poll's (after three more rows)
    assert [r[0] for r in receipts] == sorted(r[0] for r in receipts)
    assert receipts[-1][:2] == (head_seq, head_hash)


def test_receipts_catch_rows_cut_off_the_end(site_with_receipts, coordinator, tmp_path):
    _, state = site_with_receipts
    last_seen = load_receipts(receipts_path(state, "site-r"))[-1][0]
    db = stop_and_open(coordinator)
    url = str(db.engine.url)
    with db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq >= last_seen - 1))
    db.close()

    plain = verify("--db", url)
    anchored = verify("--db", url, "--receipts", str(state))

    assert plain[0] == 0, plain[1]  # what is left is a valid chain on its own
    assert anchored[0] == 1, anchored[1]
    assert "truncated" in anchored[1] and f"row {last_seen}" in anchored[1]


def test_receipts_catch_a_consistently_rewritten_chain(site_with_receipts, coordinator):
    _, state = site_with_receipts
    db = stop_and_open(coordinator)
    url = str(db.engine.url)
    # Rewrite the first row and recompute every later hash, as a breached coordinator would.
    with db.transaction() as session:
        rows = auditlog.all_rows(session)
        prev = auditlog.GENESIS
        for row in rows:
            if row.seq == 1:
                row.details = json.dumps({"site": "someone-else"})
            row.prev_hash = prev
            row.hash = auditlog.entry_hash(
                prev, row.seq, row.time, row.run_id, row.kind, row.actor, row.details
            )
            prev = row.hash
    db.close()

    plain = verify("--db", url)
    anchored = verify("--db", url, "--receipts", str(state), "--json")

    assert plain[0] == 0, plain[1]
    assert anchored[0] == 1
    report = json.loads(anchored[1])
    assert report["ok"] is False and report["receipts"] >= 2
    assert all("rewritten" in p for p in report["receipt_problems"])


def test_receipts_of_an_untouched_log_verify(site_with_receipts, coordinator):
    _, state = site_with_receipts

    code, output = verify(
        "--coordinator", coordinator.address, "--insecure", "--receipts", str(state)
    )

    assert code == 0, output
    assert "receipts match" in output


def test_log_is_served_and_verified_a_page_at_a_time(coordinator):
    grow_log(coordinator, runs=9)
    admin = coordinator.admin()

    first = admin.GetAuditLog(admin_pb2.GetAuditLogRequest(limit=4))
    rest = admin.GetAuditLog(admin_pb2.GetAuditLogRequest(after_seq=4, limit=1000))
    code, output = verify(
        "--coordinator", coordinator.address, "--insecure", "--page-rows", "2", "--json"
    )

    assert [e.seq for e in first.entries] == [1, 2, 3, 4]
    assert first.more and first.head_seq >= 9
    assert rest.entries[0].seq == 5 and not rest.more
    assert code == 0, output
    assert json.loads(output)["rows"] == first.head_seq


def test_a_changed_row_on_a_later_page_is_named(coordinator):
    grow_log(coordinator, runs=9)
    with coordinator.hub.db.transaction() as session:
        row = session.get(AuditEvent, 7)
        row.details = json.dumps({"tampered": True})

    code, output = verify(
        "--coordinator", coordinator.address, "--insecure", "--page-rows", "3", "--json"
    )

    assert code == 1
    assert json.loads(output)["first_bad_row"] == 7


def test_page_size_over_the_limit_is_invalid_argument(coordinator):
    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().GetAuditLog(
            admin_pb2.GetAuditLogRequest(limit=auditlog.MAX_PAGE_ROWS + 1)
        ),
    )


def test_verify_of_an_unknown_run_exits_non_zero_with_one_line(coordinator):
    code, output = verify("nope", "--coordinator", coordinator.address, "--insecure")

    assert code == 2
    assert "no rows for run 'nope'" in output
    assert len(output.strip().splitlines()) == 1


def test_a_3mb_task_id_is_refused_and_never_reaches_the_log(coordinator):
    site = FakeSite(coordinator.federation())
    with coordinator.hub.db.transaction() as session:
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    task = federation_pb2.Task(task_id="x" * (3 << 20), run_id="r", round=1)
    header = header_for(task, b"", payload_size=1, payload_sha256="0" * 64)

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: submit(site, update_messages(header))
    )

    assert "task_id" in detail and len(detail) < 200
    with coordinator.hub.db.transaction() as session:
        after = session.scalar(select(func.count()).select_from(AuditEvent))
        longest = session.scalar(select(func.max(func.length(AuditEvent.details))))
        rejected = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "update.rejected")
        )
    assert after == before and rejected == 0
    assert longest < 1000


def test_every_string_a_row_holds_is_bounded(coordinator):
    with coordinator.hub.lock, coordinator.hub.db.transaction() as session:
        row = auditlog.append(
            session,
            "k" * 500,
            run_id="r" * 500,
            actor="a" * 10_000,
            details={"reason": "x" * 1_000_000, "nested": {"deep": ["y" * 100_000] * 1000}},
        )
        sizes = (len(row.kind), len(row.run_id), len(row.actor), len(row.details))

    assert sizes[0] <= 64 and sizes[1] <= 36 and sizes[2] <= 128
    assert sizes[3] <= auditlog.MAX_DETAILS_CHARS


def test_repeated_rejections_are_rate_limited(training_round):
    coordinator, site, _, task = training_round

    for _ in range(20):
        with pytest.raises(grpc.RpcError):
            site.submit(task, b"abc", sha="f" * 64)

    with coordinator.hub.db.transaction() as session:
        rows = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "update.rejected")
        )
    assert 1 <= rows <= 3  # one a second per node, whatever the pace of the calls


def test_interceptor_records_only_heads_that_moved(coordinator, tmp_path):
    book = ReceiptBook(tmp_path / "r.jsonl")
    stub = federation_pb2_grpc.FederationStub(book.attach(coordinator.channel()))
    reply = stub.Join(federation_pb2.JoinRequest(site_name="s", x25519_public_key=b"k" * 32))
    metadata = ((wire.NODE_TOKEN_HEADER, f"Bearer {reply.node_token}"),)
    for _ in range(3):
        stub.Heartbeat(federation_pb2.HeartbeatRequest(), metadata=metadata)
        stub.PullTask(federation_pb2.PullTaskRequest(wait_seconds=0), metadata=metadata)

    lines = Path(tmp_path / "r.jsonl").read_text().splitlines()

    assert reply.log_head.seq >= 1 and len(reply.log_head.hash) == 64
    assert len(lines) == 1  # nothing was appended after the join


def test_a_receipts_file_that_cannot_be_written_does_not_stop_the_site(coordinator, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the state dir should be")
    book = ReceiptBook(blocked / "r.jsonl")
    stub = federation_pb2_grpc.FederationStub(book.attach(coordinator.channel()))

    reply = stub.Join(federation_pb2.JoinRequest(site_name="s2", x25519_public_key=b"k" * 32))

    assert reply.node_id


def test_pages_of_large_rows_stay_under_the_message_limit(coordinator):
    with coordinator.hub.lock, coordinator.hub.db.transaction() as session:
        for index in range(30):
            big = [f"{index}-{n:06d}-" + "s" * 480 for n in range(400)]  # ~200 KB a row
            auditlog.append(session, "round.closed", details={"sites": big})

    code, output = verify(
        "--coordinator", coordinator.address, "--insecure", "--page-rows", "1000", "--json"
    )
    first = coordinator.admin().GetAuditLog(admin_pb2.GetAuditLogRequest(limit=1000))

    assert code == 0, output
    assert json.loads(output)["rows"] == first.head_seq
    assert first.more and len(first.entries) < first.head_seq
    assert first.ByteSize() < 4 << 20
