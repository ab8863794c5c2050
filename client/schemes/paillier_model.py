"""A secure run's model at a site: the server optimiser, the model state, and the run's pools.

In a Paillier run the coordinator never sees the mean update, so the server's step
(FedAvg, FedAvgM, FedAdam) runs at every site that decrypts: :class:`SecureModelState`
holds a site's copy of the global model and how far it has applied the aggregates;
:class:`SecureRuns` keeps one state and one pool of precomputed obfuscators per run.
The round's steps that use them are in client/schemes/paillier.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import crypto
from crypto.codec import expand_bounds, initial_bounds, next_bounds
from protos import federation_pb2
from protos.wire import NDArrays


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """All tensors as one float64 vector, in order (what the codec encodes)."""
    return (
        np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
        if arrays
        else np.zeros(0)
    )


def unflatten(flat: np.ndarray, like: NDArrays) -> NDArrays:
    """Cut a flat vector back into tensors shaped and typed like ``like``."""
    out: NDArrays = []
    offset = 0
    for ref in like:
        size = int(np.prod(ref.shape))
        out.append(flat[offset : offset + size].reshape(ref.shape).astype(ref.dtype))
        offset += size
    if offset != flat.size:
        raise ValueError(f"{flat.size} values do not fill tensors of {offset} values")
    return out


@dataclass
class ServerOptimiser:
    """FedAvg, FedAvgM or FedAdam, stepped identically at every key-holding site.

    In secure mode the coordinator never sees the mean update, so the server step runs
    where it can be decrypted. Every site applies the same aggregates in the same order
    with float64 arithmetic and no randomness, so every site holds the same global model.
    """

    strategy: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    _m: np.ndarray | None = field(default=None, repr=False)
    _v: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """Apply the decrypted mean update with the run's strategy (FedAvg, FedAvgM, FedAdam)."""
        if self.strategy == "fedavg":
            return weights + self.server_lr * mean_delta
        if self.strategy == "fedavgm":
            self._m = mean_delta if self._m is None else self.momentum * self._m + mean_delta
            return weights + self.server_lr * self._m
        if self.strategy == "fedadam":
            # Reddi et al., "Adaptive Federated Optimization" (2021), as in Flower's FedAdam.
            m = np.zeros_like(mean_delta) if self._m is None else self._m
            v = np.zeros_like(mean_delta) if self._v is None else self._v
            self._m = self.beta1 * m + (1 - self.beta1) * mean_delta
            self._v = self.beta2 * v + (1 - self.beta2) * mean_delta**2
            return weights + self.server_lr * self._m / (np.sqrt(self._v) + self.tau)
        raise ValueError(f"unknown server strategy {self.strategy!r}")


@dataclass
class SecureModelState:
    """A site's copy of the global model of a secure run and how far it has applied.

    ``like`` is the run's initial model (public, the same at every site). For a
    per-tensor codec, ``bounds`` are the per-value clip bounds of the next aggregate to
    encode or decode: per tensor from the initial model at first, then from each
    decrypted mean update (:meth:`carry_bounds`). Every site applies the same aggregates in the
    same order, so every site holds the same bounds without exchanging them.
    """

    weights: np.ndarray
    like: NDArrays
    optimiser: ServerOptimiser
    applied_round: int = 0
    bounds: np.ndarray | None = field(default=None, repr=False)

    def arrays(self) -> NDArrays:
        """The current global weights as the model's tensors."""
        return unflatten(self.weights, self.like)

    @property
    def sizes(self) -> list[int]:
        """Number of values in each tensor, in order."""
        return [int(np.prod(ref.shape)) for ref in self.like]

    def value_bounds(self) -> np.ndarray:
        """Per-value bounds for the current round (``like``'s per-tensor scale at first)."""
        if self.bounds is None:
            self.bounds = expand_bounds(initial_bounds(self.like), self.sizes)
        return self.bounds

    def clip_for(self, codec: crypto.SlotCodec) -> np.ndarray | None:
        """Per-value bounds for ``codec`` (None when the codec clips every value alike)."""
        return self.value_bounds() if codec.per_tensor else None

    def carry_bounds(self, mean: np.ndarray, codec: crypto.SlotCodec) -> None:
        """After applying an aggregate: carry the clip bounds forward from its mean update.

        A per-tensor codec has ~127 levels per tensor, so a tensor that must stay positive
        (a normaliser's running variance, initialised to ones, whose features may span
        1e-4 to 5) can be rounded a hair below zero, and a negative variance makes NaNs.
        Tensors whose every initial value is positive are therefore kept non-negative;
        every site does the same to the same values, so the global models stay equal.
        """
        if not codec.per_tensor:
            return
        self.bounds = next_bounds(mean, self.sizes)
        start = 0
        for ref, size in zip(self.like, self.sizes, strict=True):
            if size and bool(np.all(np.asarray(ref, dtype=np.float64) > 0)):
                part = self.weights[start : start + size]
                np.maximum(part, 0.0, out=part)
            start += size


class SecureRuns:
    """Each secure run's :class:`SecureModelState` and randomness pool at this site."""

    def __init__(self, encrypt_workers: int | None = None) -> None:
        self.encrypt_workers = encrypt_workers
        self.states: dict[str, SecureModelState] = {}
        self.pools: dict[str, crypto.RandomnessPool] = {}

    def state(
        self, task: federation_pb2.Task, config: dict[str, Any], initial: Callable[[], NDArrays]
    ) -> SecureModelState:
        """The run's model state, started afresh from ``initial()`` when there is none.

        Also afresh when the state is ahead of the task's aggregates (the coordinator
        restarted the run's history): the aggregates are applied again from the start.
        """
        state = self.states.get(task.run_id)
        latest = task.aggregates[-1].round if task.aggregates else 0
        if state is None or state.applied_round > latest:
            weights = initial()
            optimiser = ServerOptimiser(
                strategy=str(config.get("strategy", "fedavg")),
                server_lr=float(config.get("server_lr", 1.0)),
            )
            state = SecureModelState(flatten(weights), weights, optimiser)
            self.states[task.run_id] = state
        return state

    def randomness(self, run_id: str, public_key: Any, needed: int) -> crypto.RandomnessPool:
        """The run's pool of precomputed obfuscators, topped up to ``needed`` in the background.

        Training runs while the pool's workers compute ``r^n`` (DJN fixed-base powers,
        crypto/fixed_base.py, as cheap for a share holder as for a key holder); after each
        submission the next round's share is queued, so encryption waits on nothing once
        training ends.
        """
        pool = self.pools.get(run_id)
        if pool is None:
            pool = crypto.RandomnessPool(public_key, workers=self.encrypt_workers)
            self.pools[run_id] = pool
            pool.start(needed)
        return pool

    def close_randomness(self, run_id: str | None = None) -> None:
        """End the pool of ``run_id`` (of every run when None): its worker processes stop."""
        for run in [run_id] if run_id is not None else list(self.pools):
            pool = self.pools.pop(run, None)
            if pool is not None:
                pool.close()
