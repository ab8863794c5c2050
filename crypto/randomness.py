"""Background precomputation of Paillier obfuscators, so encryption is nearly free when needed."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from phe import PaillierPublicKey

from crypto._parallel import process_pool, worker_count
from crypto.obfuscators import fresh_pair_chunk

__all__ = ["RandomnessPool"]

_MAX_CHUNK = 64
"""Small chunks let a waiting :meth:`RandomnessPool.take` return soon after it is covered."""


class RandomnessPool:
    """Obfuscators ``r^n mod n²`` computed in worker processes while the model trains.

    A Paillier encryption is ``(1 + m·n) · r^n mod n²``; ``r^n`` does not depend on the
    message, so it can be computed ahead of time. Each is a DJN fixed-base power
    ``h_s^a`` (crypto/fixed_base.py): a worker builds the key's table on its first chunk,
    then each value costs a few hundred multiplications, for key and share holders alike.
    :meth:`start` queues work on a process pool whose management thread collects the
    results in the background; :meth:`take` then hands them out. Each value is removed
    when taken, so no obfuscator is ever used twice (reuse would let anyone divide two
    ciphertexts and learn the difference of the plaintexts). Values are kept only in this
    process's memory and dropped by :meth:`close`.

    Parameters
    ----------
    public_key
        Key the obfuscators are for.
    workers
        Number of worker processes; ``None`` for every core.

    Examples
    --------
    >>> with RandomnessPool(pk) as pool:       # doctest: +SKIP
    ...     pool.start(codec.num_plaintexts(n_values))
    ...     train()                                 # obfuscators are computed meanwhile
    ...     cts = encrypt_packed(pk, plaintexts, pool=pool)
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        workers: int | None = None,
    ) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")
        self._public_key = public_key
        self._workers = worker_count(workers)
        self._condition = threading.Condition()
        self._ready: deque[tuple[int, int]] = deque()  # (a, h_s^a = r^n mod n²)
        self._outstanding = 0  # requested from the workers, not yet ready
        self._reserved = 0  # promised to takers that are waiting
        self._futures: set[Future[list[tuple[int, int]]]] = set()
        self._executor: ProcessPoolExecutor | None = None
        self._error: BaseException | None = None
        self._closed = False

    @property
    def public_key(self) -> PaillierPublicKey:
        """The key the obfuscators are for."""
        return self._public_key

    @property
    def available(self) -> int:
        """Number of obfuscators ready to take now."""
        with self._condition:
            return len(self._ready)

    def start(self, count: int) -> None:
        """Queue ``count`` more obfuscators for background computation; returns at once."""
        _require_count(count)
        with self._condition:
            self._raise_if_unusable()
            self._request(count)

    def take(self, k: int) -> list[int]:
        """Remove and return ``k`` obfuscators (see :meth:`take_pairs`)."""
        return [obfuscator for _, obfuscator in self.take_pairs(k)]

    def take_pairs(self, k: int) -> list[tuple[int, int]]:
        """Remove and return ``k`` pairs ``(a, r^n mod n²)``, ``r = h^a mod n``.

        ``a`` is kept for the proof of plaintext knowledge (crypto.plaintext_proof); it is
        as secret as the plaintext and is dropped with the pair.

        If fewer are ready, the shortfall not already queued is queued now and the call
        waits for it: it then costs what synchronous computation on ``workers`` cores costs.

        Raises
        ------
        RuntimeError
            If the pool is closed (also while waiting) or a worker failed.
        """
        _require_count(k)
        with self._condition:
            self._raise_if_unusable()
            spare = len(self._ready) + self._outstanding - self._reserved
            if spare < k:
                self._request(k - spare)
            self._reserved += k
            try:
                while len(self._ready) < k:
                    self._raise_if_unusable()
                    self._condition.wait()
                return [self._ready.popleft() for _ in range(k)]
            finally:
                self._reserved -= k

    def wait_available(self, count: int, timeout: float | None = None) -> bool:
        """Block until at least ``count`` obfuscators are ready; ``False`` on timeout.

        Raises
        ------
        ValueError
            If fewer than ``count`` are ready or queued (the wait could never end).
        RuntimeError
            If the pool is closed (also while waiting) or a worker failed.
        """
        _require_count(count)
        with self._condition:
            self._raise_if_unusable()
            if len(self._ready) + self._outstanding - self._reserved < count:
                raise ValueError(f"only {len(self._ready) + self._outstanding} are ready or queued")

            def ready() -> bool:
                self._raise_if_unusable()
                return len(self._ready) >= count

            return self._condition.wait_for(ready, timeout)

    def close(self) -> None:
        """Stop the workers, cancel queued work and forget every unused obfuscator."""
        with self._condition:
            self._closed = True
            self._ready.clear()
            executor, self._executor = self._executor, None
            for future in list(self._futures):
                future.cancel()
            self._condition.notify_all()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RandomnessPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self, count: int) -> None:
        # Called with the condition held.
        if count == 0:
            return
        if self._executor is None:
            self._executor = process_pool(self._workers)
        chunk = max(1, min(_MAX_CHUNK, -(-count // (4 * self._workers))))
        remaining = count
        while remaining:
            size = min(chunk, remaining)
            future = self._executor.submit(fresh_pair_chunk, self._public_key.n, size)
            self._futures.add(future)
            self._outstanding += size
            remaining -= size
            future.add_done_callback(self._collect(size))

    def _collect(self, size: int) -> Callable[[Future[list[tuple[int, int]]]], None]:
        def on_done(future: Future[list[tuple[int, int]]]) -> None:
            with self._condition:
                self._futures.discard(future)
                self._outstanding -= size
                if self._closed or future.cancelled():
                    return
                error = future.exception()
                if error is not None:
                    self._error = error
                else:
                    self._ready.extend(future.result())
                self._condition.notify_all()

        return on_done

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise RuntimeError("RandomnessPool is closed")
        if self._error is not None:
            raise RuntimeError("precomputing obfuscators failed") from self._error


def _require_count(count: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"count must be an int, got {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
