"""Pack fixed-width unsigned slots into big integers and back, vectorised with numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_SLOT_BITS", "pack_slots", "unpack_slots"]

MAX_SLOT_BITS = 63
"""Slots are handled as ``uint64`` on the numpy side; one bit of headroom keeps them signed-safe."""

_WORD_BITS = 64


def pack_slots(slot_values: np.ndarray, slot_bits: int, slots_per_int: int) -> list[int]:
    """Pack ``slot_values`` into ints, ``slots_per_int`` slots of ``slot_bits`` bits each.

    Slot ``j`` of an int occupies bits ``[j * slot_bits, (j + 1) * slot_bits)``, so slot 0
    is in the low bits. The last int is padded with zero slots. Because each slot is a
    separate bit field, adding packed ints adds slot-wise as long as no slot sum reaches
    ``2^slot_bits``; callers guarantee that bound (see :class:`crypto.codec.SlotCodec`).

    The bit fields are laid out with ``unpackbits``/``packbits`` and each int is built by one
    ``int.from_bytes``, so packing 300 000 values takes milliseconds instead of the seconds
    a per-slot Python shift-and-or loop would.

    Raises
    ------
    ValueError
        If the layout is impossible, ``slot_values`` is not a 1-D integer array, or a value
        is negative.
    OverflowError
        If a value does not fit in ``slot_bits`` bits.
    """
    _check_layout(slot_bits, slots_per_int)
    values = np.asarray(slot_values)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ValueError(
            f"slot values must be a 1-D integer array, got {values.dtype}{values.shape}"
        )
    if values.size and values.dtype.kind == "i" and int(values.min()) < 0:
        raise ValueError(f"slot values must be non-negative, got {int(values.min())}")
    if values.size and int(values.max()) >> slot_bits:
        raise OverflowError(f"slot value {int(values.max())} does not fit in {slot_bits} bits")
    count_ints = -(-values.size // slots_per_int)
    padded = np.zeros(count_ints * slots_per_int, dtype="<u8")
    padded[: values.size] = values
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    rows = bits[:, :slot_bits].reshape(count_ints, slots_per_int * slot_bits)
    row_bytes = np.packbits(rows, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in row_bytes]


def unpack_slots(
    packed: Sequence[int], slot_bits: int, slots_per_int: int, count: int
) -> np.ndarray:
    """Inverse of :func:`pack_slots`: the first ``count`` slots as a ``uint64`` array.

    Raises
    ------
    TypeError
        If an element of ``packed`` is not an int.
    ValueError
        If the layout is impossible, ``count`` does not match ``len(packed)``, or an int is
        negative.
    OverflowError
        If an int has bits above its last slot: its sum overflowed the packing.
    """
    _check_layout(slot_bits, slots_per_int)
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    expected = -(-count // slots_per_int)
    if len(packed) != expected:
        raise ValueError(
            f"{count} slots need {expected} packed ints of {slots_per_int} slots, got {len(packed)}"
        )
    total_bits = slots_per_int * slot_bits
    width = (total_bits + 7) // 8
    chunks = []
    for index, value in enumerate(packed):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"packed value {index} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"packed value {index} is negative")
        if value >> total_bits:
            raise OverflowError(
                f"packed value {index} has {value.bit_length()} bits, more than its "
                f"{slots_per_int} slots of {slot_bits} bits: a slot sum overflowed"
            )
        chunks.append(value.to_bytes(width, "little"))
    if not chunks:
        return np.zeros(0, dtype=np.uint64)
    raw = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(len(chunks), width)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :total_bits]
    slots = np.zeros((len(chunks) * slots_per_int, _WORD_BITS), dtype=np.uint8)
    slots[:, :slot_bits] = bits.reshape(-1, slot_bits)
    words = np.packbits(slots, axis=1, bitorder="little").view("<u8").ravel()
    return words[:count].astype(np.uint64)


def _check_layout(slot_bits: int, slots_per_int: int) -> None:
    if not 1 <= slot_bits <= MAX_SLOT_BITS:
        raise ValueError(f"slot_bits must be between 1 and {MAX_SLOT_BITS}, got {slot_bits}")
    if slots_per_int < 1:
        raise ValueError(f"slots_per_int must be at least 1, got {slots_per_int}")
