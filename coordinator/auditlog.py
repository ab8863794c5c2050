"""Tamper-evident audit log: append-only rows, each carrying the sha256 of the one before."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.schema import AuditEvent

GENESIS = "0" * 64


@dataclass(frozen=True)
class ChainVerdict:
    """Result of recomputing the chain: ``first_bad_seq`` names the first row that is wrong."""

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS


def canonical_details(details: Mapping[str, object]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(
    prev_hash: str, seq: int, at: float, run_id: str, kind: str, actor: str, details: str
) -> str:
    """sha256 over the previous hash and every field of the row, in a fixed layout."""
    body = json.dumps(
        [prev_hash, seq, repr(float(at)), run_id, kind, actor, details],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def verify_chain(rows: Iterable[AuditEvent]) -> ChainVerdict:
    """Recompute the chain over rows in ``seq`` order.

    A changed row breaks its own hash; a deleted row leaves a gap in ``seq`` and breaks
    the next row's ``prev_hash``; reordered rows break both. The first row where any of
    these shows is named.
    """
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            return ChainVerdict(False, count, row.seq, f"expected row {expected_seq}", prev)
        if row.prev_hash != prev:
            return ChainVerdict(False, count, row.seq, "previous-hash link broken", prev)
        recomputed = entry_hash(
            row.prev_hash, row.seq, row.time, row.run_id, row.kind, row.actor, row.details
        )
        if recomputed != row.hash:
            return ChainVerdict(False, count, row.seq, "row content does not match its hash", prev)
        prev = row.hash
        expected_seq += 1
    return ChainVerdict(True, count, None, None, prev)


def append(
    session: Session,
    kind: str,
    *,
    run_id: str = "",
    actor: str = "",
    details: Mapping[str, object] | None = None,
) -> AuditEvent:
    """Append one row in the caller's transaction (callers serialise appends with a lock)."""
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq = (last.seq + 1) if last else 1
    prev = last.hash if last else GENESIS
    text = canonical_details(details or {})
    at = time.time()
    row = AuditEvent(
        seq=seq,
        time=at,
        run_id=run_id,
        kind=kind,
        actor=actor,
        details=text,
        prev_hash=prev,
        hash=entry_hash(prev, seq, at, run_id, kind, actor, text),
    )
    session.add(row)
    session.flush()
    return row


def all_rows(session: Session) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def count_rows(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)
