"""Per-tensor clipping (the default secure encoding): codec, bounds, clip counts, runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import breast_cancer_sites, create_run, wait_for_state
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
from client.schemes.paillier import clip_metrics, decrypt_sums, encrypt_update
from client.schemes.paillier_model import SecureModelState, ServerOptimiser, flatten
from coordinator.runs import DEFAULT_ENCODING, RunSpec
from crypto.codec import (
    HEADROOM,
    INITIAL_SCALE,
    MIN_BOUND,
    PER_TENSOR,
    SPREAD,
    ZERO_TENSOR_BOUND,
    expand_bounds,
    initial_bounds,
    next_bounds,
)
from crypto.packing import pack_slots
from protos import common_pb2

DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_STOPPED)


def per_tensor_codec(key_bits: int = 2048, max_weight: int = 4096) -> crypto.SlotCodec:
    return crypto.SlotCodec(clip=PER_TENSOR, bits=8, max_weight=max_weight, key_bits=key_bits)


@st.composite
def per_tensor_rounds(draw: st.DrawFn) -> tuple[list[int], np.ndarray, list[np.ndarray], list[int]]:
    """Tensor sizes, per-tensor bounds spanning decades, client updates and weights."""
    sizes = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    bounds = np.array(
        [draw(st.floats(1e-5, 1e3, allow_nan=False)) for _ in sizes], dtype=np.float64
    )
    clients = draw(st.integers(1, 4))
    scale = expand_bounds(bounds, sizes)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Values up to twice each bound, so clipping bites on some of them.
    updates = [rng.uniform(-2, 2, scale.size) * scale for _ in range(clients)]
    weights = [draw(st.integers(1, 1000)) for _ in range(clients)]
    return sizes, bounds, updates, weights


@settings(max_examples=40, deadline=None)
@given(per_tensor_rounds())
def test_round_trip_with_per_tensor_bounds(case) -> None:  # type: ignore[no-untyped-def]
    sizes, bounds, updates, weights = case
    codec = per_tensor_codec()
    clip = expand_bounds(bounds, sizes)
    rng = np.random.default_rng(0)
    sums = [0] * codec.num_plaintexts(clip.size)
    for update, weight in zip(updates, weights, strict=True):
        # The plaintexts add exactly as their ciphertexts would.
        sums = [a + b for a, b in zip(sums, codec.encode(update, weight, rng, clip), strict=True)]
    decoded = codec.decode(sums, sum(weights), clip.size, clip)
    clipped = [np.clip(u, -clip, clip) for u in updates]
    expected = sum(w * c for w, c in zip(weights, clipped, strict=True)) / sum(weights)
    step = clip / codec.offset
    # Each value within one step of its own tensor's grid, never a neighbour's.
    assert np.all(np.abs(decoded - expected) <= step * (1 + 1e-9))


def test_default_layout_is_102_slots_of_20_bits_whatever_the_bounds() -> None:
    codec = per_tensor_codec()
    assert (codec.slot_bits, codec.slots_per_plaintext) == (20, 102)
    # The coordinator's expected ciphertext count needs no bounds at all.
    assert codec.num_plaintexts(62_006) == 608
    assert 608 * 512 / (62_006 * 4) < 1.3


def test_per_tensor_codec_demands_bounds_and_global_codec_refuses_them() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one clip bound per value"):
        per_tensor_codec().encode(np.zeros(3), 1, rng)
    with pytest.raises(ValueError, match="2 clip bounds for 3 values"):
        per_tensor_codec().encode(np.zeros(3), 1, rng, np.ones(2))
    with pytest.raises(ValueError, match="positive finite"):
        per_tensor_codec().encode(np.zeros(2), 1, rng, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="positive finite"):
        per_tensor_codec().decode([0], 1, 2, np.array([1.0, np.inf]))
    glob = crypto.SlotCodec(clip=1.0, bits=8, max_weight=10, key_bits=1024)
    with pytest.raises(ValueError, match="got bounds too"):
        glob.encode(np.zeros(2), 1, rng, np.ones(2))
    with pytest.raises(ValueError, match="one step per tensor"):
        _ = per_tensor_codec().step


def test_overflow_is_still_refused_per_tensor() -> None:
    codec = per_tensor_codec(key_bits=1024, max_weight=100)
    clip = np.ones(5)
    with pytest.raises(OverflowError):
        codec.check_total_weight(101)
    with pytest.raises(OverflowError):
        codec.decode(codec.encode(np.zeros(5), 1, np.random.default_rng(0), clip), 101, 5, clip)
    # A slot one above the largest honest sum (2 * offset * Σw) is refused, not decoded.
    limit = 2 * codec.offset * 3
    forged = pack_slots(
        np.array([limit + 1, 0, 0, 0, 0], dtype=np.uint64),
        codec.slot_bits,
        codec.slots_per_plaintext,
    )
    with pytest.raises(OverflowError, match="above the largest possible sum"):
        codec.decode(forged, 3, 5, clip)
    with pytest.raises(ValueError, match="weight must be between"):
        codec.encode(np.zeros(5), 101, np.random.default_rng(0), clip)


def test_initial_bounds_follow_the_public_model() -> None:
    tensors = [np.array([[0.5, -0.25]]), np.zeros(4), np.array([-3.0]), np.zeros(0)]
    bounds = initial_bounds(tensors)
    assert bounds.tolist() == [
        INITIAL_SCALE * 0.5,
        ZERO_TENSOR_BOUND,
        INITIAL_SCALE * 3.0,
        ZERO_TENSOR_BOUND,
    ]
    with pytest.raises(ValueError, match="non-finite"):
        initial_bounds([np.array([np.nan])])


def test_next_bounds_follow_each_value_within_a_spread_of_its_tensor() -> None:
    mean = np.array([0.5, -0.001, 0.0, 0.0, 0.1])  # tensors of 2, 2 and 1 values
    out = next_bounds(mean, [2, 2, 1])
    assert out.tolist() == [
        HEADROOM * 0.5,
        HEADROOM * 0.5 / SPREAD,  # barely moved: still a share of its tensor's room
        MIN_BOUND,  # a tensor that did not move at all keeps a positive bound
        MIN_BOUND,
        HEADROOM * 0.1,
    ]
    with pytest.raises(ValueError, match="for tensors of"):
        next_bounds(mean, [2, 2])


def test_clipping_is_counted() -> None:
    codec = per_tensor_codec()
    delta = np.array([0.5, -2.0, 3.0, 0.01, -0.02])
    clip = expand_bounds(np.array([1.0, 0.015]), [3, 2])
    metrics = clip_metrics(delta, codec, clip)
    assert metrics == {"clipped_values": 3, "clipped_fraction": 0.6}
    # A value exactly on the bound is representable, not clipped.
    assert clip_metrics(np.array([1.0, -1.0]), codec, np.ones(2))["clipped_values"] == 0
    glob = crypto.SlotCodec(clip=16.0, bits=20, max_weight=4096, key_bits=2048)
    assert clip_metrics(np.array([17.0, -16.0, 0.0]), glob)["clipped_values"] == 1


@pytest.fixture(scope="module")
def small_key():  # type: ignore[no-untyped-def]
    return crypto.generate_keypair(1024, insecure_test_size=True)


def test_every_site_derives_the_same_bounds_from_the_same_aggregates(small_key) -> None:  # type: ignore[no-untyped-def]
    """Three sites, two rounds of real Paillier aggregates: identical bounds throughout."""
    public_key, private_key = small_key
    codec = per_tensor_codec(key_bits=public_key.n.bit_length())
    initial = [
        np.random.default_rng(1).normal(0, 0.2, (6, 4)),
        np.zeros(6),  # a normaliser's running mean
        np.ones(6),  # its running variance
    ]
    states = [
        SecureModelState(flatten(initial), [a.copy() for a in initial], ServerOptimiser())
        for _ in range(3)
    ]
    data_rng = np.random.default_rng(7)
    history = []
    for _ in range(2):
        payloads = []
        for site, state in enumerate(states):
            clip = state.clip_for(codec)
            delta = data_rng.normal(0, 0.05, state.weights.size)
            delta[24:30] += 8.0 + site  # normaliser means move past the first bound
            payloads.append(
                crypto.encrypt_packed(
                    public_key, codec.encode(delta, 10, np.random.default_rng(site), clip)
                )
            )
        aggregate = crypto.add_encrypted(payloads, public_key)
        payload = crypto.ciphertexts_to_bytes(aggregate, crypto.ciphertext_width(public_key))
        for state in states:
            clip = state.clip_for(codec)
            mean = codec.decode(decrypt_sums(payload, private_key), 30, state.weights.size, clip)
            state.weights = state.optimiser.step(state.weights, mean)
            state.carry_bounds(mean, codec)
        history.append(states[0].value_bounds().copy())
        for state in states[1:]:
            assert state.value_bounds().tobytes() == states[0].value_bounds().tobytes()
            assert state.weights.tobytes() == states[0].weights.tobytes()
    # Round one clipped the normaliser means at 8 on average: their bounds widened at once.
    assert np.all(history[0][24:30] > HEADROOM * 0.9 * ZERO_TENSOR_BOUND)
    # Round two's means (~9) fit, so the bounds follow them with headroom.
    assert np.all((history[1][24:30] > HEADROOM * 8.0) & (history[1][24:30] < HEADROOM * 10.0))
    # A different aggregate gives different bounds: they really come from the data.
    other = SecureModelState(flatten(initial), initial, ServerOptimiser())
    other.carry_bounds(np.full(other.weights.size, 0.5), codec)
    assert other.value_bounds().tobytes() != history[0].tobytes()


def test_encrypt_update_with_bounds_round_trips(small_key) -> None:  # type: ignore[no-untyped-def]
    public_key, private_key = small_key
    codec = per_tensor_codec(key_bits=public_key.n.bit_length())
    clip = expand_bounds(np.array([1e-3, 10.0]), [3, 2])
    delta = np.array([5e-4, -2e-3, 0.0, 7.0, -9.0])
    payload = encrypt_update(delta, 4, codec, public_key, np.random.default_rng(3), clip=clip)
    decoded = codec.decode(decrypt_sums(payload, private_key), 4, 5, clip)
    assert np.all(np.abs(decoded - np.clip(delta, -clip, clip)) <= clip / codec.offset)


def test_run_defaults_are_per_tensor_8_bit_and_explicit_encodings_are_kept() -> None:
    assert DEFAULT_ENCODING["clip"] == PER_TENSOR and DEFAULT_ENCODING["bits"] == 8
    spec = RunSpec(model="tabular_mlp", min_clients=3, secure="paillier")
    spec.validate()
    assert spec.settings().encoding.as_dict() == DEFAULT_ENCODING
    legacy = RunSpec(
        model="tabular_mlp",
        min_clients=3,
        secure="paillier",
        config={"encoding": {"clip": 16.0, "bits": 20}},
    )
    legacy.validate()
    encoding = legacy.settings().encoding
    assert (encoding.clip, encoding.bits) == (16.0, 20)
    for bad in (-1.0, float("inf"), float("nan"), "16", True):
        with pytest.raises(ValueError, match="clip"):
            RunSpec(
                model="tabular_mlp",
                min_clients=3,
                secure="paillier",
                config={"encoding": {"clip": bad}},
            ).validate()


@pytest.mark.slow
def test_secure_run_at_the_default_encoding_learns_and_reports_clipping(
    coordinator, agents, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    sites = agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()
    # Only the key size differs from what a user gets (1024 bits keeps the test quick).
    run = create_run(admin, secure=True, rounds=3, encoding={"key_bits": 1024})
    info = wait_for_state(admin, run.run_id, DONE, timeout=240)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    stored = json.loads(info.config_json)["encoding"]
    assert (stored["clip"], stored["bits"]) == (PER_TENSOR, 8)
    for round_info in info.round_infos:
        assert "clipped_fraction" in round_info.metrics
        # Later rounds clip the values on which sites disagree (bounds follow the mean):
        # some per cent, reported; never most of an update.
        assert 0.0 <= round_info.metrics["clipped_fraction"] < 0.25
    finals = [site.export_model(run.run_id) for site in sites]
    for final in finals[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(final, finals[0], strict=True))
    bounds = [site.secure.states[run.run_id].value_bounds() for site in sites]
    assert all(b.tobytes() == bounds[0].tobytes() for b in bounds[1:])
    assert info.round_infos[-1].metrics["eval_accuracy"] > 0.85
