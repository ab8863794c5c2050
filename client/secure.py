"""Site-side secure aggregation: encrypt updates, decrypt aggregates, step the server optimiser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from phe import PaillierPrivateKey, PaillierPublicKey

import crypto
from crypto.codec import expand_bounds, initial_bounds, next_bounds
from protos import common_pb2
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


def codec_for(
    encoding: common_pb2.EncodingParams, public_key: PaillierPublicKey
) -> crypto.SlotCodec:
    """The slot codec a task's encoding parameters describe, for this run's key size."""
    return crypto.SlotCodec(
        clip=encoding.clip,
        bits=encoding.bits,
        max_weight=int(encoding.max_weight),
        key_bits=public_key.n.bit_length(),
    )


def encrypt_update(
    delta: np.ndarray,
    weight: int,
    codec: crypto.SlotCodec,
    public_key: PaillierPublicKey,
    private_key: PaillierPrivateKey,
    rng: np.random.Generator,
    pool: crypto.RandomnessPool | None = None,
    clip: np.ndarray | None = None,
) -> bytes:
    """Quantise, weight, pack and encrypt a flat update; returns the wire payload.

    ``clip``: per-value bounds (:meth:`SecureModelState.clip_for`) for a per-tensor codec.
    """
    plaintexts = codec.encode(delta, weight, rng, clip)
    ciphertexts = crypto.encrypt_packed(public_key, plaintexts, private_key=private_key, pool=pool)
    return crypto.ciphertexts_to_bytes(ciphertexts, crypto.ciphertext_width(public_key))


def encrypt_proven_update(
    delta: np.ndarray,
    weight: int,
    codec: crypto.SlotCodec,
    public_key: PaillierPublicKey,
    private_key: PaillierPrivateKey | None,
    rng: np.random.Generator,
    *,
    run_id: str,
    round_number: int,
    site: str,
    pool: crypto.RandomnessPool | None = None,
    clip: np.ndarray | None = None,
) -> tuple[bytes, bytes]:
    """:func:`encrypt_update`, plus the proof that this site knows what it encrypted.

    Returns the wire payload and crypto.plaintext_proof bytes bound to this run, round
    and site. The randomness ``r`` of each ciphertext is kept only for the proof.
    """
    from crypto import plaintext_proof

    plaintexts = codec.encode(delta, weight, rng, clip)
    units: list[int] = []
    ciphertexts = crypto.encrypt_packed(
        public_key, plaintexts, private_key=private_key, pool=pool, units_out=units
    )
    proof = plaintext_proof.prove(
        public_key.n,
        ciphertexts,
        plaintexts,
        units,
        run_id=run_id,
        round_number=round_number,
        site=site,
    )
    payload = crypto.ciphertexts_to_bytes(ciphertexts, crypto.ciphertext_width(public_key))
    return payload, proof.to_bytes(public_key.n)


def decrypt_aggregate(
    payload: bytes,
    codec: crypto.SlotCodec,
    private_key: PaillierPrivateKey,
    total_weight: int,
    count: int,
    clip: np.ndarray | None = None,
) -> np.ndarray:
    """The weighted mean update hidden in an encrypted aggregate (``clip``: as encoded)."""
    width = crypto.ciphertext_width(private_key.public_key)
    sums = crypto.decrypt_packed(private_key, crypto.ciphertexts_from_bytes(payload, width))
    return codec.decode(sums, total_weight, count, clip)


def clip_metrics(
    delta: np.ndarray, codec: crypto.SlotCodec, clip: np.ndarray | None = None
) -> dict[str, float]:
    """How many values of an update the codec clips, for the update's plaintext metrics.

    The coordinator averages numeric metrics per round, so an operator sees when bounds
    bite. These two numbers are all that clipping reveals about a site's update.
    """
    flat = np.ravel(delta)
    clipped = codec.clipped(flat, clip)
    return {"clipped_values": clipped, "clipped_fraction": clipped / max(flat.size, 1)}


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
