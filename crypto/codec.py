"""BatchCrypt-style slot codec: weighted, quantised values packed many to a Paillier plaintext."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from phe import PaillierPublicKey

from crypto.packing import MAX_SLOT_BITS, pack_slots, unpack_slots
from crypto.quantise import dequantise, quantise, quantise_step

__all__ = ["SlotCodec", "dequantise", "quantise"]


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

    All clients and the coordinator of a round must use equal codecs.

    Parameters
    ----------
    clip
        Clipping bound ``C`` for every value (positive, finite).
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
        quantise_step(self.clip, self.bits)  # validates clip and bits
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

    @cached_property
    def step(self) -> float:
        """One quantisation level; it bounds the error of a decoded weighted mean."""
        return quantise_step(self.clip, self.bits)

    def num_plaintexts(self, count: int) -> int:
        """Number of packed plaintexts (hence ciphertexts) that ``count`` values need."""
        _require_int("count", count)
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        return -(-count // self.slots_per_plaintext)

    def check_total_weight(self, total_weight: int) -> None:
        """Refuse a round whose weights could overflow a slot.

        Called by the coordinator before it adds ciphertexts, and again by :meth:`decode`:
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

    def encode(self, values: np.ndarray, weight: int, rng: np.random.Generator) -> list[int]:
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

        Returns
        -------
        list[int]
            ``num_plaintexts(values.size)`` plaintexts, each below ``2^(key_bits-1)``.
        """
        _require_int("weight", weight)
        if not 1 <= weight <= self.max_weight:
            raise ValueError(f"weight must be between 1 and {self.max_weight}, got {weight}")
        q = quantise(np.ravel(values), self.clip, self.bits, rng)
        weighted = (q + self.offset).astype(np.uint64) * np.uint64(weight)
        return pack_slots(weighted, self.slot_bits, self.slots_per_plaintext)

    def decode(self, plaintext_sums: Sequence[int], total_weight: int, count: int) -> np.ndarray:
        """Turn the decrypted sum of all clients' plaintexts into the weighted mean update.

        Parameters
        ----------
        plaintext_sums
            Decrypted aggregate, one int per ciphertext.
        total_weight
            Sum of the weights of the clients whose ciphertexts were added.
        count
            Number of values in the update.

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
        return dequantise(centred, self.clip, self.bits) / total_weight


def _require_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
