"""Process pools for the modular exponentiations that dominate Paillier's cost."""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import ParamSpec, TypeVar

import gmpy2

__all__ = [
    "process_pool",
    "releases_gil",
    "shared_pool",
    "shutdown_shared_pools",
    "split_evenly",
    "worker_count",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


def releases_gil(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` with gmpy2 releasing the GIL inside its big-number operations.

    gmpy2 holds the GIL through a ``powmod`` unless the calling thread's context allows
    otherwise (``allow_release_gil``, gmpy2 ≥ 2.1; contexts are per thread). Proof checks,
    CRT decryption and combining run in callers' threads: a coordinator checking an
    update's proof (tens of ms) blocked every other RPC thread, and sites in one process
    checked their aggregates one at a time. Measured here: two threads of 4,096-bit
    powmods took 1.45 s holding the GIL and 0.73 s releasing it (one alone: 0.69 s).
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        # A copy of the caller's context, so precision and traps stay as they were.
        context = gmpy2.get_context().copy()
        context.allow_release_gil = True
        with context:
            return func(*args, **kwargs)

    return wrapper


_shared_lock = threading.Lock()
_shared: dict[tuple[int, int], ProcessPoolExecutor] = {}


def worker_count(workers: int | None) -> int:
    """Resolve ``workers``: ``None`` means every core this process may run on.

    Raises
    ------
    TypeError
        If ``workers`` is neither ``None`` nor an int.
    ValueError
        If ``workers`` is below 1.
    """
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int or None, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Return a pool of ``workers`` processes started by a fork server (or spawned).

    Plain ``fork`` would copy a parent that runs gRPC and torch threads, which can deadlock
    the child; a fork server forks from a clean, single-threaded process instead.
    """
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def shared_pool(workers: int) -> ProcessPoolExecutor:
    """Return this process's long-lived pool of ``workers`` processes, creating it once.

    Starting worker processes that import numpy and gmpy2 costs a few tenths of a second,
    as much as encrypting a small update; keeping them between calls (and between rounds)
    pays it once. Idle workers cost nothing but memory and exit with the interpreter.
    """
    key = (os.getpid(), workers)  # a forked child must not use its parent's pool
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or getattr(pool, "_broken", False):
            pool = _shared[key] = process_pool(workers)
        return pool


def shutdown_shared_pools() -> None:
    """Stop this process's shared pools' workers (the interpreter does this at exit).

    Call it before ``os._exit``, which skips that: orphaned workers would otherwise live
    on, holding the parent's standard streams open.
    """
    with _shared_lock:
        pools = list(_shared.values())
        _shared.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def split_evenly(count: int, parts: int) -> list[int]:
    """Split ``count`` items into at most ``parts`` non-empty chunk sizes differing by <= 1."""
    parts = max(1, min(parts, count))
    base, extra = divmod(count, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base or i < extra]


_MIN_PER_WORKER = 4
"""Below this many items per core, a process hop costs more than it saves."""


def map_in_chunks(
    chunk: Callable[[list[_T]], list[_R]], items: list[_T], workers: int | None
) -> list[_R]:
    """``chunk`` over ``items`` cut into about four pieces per core, results in order.

    ``chunk`` is a worker entry point (a module-level function, or a ``functools.partial``
    of one) taking a list and returning one result per item. Runs in this process when
    one core is asked for or the items are too few to be worth shipping.
    """
    workers = worker_count(workers)
    if workers == 1 or len(items) < _MIN_PER_WORKER * workers:
        return chunk(items)
    bounds, start = [], 0
    for size in split_evenly(len(items), 4 * workers):
        bounds.append((start, start + size))
        start += size
    executor = shared_pool(workers)
    futures = [executor.submit(chunk, items[a:b]) for a, b in bounds]
    return [result for future in futures for result in future.result()]
