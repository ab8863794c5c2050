"""Quantisation, slot packing and SlotCodec: weighted means survive the integer round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.codec import SlotCodec, dequantise, quantise
from crypto.packing import pack_slots, unpack_slots
from crypto.quantise import quantise_step

# --- quantise / dequantise ------------------------------------------------------------------


def test_quantise_maps_clip_bounds_to_extreme_levels_and_clips_beyond() -> None:
    rng = np.random.default_rng(0)

    q = quantise(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]), clip=1.0, bits=8, rng=rng)

    assert q.dtype == np.int64
    assert q.tolist() == [-127, -127, 0, 127, 127]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
    clip=st.floats(1e-4, 1e3),
    bits=st.integers(2, 32),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantise_stays_in_range_and_within_one_step_of_clipped_value(
    values: list[float], clip: float, bits: int, seed: int
) -> None:
    x = np.array(values)
    levels = 2 ** (bits - 1) - 1

    q = quantise(x, clip, bits, np.random.default_rng(seed))

    assert np.all(np.abs(q) <= levels)
    error = np.abs(dequantise(q, clip, bits) - np.clip(x, -clip, clip))
    assert np.all(error <= quantise_step(clip, bits) * (1 + 1e-9))


def test_stochastic_rounding_is_unbiased_where_rounding_to_nearest_is_not() -> None:
    clip, bits, repeats = 1.0, 4, 40_000
    step = quantise_step(clip, bits)  # 1/7: coarse, so a bias would be large
    x = np.array([0.0123, 0.05, -0.3, 0.5 * step, 0.9])
    samples = np.repeat(x[:, None], repeats, axis=1)

    q = quantise(samples, clip, bits, np.random.default_rng(12345))
    means = dequantise(q, clip, bits).mean(axis=1)

    # Rounding noise per sample has standard deviation <= step / 2; allow five of its errors.
    tolerance = 5 * (step / 2) / math.sqrt(repeats)
    assert np.all(np.abs(means - x) < tolerance)
    nearest = np.round(x / step) * step
    assert np.abs(nearest - x).max() > 10 * tolerance


def test_quantise_refuses_non_finite_values_instead_of_clipping_them() -> None:
    rng = np.random.default_rng(0)

    with pytest.raises(ValueError, match="finite"):
        quantise(np.array([0.1, np.nan]), 1.0, 8, rng)
    with pytest.raises(ValueError, match="finite"):
        quantise(np.array([np.inf]), 1.0, 8, rng)


@pytest.mark.parametrize(
    ("clip", "bits", "error"),
    [
        (0.0, 8, ValueError),
        (-1.0, 8, ValueError),
        (math.inf, 8, ValueError),
        (1.0, 1, ValueError),
        (1.0, 33, ValueError),
        (1.0, 8.0, TypeError),
        ("1", 8, TypeError),
    ],
    ids=[
        "zero-clip",
        "negative-clip",
        "infinite-clip",
        "one-bit",
        "33-bits",
        "float-bits",
        "str-clip",
    ],
)
def test_quantise_rejects_bad_parameters(clip: float, bits: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        quantise(np.zeros(3), clip, bits, np.random.default_rng(0))


def test_quantise_requires_a_numpy_generator() -> None:
    with pytest.raises(TypeError, match="Generator"):
        quantise(np.zeros(3), 1.0, 8, rng=np.random.RandomState(0))  # type: ignore[arg-type]


def test_dequantise_rejects_float_input() -> None:
    with pytest.raises(TypeError, match="integers"):
        dequantise(np.array([1.5]), 1.0, 8)


# --- packing ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), slot_bits=st.integers(1, 63), slots_per_int=st.integers(1, 40))
def test_pack_then_unpack_returns_the_slots(
    data: st.DataObject, slot_bits: int, slots_per_int: int
) -> None:
    values = data.draw(st.lists(st.integers(0, 2**slot_bits - 1), max_size=150))

    packed = pack_slots(np.array(values, dtype=np.uint64), slot_bits, slots_per_int)

    assert len(packed) == -(-len(values) // slots_per_int)
    assert all(0 <= p < 2 ** (slot_bits * slots_per_int) for p in packed)
    assert unpack_slots(packed, slot_bits, slots_per_int, len(values)).tolist() == values


def test_pack_puts_slot_zero_in_the_low_bits() -> None:
    assert pack_slots(np.array([1, 2, 3], dtype=np.uint64), 4, 3) == [1 + (2 << 4) + (3 << 8)]


def test_pack_refuses_a_value_wider_than_its_slot() -> None:
    with pytest.raises(OverflowError, match="does not fit"):
        pack_slots(np.array([16], dtype=np.uint64), 4, 3)


def test_unpack_refuses_a_sum_that_overflowed_past_the_last_slot() -> None:
    with pytest.raises(OverflowError, match="overflowed"):
        unpack_slots([1 << 12], 4, 3, 3)


# --- SlotCodec --------------------------------------------------------------------------------


def test_default_codec_fits_102_twenty_bit_slots_in_a_2048_bit_key() -> None:
    codec = SlotCodec(clip=0.1, bits=8, max_weight=4096, key_bits=2048)

    assert (codec.offset, codec.slot_bits, codec.slots_per_plaintext) == (127, 20, 102)
    assert codec.num_plaintexts(300_000) == 2942
    expansion = codec.num_plaintexts(300_000) * 512 / (4 * 300_000)
    assert expansion <= 1.3


def test_codec_with_max_weight_one_uses_bits_wide_slots_that_hold_the_maximum() -> None:
    codec = SlotCodec(clip=1.0, bits=8, max_weight=1, key_bits=1024)
    rng = np.random.default_rng(0)

    packed = codec.encode(np.ones(codec.slots_per_plaintext), 1, rng)

    assert codec.slot_bits == 8
    np.testing.assert_allclose(codec.decode(packed, 1, codec.slots_per_plaintext), 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip": -1.0, "bits": 8, "max_weight": 10, "key_bits": 2048},
        {"clip": float("nan"), "bits": 8, "max_weight": 10, "key_bits": 2048},
        {"clip": 0.0, "bits": 1, "max_weight": 10, "key_bits": 2048},
        {"clip": 1.0, "bits": 1, "max_weight": 10, "key_bits": 2048},
        {"clip": 1.0, "bits": 8, "max_weight": 0, "key_bits": 2048},
        {"clip": 1.0, "bits": 32, "max_weight": 2**32, "key_bits": 2048},
        {"clip": 1.0, "bits": 8, "max_weight": 4096, "key_bits": 20},
    ],
    ids=[
        "negative-clip",
        "nan-clip",
        "per-tensor-one-bit",
        "one-bit",
        "zero-max-weight",
        "slot-over-63-bits",
        "key-below-one-slot",
    ],
)
def test_codec_rejects_impossible_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SlotCodec(**kwargs)  # type: ignore[arg-type]


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SlotCodec, list[np.ndarray], list[int]]:
    """A codec, and per-client updates and integer weights with Σw <= max_weight."""
    bits = draw(st.integers(2, 16))
    max_weight = draw(st.integers(1, 5000))
    codec = SlotCodec(
        clip=draw(st.floats(1e-3, 10.0)),
        bits=bits,
        max_weight=max_weight,
        key_bits=draw(st.sampled_from([1024, 2048, 3072])),
    )
    clients = draw(st.integers(1, min(8, max_weight)))
    weights: list[int] = []
    for i in range(clients):
        budget = max_weight - sum(weights) - (clients - i - 1)
        weights.append(draw(st.integers(1, budget)))
    count = draw(st.integers(0, 400))
    updates = [
        np.array(
            draw(
                st.lists(st.floats(-2 * codec.clip, 2 * codec.clip), min_size=count, max_size=count)
            ),
            dtype=np.float64,
        )
        for _ in range(clients)
    ]
    return codec, updates, weights


@settings(max_examples=80, deadline=None)
@given(round_=rounds(), seed=st.integers(0, 2**32 - 1))
def test_decoded_sum_of_packed_plaintexts_is_the_weighted_mean_within_one_step(
    round_: tuple[SlotCodec, list[np.ndarray], list[int]], seed: int
) -> None:
    codec, updates, weights = round_
    rng = np.random.default_rng(seed)
    count = updates[0].size

    packed = [codec.encode(u, w, rng) for u, w in zip(updates, weights, strict=True)]
    sums = [sum(column) for column in zip(*packed, strict=True)]
    decoded = codec.decode(sums, sum(weights), count)

    clipped = [np.clip(u, -codec.clip, codec.clip) for u in updates]
    expected = sum(w * c for w, c in zip(weights, clipped, strict=True)) / sum(weights)
    assert decoded.shape == (count,)
    assert len(sums) == codec.num_plaintexts(count)
    assert np.all(np.abs(decoded - expected) <= codec.step * (1 + 1e-9))


def test_total_weight_above_max_is_refused_before_decoding() -> None:
    codec = SlotCodec(clip=1.0, bits=8, max_weight=100, key_bits=1024)
    packed = codec.encode(np.zeros(10), 60, np.random.default_rng(0))
    sums = [a + b for a, b in zip(packed, packed, strict=True)]  # Σw = 120 > 100

    with pytest.raises(OverflowError, match="exceeds max_weight"):
        codec.check_total_weight(120)
    with pytest.raises(OverflowError, match="exceeds max_weight"):
        codec.decode(sums, 120, 10)


def test_decode_refuses_a_slot_larger_than_any_honest_sum() -> None:
    codec = SlotCodec(clip=1.0, bits=8, max_weight=100, key_bits=1024)
    packed = codec.encode(np.ones(3), 50, np.random.default_rng(0))  # each slot 254 * 50

    with pytest.raises(OverflowError, match="slot 0"):
        codec.decode(packed, 10, 3)  # claims Σw = 10: slots can be at most 2540


@pytest.mark.parametrize("weight", [0, 101], ids=["zero", "above-max"])
def test_encode_rejects_weight_out_of_range(weight: int) -> None:
    codec = SlotCodec(clip=1.0, bits=8, max_weight=100, key_bits=1024)

    with pytest.raises(ValueError, match="weight"):
        codec.encode(np.zeros(3), weight, np.random.default_rng(0))


def test_encode_rejects_non_int_weight() -> None:
    codec = SlotCodec(clip=1.0, bits=8, max_weight=100, key_bits=1024)

    with pytest.raises(TypeError, match="weight"):
        codec.encode(np.zeros(3), 2.0, np.random.default_rng(0))  # type: ignore[arg-type]


def test_decode_rejects_wrong_number_of_plaintexts() -> None:
    codec = SlotCodec(clip=1.0, bits=8, max_weight=100, key_bits=1024)
    packed = codec.encode(np.zeros(200), 1, np.random.default_rng(0))

    with pytest.raises(ValueError, match="packed ints"):
        codec.decode(packed[:-1], 1, 200)


def test_encode_of_300k_values_is_fast() -> None:
    import time

    codec = SlotCodec(clip=0.1, bits=8, max_weight=4096, key_bits=2048)
    values = np.random.default_rng(0).normal(0, 0.05, 300_000)

    started = time.perf_counter()
    packed = codec.encode(values, 7, np.random.default_rng(1))
    decoded = codec.decode(packed, 7, values.size)
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0
    assert np.abs(decoded - np.clip(values, -0.1, 0.1)).max() <= codec.step
