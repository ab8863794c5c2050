"""What every part of the coordinator shares: database, blob store, one lock, one wake-up signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import event, inspect, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import ORMExecuteState, Session

from coordinator.auditlog import LogHead
from coordinator.blobs import BlobStore
from coordinator.db import Database
from coordinator.queries import LIVE
from coordinator.schema import Node, Run, Task

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
    presence: Presence = field(default_factory=lambda: Presence())
    log_head: LogHead = field(default_factory=LogHead)
    credentials: Credentials = field(default_factory=lambda: Credentials())
    generation: int = 0
    """How many times :meth:`notify` ran: read it before looking, then ``wait(since=...)``."""
    _waiters: set[asyncio.Future[None]] = field(default_factory=set)
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
            _resolve_all(self._waiters)
        if self.closing.is_set():
            self.tasks.wake_all()

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
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self.changed:
            if self.generation != since:
                return
            self._waiters.add(future)
        try:
            await asyncio.wait((future,), timeout=timeout)
        finally:
            with self.changed:
                self._waiters.discard(future)
            future.cancel()


_PENDING = "cohort_task_watch"


class TaskWatch:
    """Which nodes' tasks may have changed since a long poll last looked, without a query.

    A parked PullTask used to wake on every change anywhere (each accepted update, each
    scheduler move) and query the database under the hub lock: with N sites parked that
    is N queries per update, the coordinator's main cost at 100 and more sites (issue 14).
    Here every committed transaction that touched a node's Task rows bumps that node's
    version, and one that added a Run or changed a Run's state (the state decides which
    tasks are live; a run's other columns do not, and its new rounds come with Task rows)
    bumps the version of all; a poll queries again only when its node's version moved,
    and is woken only then. Versions are bumped after COMMIT, and a poll reads its mark before
    its query, so a change is never missed: it either is in the poll's query or moves
    the mark it waits on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._all = 0
        self._nodes: dict[str, int] = {}
        # Parked polls: coroutines on the server's event loop, no thread each (issue 14).
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._idle: dict[str, tuple[int, int]] = {}
        # node -> (mark, task id): at that mark the node's one deliverable task was handed out.
        self._sole: dict[str, tuple[tuple[int, int], str]] = {}

    def follow(self, db: Database) -> None:
        """Listen to ``db``'s sessions: collect at flush, publish at commit."""
        factory = db.sessions
        event.listen(factory, "after_flush", self._collect)
        event.listen(factory, "after_commit", self._publish)
        event.listen(factory, "after_soft_rollback", self._forget)

    @staticmethod
    def _collect(session: Session, _context: object) -> None:
        pending = session.info.setdefault(_PENDING, [set(), False, set()])
        for obj in (*session.new, *session.dirty):
            # A task that stopped being live cannot be handed out, so a poll need not
            # look again when one finishes (issue 14: each accepted update woke one). A
            # new row counts whatever its state reads: column defaults land at INSERT.
            if isinstance(obj, Task) and (obj in session.new or obj.state in LIVE):
                pending[0].add(obj.node_id)
            elif isinstance(obj, Task):
                pending[2].add((obj.node_id, obj.id))
            elif isinstance(obj, Run) and (
                obj in session.new or inspect(obj).attrs.state.history.has_changes()
            ):
                # Every parked poll wakes on this: a round's counters or a run's aggregate
                # do not change which tasks are live (issue 14: each woke N polls).
                pending[1] = True

    def _publish(self, session: Session) -> None:
        nodes, every, ended = session.info.pop(_PENDING, (set(), False, set()))
        if nodes or every:
            self.bump(nodes, every=every)
        if ended:
            self._ended(ended)

    def _ended(self, ended: set[tuple[str, str]]) -> None:
        """Note tasks that left the live states.

        A node whose one deliverable task that was (:meth:`handed_out_sole`) is then known
        idle at the mark of the query that found it, with no query of its own.
        """
        with self._lock:
            for node_id, task_id in ended:
                held = self._sole.get(node_id)
                if held is None or held[1] != task_id:
                    continue
                del self._sole[node_id]
                # At the query's mark: a poll reading a later one (a task or run moved
                # since) still asks the database.
                self._idle[node_id] = held[0]

    @staticmethod
    def _forget(session: Session, _previous: object) -> None:
        session.info.pop(_PENDING, None)

    def bump(self, nodes: set[str], every: bool = False) -> None:
        """Mark ``nodes``' tasks (or every node's) as moved and wake their parked polls."""
        with self._lock:
            if every:
                self._all += 1
            for node in nodes:
                self._nodes[node] = self._nodes.get(node, 0) + 1
            for node, futures in self._waiting.items():
                if every or node in nodes:
                    _resolve_all(futures)

    def wake_all(self) -> None:
        """Wake every parked poll (shutdown)."""
        with self._lock:
            for futures in self._waiting.values():
                _resolve_all(futures)

    def mark(self, node_id: str) -> tuple[int, int]:
        """Read before querying; hand to ``wait`` after the query found nothing."""
        with self._lock:
            return self._all, self._nodes.get(node_id, 0)

    def found_nothing(self, node_id: str, mark: tuple[int, int]) -> None:
        """Note that a query after ``mark`` found no live task for the node.

        A later poll at the same mark need not ask again: every committed change that
        could give the node a task (a Task row of its, or any Run) moves the mark, and
        time only ever takes tasks away (their deadlines pass). A site's next poll after
        an empty one (its long poll ran out) then costs no query (issue 14).
        """
        with self._lock:
            if len(self._idle) >= 100_000:
                self._idle.clear()
            self._idle[node_id] = mark

    def handed_out_sole(self, node_id: str, mark: tuple[int, int], task_id: str) -> None:
        """Note that a query after ``mark`` found ``task_id`` as the node's one deliverable task.

        When that task then leaves the live states (the site's update, refusal or key
        bundle is accepted) and the mark has not moved, the node has no deliverable task:
        nothing that could give it one has committed since the query (it would have moved
        the mark), and time only takes tasks away. Its next poll then parks without the
        empty query it used to make after every submit (issue 14).
        """
        with self._lock:
            if len(self._sole) >= 100_000:
                self._sole.clear()
            self._sole[node_id] = (mark, task_id)

    def known_idle(self, node_id: str, mark: tuple[int, int]) -> bool:
        """True when a query at ``mark`` already found the node without a live task."""
        with self._lock:
            return self._idle.get(node_id) == mark

    async def wait(self, node_id: str, mark: tuple[int, int], timeout: float) -> bool:
        """Park until the node's tasks may have changed since ``mark``; True if they may.

        A parked poll is a future on the caller's event loop, resolved (thread-safely)
        by :meth:`bump`: at 1,000 sites the coordinator holds 1,000 futures, not 1,000
        threads (issue 14).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if (self._all, self._nodes.get(node_id, 0)) != mark:
                return True
            future: asyncio.Future[None] = loop.create_future()
            self._waiting.setdefault(node_id, set()).add(future)
        try:
            await asyncio.wait((future,), timeout=timeout)
        finally:
            with self._lock:
                waiters = self._waiting.get(node_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiting[node_id]
            future.cancel()
        with self._lock:
            return (self._all, self._nodes.get(node_id, 0)) != mark

    def parked(self, node_id: str | None = None) -> int:
        """How many polls are parked now (the node's, or all)."""
        with self._lock:
            if node_id is not None:
                return len(self._waiting.get(node_id, ()))
            return sum(len(futures) for futures in self._waiting.values())


def _resolve_all(futures: set[asyncio.Future[None]]) -> None:
    """Resolve parked polls' futures from any thread (each on its own loop)."""
    for future in futures:
        # A closed loop raises RuntimeError: its poll is gone with it.
        with contextlib.suppress(RuntimeError):
            future.get_loop().call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
