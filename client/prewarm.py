"""Start-up work a site does while it waits for a task, so its first round is not the slow one.

Measured on the demo workload (bench/round.py): the first torch optimiser a process makes
imports ``torch._dynamo`` (2.5 s of CPU on this machine), and the first secure round starts
the Paillier worker processes. Both are one-time costs of the process, not of the round;
paying them while the site waits for a quorum, a key or its first task takes them off the
round's critical path. Nothing here touches a model, data or key: only imports and idle
worker processes.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_started: set[str] = set()


def _once(name: str, work: object) -> None:
    """Run ``work`` in a daemon thread, at most once per process under ``name``."""
    with _lock:
        if name in _started:
            return
        _started.add(name)

    def run() -> None:
        try:
            work()  # type: ignore[operator]
        except Exception:  # a failed warm-up only means the first round pays it
            log.debug("pre-warm %s failed", name, exc_info=True)

    threading.Thread(target=run, name=f"prewarm-{name}", daemon=True).start()


def training_imports() -> None:
    """Make and step one torch optimiser (its first construction imports torch._dynamo)."""
    import torch

    # An optimiser's first construction and step import torch._dynamo lazily.
    weight = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.AdamW([weight], lr=0.1)
    weight.sum().backward()
    optimiser.step()


def warm_training() -> None:
    """Import what the first local training step needs (once per process, in the background)."""
    _once("training", training_imports)


def warm_crypto(workers: int | None) -> None:
    """Start the shared Paillier worker processes before the first decryption needs them."""

    def start() -> None:
        from crypto._parallel import shared_pool, worker_count

        count = worker_count(workers)
        pool = shared_pool(count)
        for future in [pool.submit(int, 0) for _ in range(count)]:
            future.result()

    _once(f"crypto-{workers}", start)


def warm_forkserver() -> None:
    """Start multiprocessing's fork server, from which every Paillier worker is forked.

    Its start imports the program's main module (preloaded so that workers need not), which
    in a process that imports torch at the top costs seconds: paid here, while the site
    waits, rather than inside the first secure round's encryption.
    """

    def start() -> None:
        import multiprocessing
        from multiprocessing import forkserver

        if "forkserver" in multiprocessing.get_all_start_methods():
            forkserver.ensure_running()

    _once("forkserver", start)
