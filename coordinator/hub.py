"""What every part of the coordinator shares: database, blob store, one lock, one wake-up signal."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import event, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import ORMExecuteState, Session

from coordinator.auditlog import LogHead
from coordinator.blobs import BlobStore
from coordinator.db import Database
from coordinator.schema import Node
from coordinator.task_watch import RoundRelays, TaskWatch, Waiters, park, resolve_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Size and time limits; a request past one gets RESOURCE_EXHAUSTED or a clear error."""

    max_update_bytes: int = 512 << 20
    max_audit_bytes: int = 4 << 20
    max_poll_seconds: float = 30.0
    offline_after_seconds: float = 30.0
    heartbeat_interval_seconds: float = 5.0
    # A node token unused this long expires (each authenticated call pushes it back); an
    # operator token expires this long after it was issued. 0: never.
    node_token_idle_seconds: float = 30 * 86400.0
    operator_token_seconds: float = 90 * 86400.0


@dataclass
class Hub:
    """The coordinator's shared state.

    One process owns the database: state transitions (accepting an update, closing a
    round) happen under ``lock`` so they are atomic with respect to each other, and
    ``changed`` wakes long polls and watchers whenever something moved.
    """

    db: Database
    blobs: BlobStore
    limits: Limits = field(default_factory=Limits)
    lock: threading.RLock = field(default_factory=threading.RLock)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closing: threading.Event = field(default_factory=threading.Event)
    tasks: TaskWatch = field(default_factory=lambda: TaskWatch())
    relays: RoundRelays = field(default_factory=lambda: RoundRelays())
    presence: Presence = field(default_factory=lambda: Presence())
    log_head: LogHead = field(default_factory=LogHead)
    credentials: Credentials = field(default_factory=lambda: Credentials())
    generation: int = 0
    """How many times :meth:`notify` ran: read it before looking, then ``wait(since=...)``."""
    _waiters: Waiters = field(default_factory=set)
    """Coroutines in :meth:`wait_async` (run watches on the server's event loop)."""

    def __post_init__(self) -> None:
        self.tasks.follow(self.db)
        self.log_head.follow(self.db.sessions)
        self.credentials.follow(self.db)

    @classmethod
    def open(cls, database_url: str, data_dir: Path, limits: Limits | None = None) -> Hub:
        """Open (and migrate) the database and the blob store under ``data_dir``."""
        db = Database(database_url)
        db.migrate()
        return cls(db=db, blobs=BlobStore(Path(data_dir) / "blobs"), limits=limits or Limits())

    def notify(self) -> None:
        """Wake the scheduler and parked calls: something they may be waiting for changed."""
        with self.changed:
            self.generation += 1
            self.changed.notify_all()
            resolve_all(self._waiters)
        if self.closing.is_set():
            self.tasks.wake_all()
            self.relays.wake_all()

    def wait(self, timeout: float, since: int | None = None) -> None:
        """Sleep until :meth:`notify` or ``timeout`` seconds.

        With ``since`` (a :attr:`generation` read before the caller last looked), a change
        notified while it was looking ends the wait at once instead of being missed: the
        scheduler would otherwise close a round a tick late when the last update lands
        during a pass, and a watcher would show the end of a run a second late (issue 14).
        """
        with self.changed:
            if since is None or self.generation == since:
                self.changed.wait(timeout)

    async def wait_async(self, timeout: float, since: int) -> None:
        """:meth:`wait` for a coroutine: it parks on the event loop, not on a thread."""
        await park(self.changed, lambda: self._waiters, lambda: self.generation != since, timeout)


class Presence:
    """Sites' signs of life (``last_seen``, the sliding token expiry), written in batches.

    Every authenticated call and every parked poll is a sign of life. Written one commit
    each, they were most of the coordinator's commits at 1,000 sites (issue 14); here
    they are held in memory and written at most once a ``interval`` in one transaction
    for all sites, by whichever call comes next. What the database says is at most that
    much older than what the coordinator saw, which offline detection (30 s by default)
    does not notice; nothing an acknowledgement depends on is buffered here.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, float]] = {}
        self._flushed = 0.0

    def seen(self, node_id: str, when: float, token_expires_at: float | None = None) -> None:
        """Record a sign of life (and the sliding token expiry) for the next batched write."""
        row: dict[str, float] = {"last_seen": when}
        if token_expires_at is not None:
            row["token_expires_at"] = token_expires_at
        with self._lock:
            self._pending.setdefault(node_id, {}).update(row)

    def due(self) -> bool:
        """True when :meth:`flush` would write: something is pending and ``interval`` passed."""
        with self._lock:
            return bool(self._pending) and time.monotonic() - self._flushed >= self.interval

    def flush(self, db: Database, force: bool = False) -> int:
        """Write what is pending when ``interval`` has passed (or ``force``); rows written."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or (not force and now - self._flushed < self.interval):
                return 0
            pending, self._pending = self._pending, {}
            self._flushed = now
        rows = [{"id": node_id, **values} for node_id, values in pending.items()]
        # One statement per shape (with or without a token expiry): ORM bulk UPDATE by id.
        try:
            with db.transaction() as session:
                for keys in {tuple(sorted(row)) for row in rows}:
                    session.execute(
                        update(Node).execution_options(**{PRESENCE_ONLY: True}),
                        [r for r in rows if tuple(sorted(r)) == keys],
                    )
        except SQLAlchemyError:
            # Not the caller's failure: kept for the next flush (newer signs of life win).
            log.warning("writing %d sites' last_seen failed; will retry", len(rows), exc_info=True)
            with self._lock:
                for node_id, values in pending.items():
                    self._pending[node_id] = {**values, **self._pending.get(node_id, {})}
            return 0
        return len(rows)


_NODES_TOUCHED = "cohort_nodes_touched"
PRESENCE_ONLY = "cohort_presence_only"
"""Execution option of :class:`Presence`'s batched write: it changes no credential."""


@dataclass
class _Credential:
    node_id: str
    expires_at: float
    noted: float


class Credentials:
    """Nodes whose bearer token was found good, kept until any transaction touches a node.

    Authenticating every call was one query each (three or four per accepted update,
    issue 14). A node's credential is decided by its row (revocation, token expiry), and
    every change to a node row moves :attr:`epoch`: at flush (before it can commit), again
    after COMMIT or rollback, and for bulk UPDATE or DELETE statements on nodes. An entry
    is served only while the epoch it was read at is current, so a revocation (or a
    rotated key, or a re-join) is seen by the very next call, as when every call asked
    the database. Only good credentials are kept; an expiry that has passed by the
    entry's time is asked of the database again. Presence's batched ``last_seen`` write
    only pushes expiries later, so it does not move the epoch.

    A change this process cannot see (an operator's ``UPDATE nodes`` in psql, a second
    coordinator process on the same database, which deployment forbids but cannot always
    prevent) is seen after at most ``max_age_s``: no entry is served older than that.
    """

    def __init__(self, max_entries: int = 100_000, max_age_s: float = 2.0) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self.epoch = 0
        self._tokens: dict[str, tuple[int, _Credential, float]] = {}
        self._good: dict[str, tuple[int, float]] = {}

    def _fresh(self, epoch: int, read_at: float) -> bool:
        return epoch == self.epoch and time.monotonic() - read_at <= self.max_age_s

    def follow(self, db: Database) -> None:
        """Move the epoch whenever ``db``'s sessions touch a node row."""
        event.listen(db.sessions, "after_flush", self._flushed)
        event.listen(db.sessions, "after_commit", self._ended)
        event.listen(db.sessions, "after_soft_rollback", self._rolled_back)
        event.listen(db.sessions, "do_orm_execute", self._bulk)

    def _flushed(self, session: Session, _context: object) -> None:
        if any(isinstance(obj, Node) for obj in (*session.new, *session.dirty, *session.deleted)):
            session.info[_NODES_TOUCHED] = True
            self.invalidate()

    def _ended(self, session: Session) -> None:
        if session.info.pop(_NODES_TOUCHED, False):
            self.invalidate()

    def _rolled_back(self, session: Session, _previous: object) -> None:
        self._ended(session)

    def _bulk(self, state: ORMExecuteState) -> None:
        if not (state.is_update or state.is_delete) or state.execution_options.get(PRESENCE_ONLY):
            return
        mapper = state.bind_mapper
        if mapper is None or mapper.class_ is Node:
            state.session.info[_NODES_TOUCHED] = True
            self.invalidate()

    def invalidate(self) -> None:
        """Forget every cached credential (a node row may have changed)."""
        with self._lock:
            self.epoch += 1
            self._tokens.clear()
            self._good.clear()

    def mark(self) -> int:
        """Read before asking the database; hand to :meth:`remember` with what it said."""
        with self._lock:
            return self.epoch

    def remember(self, epoch: int, token_hash: str, node: Node, now: float) -> None:
        """Keep a good credential read at ``epoch`` (dropped if a node changed since)."""
        with self._lock:
            if epoch != self.epoch:
                return
            if len(self._tokens) >= self.max_entries:
                self._tokens.clear()
                self._good.clear()
            read_at = time.monotonic()
            self._tokens[token_hash] = (
                epoch,
                _Credential(node.id, float(node.token_expires_at or 0.0), float(node.last_seen)),
                read_at,
            )
            self._good[node.id] = (epoch, read_at)

    def remember_good(self, epoch: int, node: Node) -> None:
        """Keep that ``node``, read at ``epoch``, was not revoked (dropped if a node changed)."""
        if node.revoked_at:
            return
        with self._lock:
            if epoch == self.epoch:
                self._good[node.id] = (epoch, time.monotonic())

    def lookup(self, token_hash: str, now: float) -> _Credential | None:
        """The good credential held for ``token_hash``, or None: ask the database."""
        with self._lock:
            held = self._tokens.get(token_hash)
            if held is None or not self._fresh(held[0], held[2]):
                return None
            credential = held[1]
            if credential.expires_at and now > credential.expires_at:
                return None
            return credential

    def is_good(self, node_id: str) -> bool:
        """True when ``node_id``'s credential was found good and no node changed since."""
        with self._lock:
            held = self._good.get(node_id)
            return held is not None and self._fresh(*held)
