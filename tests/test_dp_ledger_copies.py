"""The coordinator's copies of sites' ledger entries, against a hostile or careless site."""

from __future__ import annotations

import json

import grpc
import pytest
from sqlalchemy import func, select
from test_federation_errors import expect_status
from test_sovereign import secure_round  # noqa: F401  (fixture)

from coordinator.ledger_copies import canonical, ledger_entries
from coordinator.schema import AuditEvent
from crypto import identity
from protos import federation_pb2


def statement(site, run_id: str, round_number: int = 1) -> dict[str, object]:
    return {"site": site, "run_id": run_id, "round": round_number, "run_epsilon": 1.5}


def send(site, run_id: str, body: dict[str, object], *, raw: bytes | None = None, key=None):
    text = raw if raw is not None else canonical(body)
    signature = identity.sign(key or site.ed25519_private, text)
    return site.stub.LedgerSubmit(
        federation_pb2.LedgerEntry(run_id=run_id, statement=text, signature=signature),
        metadata=site.metadata,
    )


def copies(coordinator) -> int:
    with coordinator.hub.db.transaction() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.kind == "privacy.spent")
            )
        )


def test_a_signed_entry_is_kept_and_verifies(secure_round):  # noqa: F811
    coordinator, site, run, _ = secure_round
    send(site, run.run_id, statement("custodian", run.run_id))
    with coordinator.hub.db.transaction() as session:
        [entry] = ledger_entries(session, run.run_id)
    assert entry["verified"] and entry["statement"]["run_epsilon"] == 1.5


@pytest.mark.parametrize(
    ("forgery", "code"),
    [
        ("another key", grpc.StatusCode.PERMISSION_DENIED),
        ("another site", grpc.StatusCode.INVALID_ARGUMENT),
        ("not canonical", grpc.StatusCode.INVALID_ARGUMENT),
        ("oversized", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_a_bad_entry_is_refused_and_nothing_is_stored(secure_round, forgery, code):  # noqa: F811
    coordinator, site, run, _ = secure_round
    body = statement("custodian", run.run_id)
    if forgery == "another key":
        key, _ = identity.generate_ed25519()
        call = lambda: send(site, run.run_id, body, key=key)  # noqa: E731
    elif forgery == "another site":
        call = lambda: send(site, run.run_id, statement("hospital-b", run.run_id))  # noqa: E731
    elif forgery == "not canonical":
        call = lambda: send(site, run.run_id, body, raw=json.dumps(body, indent=1).encode())  # noqa: E731
    else:
        call = lambda: send(site, run.run_id, {**body, "pad": "x" * 5000})  # noqa: E731
    expect_status(code, call)
    assert copies(coordinator) == 0


def test_a_site_cannot_flood_the_log_with_entries(secure_round):  # noqa: F811
    coordinator, site, run, _ = secure_round
    info = coordinator.admin().GetRun(
        __import__("protos.admin_pb2").admin_pb2.GetRunRequest(run_id=run.run_id)
    )
    limit = 2 * info.rounds + 2
    for number in range(limit):
        send(site, run.run_id, statement("custodian", run.run_id, number))
    detail = expect_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: send(site, run.run_id, statement("custodian", run.run_id, limit)),
    )
    assert "ledger entries" in detail
    assert copies(coordinator) == limit
