"""Tamper-evident audit log: append-only rows, each carrying the sha256 of the one before."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from coordinator.schema import AuditEvent

GENESIS = "0" * 64
# No string a caller hands in reaches a row longer than this: a site must not be able to
# write megabytes into the log through an id or a reason (issue 11, item 6).
MAX_FIELD_CHARS = 512
# Large enough for the coordinator's own rows (a round naming a thousand sites), small
# enough that a page of rows stays under gRPC's 4 MiB (coordinator/exports.py also pages
# by bytes).
MAX_DETAILS_CHARS = 256 << 10
MAX_LIST_ITEMS = 10_000
MAX_KEYS = 1_000
# Columns' own widths (coordinator.schema.AuditEvent).
_COLUMN_CHARS = {"run_id": 36, "kind": 64, "actor": 128}
DEFAULT_PAGE_ROWS = 1000
MAX_PAGE_ROWS = 5000


@dataclass(frozen=True)
class ChainVerdict:
    """Result of recomputing the chain: ``first_bad_seq`` names the first row that is wrong."""

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS


def canonical_details(details: Mapping[str, object]) -> str:
    """A row's details as the hash covers them: sorted keys, no spaces."""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def bound_text(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    note = f"…[{len(text)} chars]"
    return text[: max(limit - len(note), 0)] + note


def bound_value(value: object, depth: int = 0) -> object:
    """A JSON-able copy of ``value`` whose every string is bounded (and nesting shallow)."""
    if isinstance(value, str):
        return bound_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return bound_text(repr(value))
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_KEYS]
        return {bound_text(str(k), 64): bound_value(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [bound_value(v, depth + 1) for v in list(value)[:MAX_LIST_ITEMS]]
    return bound_text(str(value))


def bounded_details(details: Mapping[str, object]) -> str:
    """Canonical JSON of ``details`` with bounded strings, never over MAX_DETAILS_CHARS."""
    text = canonical_details(bound_value(details))  # type: ignore[arg-type]
    if len(text) <= MAX_DETAILS_CHARS:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()
    return canonical_details({"truncated": True, "chars": len(text), "sha256": digest})


def entry_hash(
    prev_hash: str, seq: int, at: float, run_id: str, kind: str, actor: str, details: str
) -> str:
    """sha256 over the previous hash and every field of the row, in a fixed layout."""
    body = json.dumps(
        [prev_hash, seq, repr(float(at)), run_id, kind, actor, details],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


class ChainChecker:
    """Recompute the chain a page at a time: ``feed`` pages in ``seq`` order, then ``verdict``.

    A changed row breaks its own hash; a deleted row leaves a gap in ``seq`` and breaks
    the next row's ``prev_hash``; reordered rows break both. The first row where any of
    these shows is named. Only the hashes at ``watch`` seqs are kept (the receipts'
    rows), so memory stays flat however long the log is.
    """

    def __init__(self, watch: Iterable[int] = ()) -> None:
        self.prev = GENESIS
        self.expected_seq = 1
        self.count = 0
        self.failure: ChainVerdict | None = None
        self.watch = set(watch)
        self.seen: dict[int, str] = {}

    def feed(self, rows: Iterable[AuditEvent]) -> bool:
        """Check ``rows``; False once the chain is broken (the rest is then ignored)."""
        if self.failure is not None:
            return False
        for row in rows:
            self.count += 1
            prev = self.prev
            problem = None
            if row.seq != self.expected_seq:
                problem = f"expected row {self.expected_seq}"
            elif row.prev_hash != prev:
                problem = "previous-hash link broken"
            elif (
                entry_hash(
                    row.prev_hash, row.seq, row.time, row.run_id, row.kind, row.actor, row.details
                )
                != row.hash
            ):
                problem = "row content does not match its hash"
            if problem is not None:
                self.failure = ChainVerdict(False, self.count, row.seq, problem, prev)
                return False
            if row.seq in self.watch:
                self.seen[row.seq] = row.hash
            self.prev = row.hash
            self.expected_seq += 1
        return True

    def verdict(self) -> ChainVerdict:
        """The chain's verdict so far: the first failure, or good up to the last row fed."""
        if self.failure is not None:
            return self.failure
        return ChainVerdict(True, self.count, None, None, self.prev)

    @property
    def last_seq(self) -> int:
        """Sequence number of the last row checked."""
        return self.expected_seq - 1


def verify_chain(rows: Iterable[AuditEvent]) -> ChainVerdict:
    """Recompute the chain over all ``rows`` in ``seq`` order (see :class:`ChainChecker`)."""
    checker = ChainChecker()
    checker.feed(rows)
    return checker.verdict()


@dataclass(frozen=True)
class Receipt:
    """A log head a site was handed in a reply: row ``seq`` had ``hash`` at ``time``."""

    seq: int
    hash: str
    time: float = 0.0
    source: str = ""


def check_receipts(checker: ChainChecker, receipts: Iterable[Receipt]) -> list[str]:
    """What the receipts prove against a fully fed, intact chain: one sentence per problem.

    A receipt past the log's last row shows rows were cut off the end; a receipt whose
    hash differs from the row's shows that row (or one before it) was rewritten, even
    when the whole chain was recomputed consistently afterwards.
    """
    problems = []
    for receipt in receipts:
        where = f" ({receipt.source})" if receipt.source else ""
        if receipt.seq > checker.last_seq:
            problems.append(
                f"truncated: a site was shown row {receipt.seq}{where}, "
                f"but the log ends at row {checker.last_seq}"
            )
        elif receipt.seq >= 1 and checker.seen.get(receipt.seq) != receipt.hash:
            problems.append(
                f"rewritten: row {receipt.seq} no longer has the hash a site was shown"
                f"{where} ({receipt.hash[:16]}…)"
            )
    return problems


def append(
    session: Session,
    kind: str,
    *,
    run_id: str = "",
    actor: str = "",
    details: Mapping[str, object] | None = None,
) -> AuditEvent:
    """Append one row in the caller's transaction (callers serialise appends with a lock).

    Every string is bounded here, whatever the caller passes: ids and reasons that came
    from a request cannot make a row large. The row before is this transaction's own last
    row, else the committed head a :class:`LogHead` keeps (no query), else the database's.
    """
    tracker = session.info.get(LOG_HEAD)
    last = session.info.get(_NEW_ROWS)
    if last is None:
        last = tracker.get(session) if tracker is not None else head(session)
    seq, prev = last[0] + 1, last[1]
    text = bounded_details(details or {})
    run_id = bound_text(run_id, _COLUMN_CHARS["run_id"])
    kind = bound_text(kind, _COLUMN_CHARS["kind"])
    actor = bound_text(actor, _COLUMN_CHARS["actor"])
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
    try:
        session.flush()
    except IntegrityError:
        # The held head was behind the database (a row written by another process, or a
        # COMMIT whose acknowledgement was lost): this append fails, the next reads again.
        if tracker is not None:
            tracker.forget()
        raise
    return row


LOG_HEAD = "cohort_log_head"
_NEW_ROWS = "cohort_new_audit_rows"


class LogHead:
    """The log's committed head, kept as transactions commit rows: read with no query.

    Each append used to read the head with a query, and each reply to a site stamped it
    with another (issue 14). Rows a transaction appends are seen at flush and published
    only after its COMMIT, so the head is never a row that could still roll back; a
    rollback of a transaction that appended makes the next read ask the database again.
    The first read asks the database (rows of an earlier process). The coordinator's
    process is the log's one writer (coordinator.hub), and its appends are serialised by
    the hub lock; were a head ever stale anyway, the next row would reuse a ``seq`` and
    its INSERT fail on the primary key, never fork the chain silently, and the head is
    then dropped, so that the next append reads it from the database again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None

    def follow(self, factory: sessionmaker[Session]) -> None:
        """Track the rows of ``factory``'s sessions, and let :func:`append` find this head."""
        factory.configure(info={**factory.kw.get("info", {}), LOG_HEAD: self})
        event.listen(factory, "after_flush", self._collect)
        event.listen(factory, "after_commit", self._publish)
        event.listen(factory, "after_soft_rollback", self._forget)

    @staticmethod
    def _collect(session: Session, _context: object) -> None:
        rows = [obj for obj in session.new if isinstance(obj, AuditEvent)]
        if rows:
            last = max(rows, key=lambda row: row.seq)
            held = session.info.get(_NEW_ROWS)
            if held is None or last.seq > held[0]:
                session.info[_NEW_ROWS] = (int(last.seq), str(last.hash))

    def _publish(self, session: Session) -> None:
        row = session.info.pop(_NEW_ROWS, None)
        if row is not None:
            with self._lock:
                if self._head is not None and row[0] > self._head[0]:
                    self._head = row

    def _forget(self, session: Session, _previous: object) -> None:
        if session.info.pop(_NEW_ROWS, None) is not None:
            with self._lock:
                self._head = None  # the next read asks the database

    def forget(self) -> None:
        """Drop the held head: the next read asks the database."""
        with self._lock:
            self._head = None

    def peek(self) -> tuple[int, str] | None:
        """The committed (seq, hash) held, or None when the database must be asked."""
        with self._lock:
            return self._head

    def get(self, session: Session) -> tuple[int, str]:
        """The latest committed (seq, hash); asks the database (in ``session``) if none is held."""
        held = self.peek()
        if held is not None:
            return held
        found = head(session)
        with self._lock:
            # A row committed while we read is newer than what we read: keep the newer.
            if self._head is None or found[0] > self._head[0]:
                self._head = found
            return self._head


def all_rows(session: Session) -> list[AuditEvent]:
    """Every audit row in sequence order (small logs and tests; large ones are paged)."""
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def page(session: Session, after_seq: int = 0, limit: int = DEFAULT_PAGE_ROWS) -> list[AuditEvent]:
    """At most ``limit`` rows with ``seq > after_seq``, in order."""
    limit = min(max(int(limit), 1), MAX_PAGE_ROWS)
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > after_seq)
            .order_by(AuditEvent.seq)
            .limit(limit)
        )
    )


def iter_rows(session: Session, page_rows: int = DEFAULT_PAGE_ROWS) -> Iterator[AuditEvent]:
    """Every row in order, read a page at a time (memory flat in the log's length)."""
    after = 0
    while True:
        rows = page(session, after, page_rows)
        yield from rows
        if len(rows) < min(max(page_rows, 1), MAX_PAGE_ROWS):
            return
        after = rows[-1].seq


def head(session: Session) -> tuple[int, str]:
    """The last row's (seq, hash); (0, GENESIS) for an empty log."""
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    return (int(last.seq), str(last.hash)) if last else (0, GENESIS)


def count_rows(session: Session) -> int:
    """Number of rows in the audit log."""
    return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


class RowThrottle:
    """At most one row per ``(kind, key)`` every ``interval`` seconds; the rest are counted.

    Refusals and failed authentications are written by callers nobody vouches for: without
    a limit, a loop of bad calls grows the log (and holds its lock) at the caller's pace.
    The next row that passes says how many were held back.
    """

    def __init__(self, interval: float = 1.0, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, key: str) -> int | None:
        """None: drop this row. Otherwise the number of rows held back since the last one."""
        now = time.monotonic()
        slot = (kind, key[:128])
        with self._lock:
            if len(self._last) >= self.max_keys:
                # Forget old keys rather than grow; the worst case is one extra row per key.
                self._last.clear()
                self._held.clear()
            if now - self._last.get(slot, -self.interval - 1.0) < self.interval:
                self._held[slot] = self._held.get(slot, 0) + 1
                return None
            self._last[slot] = now
            return self._held.pop(slot, 0)
