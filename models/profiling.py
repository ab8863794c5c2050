"""Measure a predictor's latency and throughput per batch size and pick the batch to serve.

Measured properly: warm-up calls first (lazy initialisation, allocator, CUDA kernels), then
repeated timed calls; every call returns host memory, so the CUDA stream is synchronised
inside the timing; the thread count is recorded because CPU numbers mean nothing without
it. The choice is the batch size with the most rows per second whose p99 latency fits the
budget.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

Inputs = dict[str, np.ndarray]
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BatchTiming:
    """One batch size's numbers: latency percentiles in ms, rows per second, peak memory."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rows_s: float
    peak_memory_mib: float
    repeats: int


@dataclass(frozen=True)
class Profile:
    """All batch sizes of one variant (fp32 or INT8) and the batch chosen for serving."""

    variant: str
    device: str
    threads: int
    timings: tuple[BatchTiming, ...]
    chosen_batch_size: int
    max_latency_ms: float
    within_budget: bool
    memory_note: str

    def timing(self, batch_size: int) -> BatchTiming:
        return next(t for t in self.timings if t.batch_size == batch_size)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["timings"] = [asdict(t) for t in self.timings]
        return out


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of durations given in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no timings to summarise")
    return float(np.percentile(np.asarray(seconds, dtype=float), q) * 1e3)


def choose_batch_size(timings: Sequence[BatchTiming], max_latency_ms: float) -> tuple[int, bool]:
    """The batch with the most rows/s whose p99 fits ``max_latency_ms``.

    Returns ``(batch_size, within_budget)``; when no batch fits, the fastest (lowest p99)
    one, flagged as outside the budget.
    """
    if not timings:
        raise ValueError("no timings to choose from")
    fitting = [t for t in timings if t.p99_ms <= max_latency_ms]
    if fitting:
        best = max(fitting, key=lambda t: (t.throughput_rows_s, -t.batch_size))
        return best.batch_size, True
    return min(timings, key=lambda t: t.p99_ms).batch_size, False


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def time_batches(
    predict: Callable[[Inputs], np.ndarray],
    make_inputs: Callable[[int], Inputs],
    batch_sizes: Sequence[int],
    *,
    device: torch.device,
    warmup: int = 5,
    repeats: int = 30,
    min_seconds: float = 0.0,
) -> list[BatchTiming]:
    """Time ``predict`` on ``make_inputs(b)`` for each ``b``: warm-up, then ``repeats`` runs.

    ``min_seconds`` keeps repeating (beyond ``repeats``) until that much time was measured,
    so tiny fast models get enough samples for a stable p99.
    """
    cuda = device.type == "cuda"
    timings = []
    for batch in batch_sizes:
        if batch < 1:
            raise ValueError(f"batch sizes must be positive, got {batch}")
        inputs = make_inputs(batch)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            predict(inputs)
        durations: list[float] = []
        begun = time.perf_counter()
        while len(durations) < repeats or time.perf_counter() - begun < min_seconds:
            started = time.perf_counter()
            predict(inputs)  # returns numpy: the device work is finished when it returns
            durations.append(time.perf_counter() - started)
        mean = float(np.mean(durations))
        memory = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mib()
        timings.append(
            BatchTiming(
                batch_size=batch,
                p50_ms=percentile_ms(durations, 50),
                p95_ms=percentile_ms(durations, 95),
                p99_ms=percentile_ms(durations, 99),
                mean_ms=mean * 1e3,
                throughput_rows_s=batch / mean,
                peak_memory_mib=float(memory),
                repeats=len(durations),
            )
        )
    return timings


def profile_predictor(
    predict: Callable[[Inputs], np.ndarray],
    make_inputs: Callable[[int], Inputs],
    *,
    variant: str,
    device: torch.device,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    max_latency_ms: float = 50.0,
    warmup: int = 5,
    repeats: int = 30,
    min_seconds: float = 0.0,
) -> Profile:
    """Time every batch size and choose the one to serve within ``max_latency_ms``."""
    timings = time_batches(
        predict,
        make_inputs,
        batch_sizes,
        device=device,
        warmup=warmup,
        repeats=repeats,
        min_seconds=min_seconds,
    )
    chosen, fits = choose_batch_size(timings, max_latency_ms)
    note = (
        "torch.cuda.max_memory_allocated per batch size"
        if device.type == "cuda"
        else "process peak RSS (high-water mark since start, getrusage)"
    )
    return Profile(
        variant=variant,
        device=str(device),
        threads=torch.get_num_threads(),
        timings=tuple(timings),
        chosen_batch_size=chosen,
        max_latency_ms=max_latency_ms,
        within_budget=fits,
        memory_note=note,
    )


def serving_defaults(profile: Profile) -> tuple[int, float]:
    """Max batch size and max wait (ms) for the batcher from a profile.

    The wait is one single-row call's p50 (clamped to [0.1, 10] ms): topping a batch up
    for longer than one lone call takes would cost callers more than it saves.
    """
    single = min(profile.timings, key=lambda t: t.batch_size).p50_ms
    return profile.chosen_batch_size, float(min(10.0, max(0.1, single)))


def synthetic_inputs(
    feature_count: int, background: np.ndarray | None = None, seed: int = 0
) -> Callable[[int], Inputs]:
    """Rows for timing a tabular model: the site's background rows, resampled, else noise."""
    rng = np.random.default_rng(seed)

    def make(batch: int) -> Inputs:
        if background is not None and len(background):
            rows = background[rng.integers(0, len(background), size=batch)]
        else:
            rows = rng.normal(size=(batch, feature_count)) * 10
        return {"x": np.ascontiguousarray(rows, dtype=np.float32)}

    return make


def example_inputs(example: Inputs) -> Callable[[int], Inputs]:
    """Batches for a named-input model, tiled from an example (e.g. an ``.npz`` of inputs)."""
    if not example:
        raise ValueError("the example holds no inputs")

    def make(batch: int) -> Inputs:
        out = {}
        for name, array in example.items():
            index = np.arange(batch) % len(array)
            out[name] = np.ascontiguousarray(array[index])
        return out

    return make
