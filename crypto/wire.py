"""Fixed-width big-endian byte encoding of ciphertext vectors for the wire and the blob store."""

from __future__ import annotations

from collections.abc import Sequence

from phe import PaillierPublicKey

__all__ = ["ciphertext_width", "ciphertexts_from_bytes", "ciphertexts_to_bytes"]


def ciphertext_width(public_key: PaillierPublicKey) -> int:
    """Bytes needed for any ciphertext of ``public_key``: ``ceil(bits(n²) / 8)``."""
    return int((public_key.nsquare.bit_length() + 7) // 8)


def ciphertexts_to_bytes(cts: Sequence[int], n_square_bytes: int) -> bytes:
    """Concatenate ciphertexts, each as exactly ``n_square_bytes`` big-endian bytes.

    A fixed width needs no length prefixes and lets a reader find ciphertext ``i`` at
    offset ``i * n_square_bytes``; the vector length is ``len(data) // n_square_bytes``.

    Raises
    ------
    TypeError
        If a ciphertext is not an int.
    ValueError
        If ``n_square_bytes`` is below 1 or a ciphertext is negative or too wide.
    """
    _check_width(n_square_bytes)
    parts = []
    for index, c in enumerate(cts):
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"ciphertext {index} must be an int, got {type(c).__name__}")
        if c < 0 or c.bit_length() > 8 * n_square_bytes:
            raise ValueError(f"ciphertext {index} does not fit in {n_square_bytes} unsigned bytes")
        parts.append(c.to_bytes(n_square_bytes, "big"))
    return b"".join(parts)


def ciphertexts_from_bytes(data: bytes, n_square_bytes: int) -> list[int]:
    """Split :func:`ciphertexts_to_bytes` output back into ints.

    Range checks against a key are :func:`crypto.aggregate.validate_ciphertexts`' job.

    Raises
    ------
    TypeError
        If ``data`` is not bytes-like.
    ValueError
        If ``len(data)`` is not a multiple of ``n_square_bytes``.
    """
    _check_width(n_square_bytes)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) % n_square_bytes:
        raise ValueError(
            f"{len(view)} bytes is not a whole number of {n_square_bytes}-byte ciphertexts"
        )
    return [
        int.from_bytes(view[i : i + n_square_bytes], "big")
        for i in range(0, len(view), n_square_bytes)
    ]


def _check_width(n_square_bytes: int) -> None:
    if not isinstance(n_square_bytes, int) or isinstance(n_square_bytes, bool):
        raise TypeError(f"n_square_bytes must be an int, got {type(n_square_bytes).__name__}")
    if n_square_bytes < 1:
        raise ValueError(f"n_square_bytes must be at least 1, got {n_square_bytes}")
