"""Parked long polls: which nodes' tasks may have moved, and futures that wake on it.

A parked PullTask or run watch is a future on the server's event loop, not a thread
(issue 14). :func:`park` is the one way such a call waits; :class:`TaskWatch` says, per
node and without a query, whether a poll's look at the database may be out of date.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from coordinator.errors import InvalidArgument
from coordinator.queries import LIVE
from coordinator.schema import Run, Task

if TYPE_CHECKING:
    from coordinator.db import Database

Waiters = set[asyncio.Future[None]]
Key = TypeVar("Key")


def poll_seconds(wait_seconds: float, cap: float) -> float:
    """How long a long poll that asked for ``wait_seconds`` may park: 0 to ``cap``.

    Raises
    ------
    InvalidArgument
        ``wait_seconds`` is NaN (it would compare false with every bound).
    """
    if math.isnan(wait_seconds):
        raise InvalidArgument("wait_seconds must be a number of seconds, not NaN")
    return min(max(wait_seconds, 0.0), cap)


async def park(
    lock: threading.Lock | threading.Condition,
    waiters: Callable[[], Waiters],
    moved: Callable[[], bool],
    timeout: float,
) -> None:
    """Wait on the running loop until :func:`resolve_all` wakes ``waiters()`` or ``timeout``.

    ``moved`` is checked under ``lock`` before parking, so a change made while the caller
    looked ends the wait at once instead of being missed; the set is asked for under the
    same lock (an owner may drop an empty set between calls). Whatever ends the wait,
    the future leaves its set.
    """
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with lock:
        if moved():
            return
        parked = waiters()
        parked.add(future)
    try:
        await asyncio.wait((future,), timeout=timeout)
    finally:
        with lock:
            parked.discard(future)
        future.cancel()


async def park_at(
    lock: threading.Lock,
    waiting: dict[Key, Waiters],
    key: Key,
    moved: Callable[[], bool],
    timeout: float,
) -> None:
    """:func:`park` in ``waiting[key]``, a set made on demand and dropped once empty."""
    try:
        await park(lock, lambda: waiting.setdefault(key, set()), moved, timeout)
    finally:
        with lock:
            if not waiting.get(key, True):
                del waiting[key]


def resolve_all(futures: Waiters) -> None:
    """Resolve parked calls' futures from any thread (each on its own loop)."""
    for future in futures:
        # A closed loop raises RuntimeError: its call is gone with it.
        with contextlib.suppress(RuntimeError):
            future.get_loop().call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
        self._waiting: dict[str, Waiters] = {}
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
                    resolve_all(futures)

    def wake_all(self) -> None:
        """Wake every parked poll (shutdown)."""
        with self._lock:
            for futures in self._waiting.values():
                resolve_all(futures)

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

        def moved() -> bool:
            return (self._all, self._nodes.get(node_id, 0)) != mark

        await park_at(self._lock, self._waiting, node_id, moved, timeout)
        with self._lock:
            return moved()

    def parked(self, node_id: str | None = None) -> int:
        """How many polls are parked now (the node's, or all)."""
        with self._lock:
            if node_id is not None:
                return len(self._waiting.get(node_id, ()))
            return sum(len(futures) for futures in self._waiting.values())


RoundKey = tuple[str, int, str]
"""A threshold round's relay: (run id, round number, "partials" or "echoes")."""


class RoundRelays:
    """Which threshold rounds got a new partial (or echo), and the polls parked on each.

    FetchPartials and FetchEchoes used to wake on every hub notify (a join, an update of
    another run, a scheduler step) and each re-read every sealed partial of its round;
    here a round's version moves only when a partial or echo of it is stored (or at
    stop, or when a site is revoked: :meth:`wake_all`), and only that round's polls wake.
    A poll reads its mark before it reads the database, so a partial stored meanwhile
    either is in its read or moves the mark (:func:`park`).
    """

    def __init__(self, max_rounds: int = 100_000) -> None:
        self.max_rounds = max_rounds
        self._lock = threading.Lock()
        self._epoch = 0  # moves when the table is cleared, so no mark read before matches
        self._versions: dict[RoundKey, int] = {}
        self._waiting: dict[RoundKey, Waiters] = {}

    def mark(self, key: RoundKey) -> tuple[int, int]:
        """Read before the poll's read; hand to :meth:`wait` when it found too little."""
        with self._lock:
            return self._epoch, self._versions.get(key, 0)

    def bump(self, key: RoundKey) -> None:
        """A partial or echo of ``key`` was committed: wake the polls parked on it."""
        with self._lock:
            if key not in self._versions and len(self._versions) >= self.max_rounds:
                self._versions.clear()
                self._epoch += 1
            self._versions[key] = self._versions.get(key, 0) + 1
            resolve_all(self._waiting.get(key, set()))

    def wake_all(self) -> None:
        """Wake every parked poll (stop, revocation): each reads again and decides.

        Moves every mark too, so a poll reading while this happens does not park on.
        """
        with self._lock:
            self._epoch += 1
            for futures in self._waiting.values():
                resolve_all(futures)

    async def wait(self, key: RoundKey, mark: tuple[int, int], timeout: float) -> None:
        """Park until ``key`` moves past ``mark``, :meth:`wake_all`, or ``timeout``."""

        def moved() -> bool:
            return (self._epoch, self._versions.get(key, 0)) != mark

        await park_at(self._lock, self._waiting, key, moved, timeout)

    def parked(self) -> int:
        """How many relay polls are parked now."""
        with self._lock:
            return sum(len(futures) for futures in self._waiting.values())
