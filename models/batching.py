"""Run one predictor for many callers: the :class:`DynamicBatcher`.

It gathers concurrent requests into one model call: up to ``max_batch_size`` rows, waiting
at most ``max_wait_ms`` after the first request for others to join. One worker thread runs
the model (torch releases the GIL inside its kernels, so the event loop stays responsive);
the queue is bounded, so an overloaded service refuses at once (:class:`QueueFull`, HTTP
503) instead of letting requests wait forever, and each request has a deadline
(:class:`RequestTimeout`). The model it calls is any function of named arrays, in practice
a :class:`models.predictor.Predictor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.predictor import Inputs, concat_inputs, rows_of

SWEEP_S = 0.05  # how often an event loop checks its requests' deadlines


class QueueFull(RuntimeError):
    """The batcher's queue is full: the caller should retry later (HTTP 503)."""


class RequestTimeout(TimeoutError):
    """A request was not answered within its deadline (HTTP 504)."""


@dataclass
class _Request:
    inputs: Inputs
    rows: int
    deadline: float
    future: Future[np.ndarray] | None = None  # a thread waits on it (predict_sync, submit)
    loop: asyncio.AbstractEventLoop | None = None  # or a coroutine on this loop waits on
    waiter: asyncio.Future[np.ndarray] | None = None  # this one (predict_async)

    def abandoned(self) -> bool:
        """True when the caller gave up; otherwise the request is marked running."""
        if self.future is not None:
            return not self.future.set_running_or_notify_cancel()
        return self.waiter is not None and self.waiter.done()  # cancelled or timed out


Outcome = tuple[_Request, np.ndarray | None, BaseException | None]


def _settle(items: list[tuple[asyncio.Future[np.ndarray], Any, BaseException | None]]) -> None:
    # On the event loop: one call settles a whole batch's waiters (one wake-up, not N).
    for waiter, value, error in items:
        if waiter.done():
            continue  # timed out meanwhile
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(value)


def deliver(outcomes: list[Outcome]) -> None:
    """Hand each request its answer or error, in its caller's thread or event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for request, value, error in outcomes:
        if request.future is not None:
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(value)  # type: ignore[arg-type]
        elif request.loop is not None and request.waiter is not None:
            by_loop.setdefault(request.loop, []).append((request.waiter, value, error))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed
            loop.call_soon_threadsafe(_settle, items)


@dataclass
class BatcherStats:
    """What the worker did: batches run and how many rows each held."""

    batches: int = 0
    requests: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    expired: int = 0

    @property
    def max_batch_seen(self) -> int:
        return max(self.batch_sizes, default=0)


class DynamicBatcher:
    """Gather concurrent requests into batches for one model worker.

    Hand-off, built for tail latency under many callers: an event loop does not wake the
    worker once per request. Requests submitted on a loop collect in that loop's outbox
    and go to the worker as one list by a ``call_soon`` callback, which runs after every
    callback already ready: the callers the last batch just answered (one ``_settle``
    wakes them all) resubmit first, so their requests travel together. The worker takes
    every list already queued without waiting, waits ``max_wait_ms`` for more only while
    it holds fewer than ``max_batch_size`` rows (never when the queue already fills a
    batch), and answers a whole batch with one callback per loop. Waiting callers are
    counted at submission, so the bound (:class:`QueueFull`) holds whatever the hand-off.

    Parameters
    ----------
    predict
        Named arrays of ``n`` rows in, ``[n, classes]`` out; called on the worker thread only.
    max_batch_size
        Most rows per model call (a single larger request still runs, alone).
    max_wait_ms
        How long the worker waits after a batch's first request for more to join; it
        waits only when the previous batch held more than one row (callers are
        concurrent), so a lone caller never pays it.
    max_queue
        Requests that may wait; one more is refused with :class:`QueueFull`.
    timeout_s
        Deadline of each request from submission; past it the caller gets
        :class:`RequestTimeout` and the worker skips the request.
    on_batch
        Called after each model call with (rows, seconds): metrics.
    """

    def __init__(
        self,
        predict: Callable[[Inputs], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        timeout_s: float = 10.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0 or timeout_s <= 0 or max_queue < 1:
            raise ValueError("max_wait_ms must be >= 0, timeout_s > 0 and max_queue >= 1")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1e3
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.stats = BatcherStats()
        # Lists of requests; None asks the worker to stop. Unbounded: _waiting is the bound.
        self._queue: queue.SimpleQueue[list[_Request] | None] = queue.SimpleQueue()
        self._outbox: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        self._deadlines: dict[
            asyncio.AbstractEventLoop, deque[tuple[float, asyncio.Future[np.ndarray]]]
        ] = {}
        self._sweep_every = min(SWEEP_S, timeout_s / 4)
        self._waiting = 0
        self._count = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_rows = 0

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet taken by the worker."""
        return self._waiting

    def start(self) -> DynamicBatcher:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="cohort-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; requests still queued are failed, never left waiting."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                items = self._queue.get_nowait()
            except queue.Empty:
                break
            self._refuse(items or [], "the service is shutting down")

    def _refuse(self, requests: list[_Request], why: str) -> None:
        self._taken(len(requests))
        deliver([(r, None, QueueFull(why)) for r in requests if not r.abandoned()])

    def submit(self, inputs: Inputs) -> Future[np.ndarray]:
        """Queue one request (any number of rows); raise :class:`QueueFull` when full."""
        future: Future[np.ndarray] = Future()
        request = _Request(inputs, rows_of(inputs), self._deadline(), future=future)
        self._admit()
        self._queue.put([request])
        return future

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    def _admit(self) -> None:
        if self._thread is None or self._stopping.is_set():
            raise QueueFull("the batcher is not running")
        with self._count:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting: retry shortly")
            self._waiting += 1

    def _taken(self, count: int) -> None:
        with self._count:
            self._waiting -= count

    async def predict_async(self, inputs: Inputs) -> np.ndarray:
        """Submit and await the answer; past ``timeout_s`` it raises :class:`RequestTimeout`.

        The deadline is kept by one sweeper per loop (:meth:`_sweep`), not a timer per
        request: requests share one timeout, so deadlines are in submission order and a
        deque of them is checked from the front (to within ``SWEEP_S``).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[np.ndarray] = loop.create_future()
        request = _Request(inputs, rows_of(inputs), self._deadline(), loop=loop, waiter=waiter)
        self._admit()
        outbox = self._outbox.get(loop)
        if outbox is None:
            outbox = self._outbox[loop] = []
            loop.call_soon(self._flush, loop)
        outbox.append(request)
        deadlines = self._deadlines.get(loop)
        if deadlines is None:
            deadlines = self._deadlines[loop] = deque()
            loop.call_later(self._sweep_every, self._sweep, loop)
        deadlines.append((request.deadline, waiter))
        return await waiter

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # On the loop: fail the waiters whose deadline passed; drop the answered ones.
        deadlines = self._deadlines[loop]
        now = time.monotonic()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, waiter = deadlines.popleft()
            if not waiter.done():
                waiter.set_exception(RequestTimeout(f"no answer within {self.timeout_s:g} s"))
        if deadlines:
            loop.call_later(self._sweep_every, self._sweep, loop)
        else:
            del self._deadlines[loop]

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # On the loop, after the callbacks that were ready: one hand-off for all of them.
        requests = self._outbox.pop(loop, [])
        if self._stopping.is_set():
            self._refuse(requests, "the service is shutting down")
        elif requests:
            self._queue.put(requests)

    def predict_sync(self, inputs: Inputs) -> np.ndarray:
        future = self.submit(inputs)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise RequestTimeout(f"no answer within {self.timeout_s:g} s") from None

    def _pull(self, pending: deque[_Request], timeout: float) -> int:
        """Move queued requests to ``pending``: every list already there, else wait
        ``timeout`` s for one. Returns the rows moved; a stop request sets ``_stopping``."""
        moved = 0
        try:
            items = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                if items is None:
                    self._stopping.set()
                    return moved
                self._taken(len(items))
                pending.extend(items)
                moved += sum(r.rows for r in items)
                items = self._queue.get_nowait()
        except queue.Empty:
            return moved

    def _run(self) -> None:
        pending: deque[_Request] = deque()
        rows = 0  # in pending
        while not self._stopping.is_set():
            if not pending:
                rows += self._pull(pending, 0.1)
                if not pending:
                    continue
            rows += self._pull(pending, 0.0)
            # Wait for company only when the last batch had some and this one is not full:
            # a lone caller is answered at once, and a queue that fills a batch never waits.
            if self._last_rows > 1 and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while rows < self.max_batch_size and not self._stopping.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    rows += self._pull(pending, remaining)
            batch = [pending.popleft()]
            taken = batch[0].rows
            while pending and taken + pending[0].rows <= self.max_batch_size:
                request = pending.popleft()
                batch.append(request)
                taken += request.rows
            rows -= taken
            self._last_rows = taken
            self._execute(batch)
        leftover = [r for r in pending if not r.abandoned()]
        deliver([(r, None, QueueFull("the service is shutting down")) for r in leftover])

    def _execute(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        live: list[_Request] = []
        outcomes: list[Outcome] = []
        for request in batch:
            # A caller that gave up (cancelled) or whose deadline passed is not scored.
            if request.abandoned():
                self.stats.expired += 1
            elif request.deadline < now:
                self.stats.expired += 1
                outcomes.append((request, None, RequestTimeout("the request expired in the queue")))
            else:
                live.append(request)
        if live:
            started = time.perf_counter()
            outcomes += self._score(live)
            self._record(live, started)
        deliver(outcomes)

    def _score(self, live: list[_Request]) -> list[Outcome]:
        try:
            out = self.predict(concat_inputs([r.inputs for r in live]))
        except Exception:
            # One malformed request must not fail its neighbours: score each alone.
            alone: list[Outcome] = []
            for request in live:
                try:
                    alone.append((request, self.predict(request.inputs), None))
                except Exception as exc:
                    alone.append((request, None, exc))
            return alone
        outcomes: list[Outcome] = []
        offset = 0
        for request in live:
            outcomes.append((request, out[offset : offset + request.rows], None))
            offset += request.rows
        return outcomes

    def _record(self, live: list[_Request], started: float) -> None:
        rows = sum(r.rows for r in live)
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.batch_sizes[rows] += 1
        if self.on_batch is not None:
            self.on_batch(rows, time.perf_counter() - started)
