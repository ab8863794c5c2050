"""Process pools for the modular exponentiations that dominate Paillier's cost."""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool", "shared_pool", "shutdown_shared_pools", "split_evenly", "worker_count"]

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
