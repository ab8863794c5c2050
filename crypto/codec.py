"""BatchCrypt-style slot codec: weighted, quantised values packed many to a Paillier plaintext."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from phe import PaillierPublicKey

from crypto.packing import MAX_SLOT_BITS, pack_slots, unpack_slots
from crypto.quantise import Clip, count_clipped, dequantise, quantise, quantise_step

__all__ = [
    "PER_TENSOR",
    "SlotCodec",
    "dequantise",
    "expand_bounds",
    "initial_bounds",
    "next_bounds",
    "quantise",
]

PER_TENSOR = 0.0
"""``clip`` value that means: bounds per tensor (then per value), derived by every site."""

# Per-tensor bounds (the default encoding). BatchCrypt (Jiang et al., USENIX ATC 2020,
# section 4.2) clips each layer at an analytical threshold (dACIQ) computed from the
# clients' gradient ranges, which the clients reveal to the aggregator. Here no site
# reveals anything: round one's bound per tensor comes from the public initial model,
# each later round's per-value bounds from the previous round's decrypted mean update
# (within a fixed spread of its tensor's), which every site decodes identically. Only
# exact float64 operations (abs, max, multiply and divide by constants) are used, so
# every site gets bit-identical bounds on any platform.
INITIAL_SCALE = 2.0
"""Round one: a tensor's bound is twice its initial largest magnitude."""
ZERO_TENSOR_BOUND = 8.0
"""Round one, a tensor that starts at zero (normaliser means, LoRA B, some biases) has no
scale to go by: a generous bound (the tabular normaliser's means move by up to ~8)."""
HEADROOM = 16.0
"""Later rounds: a value's bound is this times its previous mean update, so sites whose
updates exceed the mean (non-IID data, disagreeing signs) are mostly inside, and a value
clipped at nearly every site (mean at its bound) gets a bound ~16 times wider at once."""
SPREAD = 64.0
"""...and at least its tensor's largest such bound over SPREAD (a quarter of the tensor's
largest mean update): a value that barely moved last round still has room."""
MIN_BOUND = 1e-6
"""Floor: a tensor whose mean did not move (frozen, or converged) keeps a positive bound."""
MAX_BOUND = 1e6
"""Ceiling: a diverging run cannot grow bounds without limit."""


def initial_bounds(tensors: Sequence[np.ndarray]) -> np.ndarray:
    """Round one's per-tensor bounds from the initial (public, shared) model.

    ``INITIAL_SCALE * max|w|``, or ``ZERO_TENSOR_BOUND`` for an all-zero tensor, within
    ``[MIN_BOUND, MAX_BOUND]``. Every site starts from the same initial model, so every
    site derives the same bounds; the coordinator could too (it reveals nothing).
    """
    out = np.empty(len(tensors), dtype=np.float64)
    for index, tensor in enumerate(tensors):
        array = np.asarray(tensor, dtype=np.float64)
        scale = float(np.max(np.abs(array))) if array.size else 0.0
        if not np.isfinite(scale):
            raise ValueError(f"initial tensor {index} holds a non-finite value")
        out[index] = INITIAL_SCALE * scale if scale > 0 else ZERO_TENSOR_BOUND
    return np.clip(out, MIN_BOUND, MAX_BOUND)


def next_bounds(mean_update: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """The next round's per-value bounds from this round's decrypted mean update.

    Per value: ``max(HEADROOM * |mean|, HEADROOM * max|mean of its tensor| / SPREAD)``,
    within ``[MIN_BOUND, MAX_BOUND]``. A tensor whose values live on different scales (a
    normaliser's running means: 0.1 next to 7) keeps each value's 8-bit step near its
    own movement; one bound per tensor cost the tabular demo ~1 point of accuracy. Every
    site decrypts the same aggregate, so every site computes the same bounds; nothing
    about them travels.
    """
    mean = np.asarray(mean_update, dtype=np.float64).ravel()
    if sum(sizes) != mean.size:
        raise ValueError(f"mean update of {mean.size} values for tensors of {sum(sizes)}")
    magnitude = HEADROOM * np.abs(mean)
    out = np.empty_like(magnitude)
    start = 0
    for size in sizes:
        part = magnitude[start : start + size]
        if size:
            out[start : start + size] = np.maximum(part, float(np.max(part)) / SPREAD)
        start += size
    return np.clip(out, MIN_BOUND, MAX_BOUND)


def expand_bounds(bounds: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """One bound per value (flattened tensors in order), as the codec takes them."""
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.shape != (len(sizes),):
        raise ValueError(f"{bounds.size} bounds for {len(sizes)} tensors")
    return np.repeat(bounds, np.asarray(sizes, dtype=np.int64))


@dataclass(frozen=True)
class SlotCodec:
    """How one round turns float updates into packed Paillier plaintexts and back.

    Each value is clipped to ``[-clip, clip]``, quantised to a ``bits``-bit signed integer
    ``q`` (stochastic rounding), offset to ``u = q + offset`` in ``[0, 2 * offset]`` and
    multiplied by the client's integer weight ``w``. A slot is ``slot_bits = bits +
    ceil(log2(max_weight))`` bits wide, so the sum over clients ``Σ w_i u_i <= 2 * offset *
    Σ w_i`` fits in its slot whenever ``Σ w_i <= max_weight``: adding ciphertexts (which
    adds the packed plaintexts) then adds every slot independently, with no carry into its
    neighbour. ``slots_per_plaintext`` slots fill ``key_bits - 1`` bits, below ``n``, so
    the packed sum is never reduced modulo ``n`` either.

    All clients and the coordinator of a round must use equal codecs. The slot layout
    (``bits``, ``max_weight``, ``key_bits``) is fixed per run, so the number of ciphertexts
    (:meth:`num_plaintexts`) never depends on the bounds.

    Parameters
    ----------
    clip
        Clipping bound ``C`` for every value (positive, finite), or :data:`PER_TENSOR`
        (0): then :meth:`encode` and :meth:`decode` take one bound per value (round one:
        :func:`initial_bounds` per tensor, :func:`expand_bounds`; later: :func:`next_bounds`).
    bits
        Quantisation width, 2 to 32 (8 keeps ciphertexts within 1.3x of fp32 at 2048 bits).
    max_weight
        Upper bound on the sum of all client weights in a round. The coordinator refuses a
        larger sum (:meth:`check_total_weight`) instead of decoding garbage.
    key_bits
        Bit length of the Paillier modulus ``n``.

    Raises
    ------
    TypeError, ValueError
        From ``__post_init__`` when a parameter has the wrong type or is out of range.
    """

    clip: float
    bits: int
    max_weight: int
    key_bits: int

    def __post_init__(self) -> None:
        if self.clip != PER_TENSOR or isinstance(self.clip, bool):
            quantise_step(self.clip, self.bits)  # validates clip and bits
        else:
            quantise_step(1.0, self.bits)  # validates bits
        _require_int("max_weight", self.max_weight)
        _require_int("key_bits", self.key_bits)
        if self.max_weight < 1:
            raise ValueError(f"max_weight must be at least 1, got {self.max_weight}")
        if self.slot_bits > MAX_SLOT_BITS:
            raise ValueError(
                f"slot of {self.slot_bits} bits (bits={self.bits}, max_weight={self.max_weight})"
                f" exceeds the {MAX_SLOT_BITS}-bit limit"
            )
        if self.key_bits - 1 < self.slot_bits:
            raise ValueError(f"a {self.key_bits}-bit key cannot hold one {self.slot_bits}-bit slot")

    @classmethod
    def for_public_key(
        cls, public_key: PaillierPublicKey, *, clip: float, bits: int = 8, max_weight: int = 4096
    ) -> SlotCodec:
        """Build the codec for ``public_key``'s modulus size (defaults: 20-bit slots)."""
        if not isinstance(public_key, PaillierPublicKey):
            raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")
        return cls(clip=clip, bits=bits, max_weight=max_weight, key_bits=public_key.n.bit_length())

    @cached_property
    def offset(self) -> int:
        """``2^(bits-1) - 1``: added to every quantised value so that slots hold no sign."""
        return int(2 ** (self.bits - 1) - 1)

    @cached_property
    def slot_bits(self) -> int:
        """``bits + ceil(log2(max_weight))``: room for ``max_weight`` times the largest ``u``."""
        return self.bits + (self.max_weight - 1).bit_length()

    @cached_property
    def slots_per_plaintext(self) -> int:
        """``(key_bits - 1) // slot_bits``: packed plaintexts stay below ``2^(key_bits-1) <= n``."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def per_tensor(self) -> bool:
        """Whether bounds come per value from the caller rather than from ``clip``."""
        return self.clip == PER_TENSOR

    @cached_property
    def step(self) -> float:
        """One quantisation level; it bounds the error of a decoded weighted mean.

        Raises
        ------
        ValueError
            In per-tensor mode, where each tensor has its own step (``bound / offset``).
        """
        if self.per_tensor:
            raise ValueError("a per-tensor codec has one step per tensor: bound / offset")
        return float(quantise_step(self.clip, self.bits))

    def bounds_for(self, clip: Clip | None, count: int) -> Clip:
        """The clip to use for ``count`` values: ``clip`` given iff the codec is per-tensor.

        Raises
        ------
        ValueError
            If per-value bounds are missing in per-tensor mode, given in global mode, or
            not ``count`` long.
        """
        if not self.per_tensor:
            if clip is not None:
                raise ValueError(f"this codec clips every value at {self.clip}; got bounds too")
            return self.clip
        if clip is None:
            raise ValueError("a per-tensor codec needs one clip bound per value")
        bounds = np.asarray(clip, dtype=np.float64)
        if bounds.shape != (count,):
            raise ValueError(f"{bounds.size} clip bounds for {count} values")
        return bounds

    def clipped(self, values: np.ndarray, clip: Clip | None = None) -> int:
        """How many ``values`` :meth:`encode` would clip (reported per update)."""
        flat = np.ravel(values)
        return count_clipped(flat, self.bounds_for(clip, flat.size))

    def num_plaintexts(self, count: int) -> int:
        """Number of packed plaintexts (hence ciphertexts) that ``count`` values need."""
        _require_int("count", count)
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        return -(-count // self.slots_per_plaintext)

    def check_total_weight(self, total_weight: int) -> None:
        """Refuse a round whose weights could overflow a slot.

        Called by each site before it decodes an aggregate, and again by :meth:`decode`; the
        coordinator keeps Σw under the bound when it accepts updates (coordinator/schemes.py):
        once a slot has overflowed the damage is invisible, so it must be prevented.

        Raises
        ------
        TypeError
            If ``total_weight`` is not an int.
        ValueError
            If ``total_weight`` is below 1.
        OverflowError
            If ``total_weight > max_weight``.
        """
        _require_int("total_weight", total_weight)
        if total_weight < 1:
            raise ValueError(f"total_weight must be at least 1, got {total_weight}")
        if total_weight > self.max_weight:
            raise OverflowError(
                f"total weight {total_weight} exceeds max_weight {self.max_weight}: "
                f"{self.slot_bits}-bit slots could overflow; cap client weights or raise "
                "max_weight for the round"
            )

    def encode(
        self,
        values: np.ndarray,
        weight: int,
        rng: np.random.Generator,
        clip: Clip | None = None,
    ) -> list[int]:
        """Quantise, offset, weight and pack ``values`` (flattened in C order).

        Parameters
        ----------
        values
            A client's update; finite floats.
        weight
            The client's integer weight (e.g. its capped example count),
            ``1 <= weight <= max_weight``.
        rng
            Randomness for stochastic rounding.
        clip
            Per-tensor mode only: one bound per value (:func:`expand_bounds`).

        Returns
        -------
        list[int]
            ``num_plaintexts(values.size)`` plaintexts, each below ``2^(key_bits-1)``.
        """
        _require_int("weight", weight)
        if not 1 <= weight <= self.max_weight:
            raise ValueError(f"weight must be between 1 and {self.max_weight}, got {weight}")
        flat = np.ravel(values)
        q = quantise(flat, self.bounds_for(clip, flat.size), self.bits, rng)
        weighted = (q + self.offset).astype(np.uint64) * np.uint64(weight)
        return pack_slots(weighted, self.slot_bits, self.slots_per_plaintext)

    def decode(
        self,
        plaintext_sums: Sequence[int],
        total_weight: int,
        count: int,
        clip: Clip | None = None,
    ) -> np.ndarray:
        """Turn the decrypted sum of all clients' plaintexts into the weighted mean update.

        Parameters
        ----------
        plaintext_sums
            Decrypted aggregate, one int per ciphertext.
        total_weight
            Sum of the weights of the clients whose ciphertexts were added.
        count
            Number of values in the update.
        clip
            Per-tensor mode only: the per-value bounds every client encoded with.

        Returns
        -------
        numpy.ndarray
            ``float64`` array of ``count`` weighted means, each within ``step`` of the
            weighted mean of the clipped inputs.

        Raises
        ------
        OverflowError
            If ``total_weight > max_weight``, or a slot holds more than ``2 * offset *
            total_weight`` (an overflowed sum, or a contribution that did not come from
            :meth:`encode` with the stated weights).
        ValueError
            If ``plaintext_sums`` does not hold ``num_plaintexts(count)`` values.
        """
        self.check_total_weight(total_weight)
        bounds = self.bounds_for(clip, count)
        slots = unpack_slots(plaintext_sums, self.slot_bits, self.slots_per_plaintext, count)
        limit = 2 * self.offset * total_weight
        if slots.size and int(slots.max()) > limit:
            index = int(np.argmax(slots))
            raise OverflowError(
                f"slot {index} holds {int(slots[index])}, above the largest possible sum "
                f"{limit} for total weight {total_weight}; a contribution was out of range or "
                "the weights are wrong"
            )
        centred = slots.astype(np.int64) - np.int64(self.offset * total_weight)
        return dequantise(centred, bounds, self.bits) / total_weight


def _require_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
