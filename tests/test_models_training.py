"""Local training and evaluation: determinism, metrics, FedProx, prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import TabularDataset, build_model, evaluate, get_weights, predict_proba, train
from models.datasets import make_credit_default
from models.device import autocast_context, select_device
from models.training import roc_auc

CPU = torch.device("cpu")


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("tabular_mlp", in_features=10, hidden=(16,))


def test_same_seed_gives_bit_identical_weights() -> None:
    data = make_credit_default(200, seed=1)
    a, b = _mlp(), _mlp()

    train(a, data, epochs=2, lr=1e-2, seed=7, device=CPU)
    train(b, data, epochs=2, lr=1e-2, seed=7, device=CPU)

    for x, y in zip(get_weights(a), get_weights(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_training_leaves_the_callers_random_state_alone() -> None:
    model, data = _mlp(), make_credit_default(64, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)

    train(model, data, epochs=1, lr=1e-2, device=CPU)

    assert torch.equal(torch.rand(1), expected)


def test_proximal_term_keeps_weights_closer_to_the_start() -> None:
    data = make_credit_default(300, seed=2)
    start = get_weights(_mlp())
    free, prox = _mlp(), _mlp()

    train(free, data, epochs=3, lr=3e-2, device=CPU)
    train(prox, data, epochs=3, lr=3e-2, proximal_mu=10.0, device=CPU)

    def drift(model: torch.nn.Module) -> float:
        return sum(
            float(((w - s) ** 2).sum()) for w, s in zip(get_weights(model), start, strict=True)
        )

    assert drift(prox) < drift(free)


def test_evaluate_reports_loss_accuracy_and_auc() -> None:
    data = make_credit_default(400, seed=3)
    model = _mlp()
    train(model, data, epochs=5, lr=1e-2, device=CPU)

    result = evaluate(model, data, device=CPU)

    assert set(result) >= {"loss", "accuracy", "roc_auc", "num_examples"}
    assert result["roc_auc"] > 0.7 and 0.0 <= result["accuracy"] <= 1.0


def test_auc_is_nan_when_the_held_out_data_has_one_class() -> None:
    data = TabularDataset(np.random.default_rng(0).normal(size=(10, 10)), np.zeros(10))

    assert math.isnan(evaluate(_mlp(), data, device=CPU)["roc_auc"])


def test_multiclass_auc_is_one_vs_rest_macro_over_present_classes() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3

    assert roc_auc(labels, probs) == pytest.approx(1.0)
    assert roc_auc(labels[labels < 2], probs[labels < 2]) == pytest.approx(1.0)


def test_predict_proba_rows_sum_to_one() -> None:
    x = torch.randn(7, 10)

    probs = predict_proba(_mlp(), {"x": x}, device=CPU)

    assert probs.shape == (7, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_cpu_is_chosen_without_cuda_and_autocast_is_a_no_op_there() -> None:
    if not torch.cuda.is_available():
        assert select_device() == CPU
        with pytest.raises(ValueError, match="CUDA"):
            select_device("cuda")
    with autocast_context(CPU):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
