"""Safe primes ``p = 2q + 1`` for threshold Paillier: sieved search and a background pool."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from functools import cache

import gmpy2
import numpy as np

from crypto._parallel import worker_count

__all__ = [
    "SafePrimePool",
    "is_safe_prime",
    "naive_safe_prime",
    "safe_prime",
    "small_primes",
]

MIN_SAFE_PRIME_BITS = 16
_SIEVE_BOUND = 1 << 16
"""Sieve by every prime below this: beyond it each doubling removes < 2 % more candidates."""

_MILLER_RABIN_ROUNDS = 32
"""Random-base rounds after the base-2 test: error below 4^-32 even for adversarial input."""


@cache
def small_primes(bound: int = _SIEVE_BOUND) -> np.ndarray:
    """Return the odd primes below ``bound`` (Eratosthenes), as int64."""
    if bound < 4:
        return np.zeros(0, dtype=np.int64)
    flags = np.ones(bound, dtype=bool)
    flags[:2] = False
    for r in range(2, int(bound**0.5) + 1):
        if flags[r]:
            flags[r * r :: r] = False
    primes = np.flatnonzero(flags).astype(np.int64)
    return primes[primes > 2]


def is_safe_prime(p: int) -> bool:
    """Whether ``p`` and ``(p - 1) / 2`` are both (probable) primes.

    ``q = (p - 1) / 2`` gets Miller–Rabin (with gmpy2's BPSW); ``p`` then needs only
    Pocklington's criterion with ``F = q > sqrt(p)`` and base 2:
    ``2^(p-1) ≡ 1 (mod p)`` and ``gcd(2^2 - 1, p) = 1`` prove ``p`` prime once ``q`` is.
    """
    if not isinstance(p, int) or isinstance(p, bool):
        raise TypeError(f"p must be an int, got {type(p).__name__}")
    if p in (5, 7):
        return True
    if p < 11 or p % 2 == 0:
        return False
    q = gmpy2.mpz(p - 1) // 2
    return bool(gmpy2.is_prime(q, _MILLER_RABIN_ROUNDS)) and _pocklington(gmpy2.mpz(p))


def _pocklington(p: gmpy2.mpz) -> bool:
    """For ``p = 2q + 1``, ``q`` prime: ``p`` is prime iff ``2^(p-1) ≡ 1`` and ``3 ∤ p``."""
    return bool(p % 3 != 0 and gmpy2.powmod(2, p - 1, p) == 1)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits < MIN_SAFE_PRIME_BITS:
        raise ValueError(f"safe primes need at least {MIN_SAFE_PRIME_BITS} bits, got {bits}")


def _q_range(bits: int) -> tuple[int, int]:
    """Range of ``q`` such that ``p = 2q + 1`` has ``bits`` bits and its top two bits set.

    Both top bits set makes the product of two such primes exactly ``2·bits`` bits long,
    which is how :func:`crypto.threshold.deal` gets a modulus of the size it was asked for.
    """
    return 3 << (bits - 3), 1 << (bits - 1)


def sieve_window(start: int, width: int, primes: np.ndarray) -> np.ndarray:
    """Offsets ``j < width`` where no prime in ``primes`` divides ``q = start + 2j`` or ``2q + 1``.

    One pass per small prime ``r`` crosses off the two residue classes of ``j`` that make
    ``r | q`` or ``r | 2q + 1`` (that is ``q ≡ (r - 1) / 2``). ``start`` must be odd, and
    every candidate must exceed the largest sieving prime (true for the sizes we use).
    """
    keep = np.ones(width, dtype=bool)
    start_mod = np.array([start % int(r) for r in primes], dtype=np.int64)
    inverse_two = (primes + 1) // 2  # 2^-1 mod r
    # j ≡ -start · 2^-1 (mod r) makes r | q; j ≡ ((r-1)/2 - start) · 2^-1 makes r | 2q + 1.
    kill_q = (-start_mod % primes) * inverse_two % primes
    kill_p = (((primes - 1) // 2 - start_mod) % primes) * inverse_two % primes
    for r, a, b in zip(primes.tolist(), kill_q.tolist(), kill_p.tolist(), strict=True):
        keep[a::r] = False
        keep[b::r] = False
    return np.flatnonzero(keep)


def safe_prime(bits: int, *, window: int | None = None) -> int:
    """Return a random safe prime ``p = 2q + 1`` of exactly ``bits`` bits (top two bits set).

    Picks a random odd start ``q0`` and sieves the window ``q0, q0 + 2, …`` against every
    prime below 2^16 for ``q`` and ``2q + 1`` at once (:func:`sieve_window`), which leaves
    about 1.4 % of candidates. Survivors get a base-2 strong-probable-prime test on ``q``
    (rejects nearly all composites for one exponentiation), then Pocklington's one
    exponentiation on ``p``, then full Miller–Rabin on ``q``, the survivor order
    recommended by Wiener, "Safe prime generation with a combined sieve" (2003). Searching
    a window rather than fresh random points biases the choice slightly towards primes
    after long prime gaps, which no attack on factoring exploits (Brandt & Damgård 1993).

    Raises
    ------
    TypeError
        If ``bits`` is not an int.
    ValueError
        If ``bits`` is below 16.
    """
    _check_bits(bits)
    low, high = _q_range(bits)
    primes = small_primes()
    primes = primes[primes < low]
    # About 2 safe primes expected per window: density of safe q near 2^k is ~1.32/(k ln 2)^2.
    width = window or max(1024, int(1.5 * (bits * 0.6931) ** 2))
    while True:
        start = low + secrets.randbelow(high - low - 2 * width) | 1
        for offset in sieve_window(start, width, primes).tolist():
            q = gmpy2.mpz(start + 2 * offset)
            if not gmpy2.is_strong_prp(q, 2):
                continue
            p = 2 * q + 1
            if _pocklington(p) and gmpy2.is_prime(q, _MILLER_RABIN_ROUNDS):
                return int(p)


def naive_safe_prime(bits: int) -> int:
    """Baseline: draw random odd ``q`` until ``q`` and ``2q + 1`` both pass ``gmpy2.is_prime``.

    What a first implementation does; kept to measure :func:`safe_prime` against.
    """
    _check_bits(bits)
    low, high = _q_range(bits)
    while True:
        q = gmpy2.mpz(low + secrets.randbelow(high - low)) | 1
        if gmpy2.is_prime(q, _MILLER_RABIN_ROUNDS) and gmpy2.is_prime(
            2 * q + 1, _MILLER_RABIN_ROUNDS
        ):
            return int(2 * q + 1)


class SafePrimePool:
    """Safe primes found in background processes while a site is idle, taken when a run starts.

    A 2048-bit threshold key needs two 1024-bit safe primes, about a second each on one
    core with :func:`safe_prime` but with a long tail (the search is geometric). A custodian
    that keeps a few ready makes a run's key set-up take only the dealing itself. Primes are
    handed out once and never reused; the pool keeps ``target`` of them ready.

    Parameters
    ----------
    bits
        Size of each safe prime (half the modulus size).
    target
        How many primes to keep ready.
    workers
        Background processes (``None``: every core).
    niceness
        Added to the workers' scheduling niceness (Unix), so that training, encryption and
        decryption at the site win the cores whenever they want them.
    """

    def __init__(
        self, bits: int, *, target: int = 2, workers: int | None = 1, niceness: int = 10
    ) -> None:
        _check_bits(bits)
        if not isinstance(target, int) or isinstance(target, bool) or target < 1:
            raise ValueError(f"target must be a positive int, got {target!r}")
        self.bits = bits
        self.target = target
        self._workers = worker_count(workers)
        self._niceness = niceness
        self._ready: deque[int] = deque()
        self._pending: set[Future[int]] = set()
        self._lock = threading.Condition()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def available(self) -> int:
        """Primes ready to take now."""
        with self._lock:
            return len(self._ready)

    def start(self) -> SafePrimePool:
        """Start filling the pool up to ``target`` in the background; returns ``self``."""
        with self._lock:
            if self._closed:
                raise ValueError("SafePrimePool is closed")
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self._workers,
                    mp_context=multiprocessing.get_context(_start_method()),
                    initializer=_lower_priority,
                    initargs=(self._niceness,),
                )
            self._refill_locked()
        return self

    def _refill_locked(self) -> None:
        if self._executor is None or self._closed:
            return
        while len(self._ready) + len(self._pending) < self.target:
            future = self._executor.submit(safe_prime, self.bits)
            self._pending.add(future)
            future.add_done_callback(self._collect)

    def _collect(self, future: Future[int]) -> None:
        with self._lock:
            self._pending.discard(future)
            if not future.cancelled() and future.exception() is None and not self._closed:
                self._ready.append(future.result())
            self._lock.notify_all()

    def take(self, count: int = 2, *, timeout: float | None = None) -> list[int]:
        """Remove and return ``count`` distinct safe primes, waiting for the background.

        Without a started pool (or with ``timeout=0`` and too few ready) the missing
        primes are found in this process, so a caller always gets its primes.

        Raises
        ------
        ValueError
            If ``count`` is not positive.
        """
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        taken: list[int] = []
        with self._lock:
            while len(taken) < count:
                if self._ready:
                    prime = self._ready.popleft()
                    if prime not in taken:
                        taken.append(prime)
                    continue
                if not self._pending or self._closed:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            self._refill_locked()
        while len(taken) < count:
            prime = safe_prime(self.bits)
            if prime not in taken:
                taken.append(prime)
        return taken

    def close(self) -> None:
        """Stop the background processes; primes already found are discarded."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            self._ready.clear()
            self._lock.notify_all()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> SafePrimePool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_method() -> str:
    # As crypto._parallel.process_pool: never plain fork from a process running gRPC/torch.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _lower_priority(niceness: int) -> None:
    """Worker initialiser: run the prime search below the site's real work."""
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
