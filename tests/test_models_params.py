"""Exchanged parameters: order, round trip, shape checks and the frozen-base hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import base_model_hash, build_model, get_weights, set_weights, weight_names
from models.lora import apply_lora, parse_lora_spec


def _cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("image_cnn", widths=(4, 8))


def test_integer_buffers_are_not_exchanged_but_float_buffers_are() -> None:
    names = weight_names(_cnn(0))

    assert not any(n.endswith("num_batches_tracked") for n in names)
    assert "stem_bn.running_mean" in names


def test_weights_round_trip_into_a_differently_initialised_model() -> None:
    source, target = _cnn(0), _cnn(1)

    set_weights(target, get_weights(source))

    for a, b in zip(get_weights(source), get_weights(target), strict=True):
        np.testing.assert_array_equal(a, b)


def test_wrong_shape_is_rejected_naming_the_tensor() -> None:
    model = _cnn(0)
    weights = get_weights(model)
    weights[1] = np.zeros(weights[1].shape[0] + 1, dtype=np.float32)

    with pytest.raises(ValueError, match=weight_names(model)[1]):
        set_weights(model, weights)


def test_wrong_count_is_rejected() -> None:
    model = _cnn(0)

    with pytest.raises(ValueError, match="expected"):
        set_weights(model, get_weights(model)[:-1])


def test_base_hash_is_equal_for_same_seed_and_differs_after_a_base_change() -> None:
    spec = parse_lora_spec("r=2")
    a, b = apply_lora(_cnn(0), spec), apply_lora(_cnn(0), spec)
    assert base_model_hash(a) == base_model_hash(b)

    frozen = next(p for p in b.parameters() if not p.requires_grad)
    with torch.no_grad():
        frozen.add_(1e-3)

    assert base_model_hash(a) != base_model_hash(b)


def test_base_hash_ignores_exchanged_adapters() -> None:
    model = apply_lora(_cnn(0), parse_lora_spec("r=2"))
    before = base_model_hash(model)

    set_weights(model, [w + 1.0 for w in get_weights(model)])

    assert base_model_hash(model) == before


def test_base_hash_differs_between_architectures() -> None:
    small = build_model("tabular_mlp", in_features=4, hidden=(8,))
    wide = build_model("tabular_mlp", in_features=4, hidden=(16,))

    assert base_model_hash(small) != base_model_hash(wide)
