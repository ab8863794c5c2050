"""The tabular audit's fast model call: folded batch norm, inference mode, one torch thread.

Folding must be exact up to float rounding, must never touch the caller's model, and must
step aside for a model whose layers do not run in the order its ``nn.Sequential`` lists
them; the thread setting must come back whatever happens during the audit.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from explain.site_audit import audit_tabular, permutation_values
from explain.torch_adapter import folded_for_inference, tabular_predictor, torch_threads
from models import build_model, predict_proba

FEATURES = 6


def _trained_mlp() -> nn.Module:
    """A tabular MLP whose input normaliser has non-trivial running statistics."""
    torch.manual_seed(0)
    model = build_model("tabular_mlp", in_features=FEATURES, num_classes=3, hidden=(16, 8))
    model.train()
    with torch.no_grad():
        for _ in range(5):  # momentum=None: a cumulative average of these batches
            model(torch.randn(64, FEATURES) * 3.0 + 2.0)
    return model


def _rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(2.0, 3.0, size=(n, FEATURES))


def _reference(model: nn.Module, rows: np.ndarray) -> np.ndarray:
    return predict_proba(model, {"x": torch.as_tensor(rows, dtype=torch.float32)}, device=None)


def test_folded_mlp_has_no_batch_norm_or_dropout_and_the_same_probabilities() -> None:
    model = _trained_mlp()
    rows = _rows(200)
    folded = folded_for_inference(copy.deepcopy(model).eval())

    kinds = {type(m) for m in folded.modules()}
    assert nn.BatchNorm1d not in kinds and nn.Dropout not in kinds
    predict = tabular_predictor(model, rows[:20])
    np.testing.assert_allclose(predict(rows), _reference(model, rows), atol=1e-6)


def test_linear_then_affine_batch_norm_folds_exactly() -> None:
    torch.manual_seed(3)
    norm = nn.BatchNorm1d(5)
    model = nn.Sequential(nn.Linear(FEATURES, 5), norm, nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    model.eval()
    rows = _rows(100)

    predict = tabular_predictor(model, rows[:10])

    assert len(folded_for_inference(copy.deepcopy(model))) == 3
    expected = torch.softmax(model(torch.as_tensor(rows, dtype=torch.float32)), 1)
    np.testing.assert_allclose(predict(rows), expected.detach().numpy(), atol=1e-6)


class OutOfOrder(nn.Module):
    """Hostile layout: calls its Sequential's layers by index, not front to back.

    Folded, ``layers[0]`` becomes batch norm and first Linear in one and ``layers[1]`` the
    second Linear: shapes still fit, so the function changes without an error. The
    predictor must notice and run the model unfolded.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.layers = nn.Sequential(
            nn.BatchNorm1d(FEATURES),
            nn.Linear(FEATURES, FEATURES),
            nn.Linear(FEATURES, FEATURES),
        )
        self.head = nn.Linear(FEATURES, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers[1](x) + self.layers[0](x))


def test_a_model_that_folding_would_change_is_run_unfolded() -> None:
    model = OutOfOrder()
    with torch.no_grad():
        model.layers[0].running_mean.fill_(1.5)
        model.layers[0].running_var.fill_(4.0)
    model.eval()
    rows = _rows(50)

    folded = folded_for_inference(copy.deepcopy(model))
    x = torch.as_tensor(rows, dtype=torch.float32)
    assert not torch.allclose(folded(x), model(x), atol=1e-3)  # folding would be wrong here

    predict = tabular_predictor(model, rows[:10])

    expected = torch.softmax(model(x), 1)
    np.testing.assert_allclose(predict(rows), expected.detach().numpy(), atol=1e-6)


def test_the_callers_model_keeps_its_mode_statistics_and_layers() -> None:
    model = _trained_mlp()  # left in training mode, as a trainer might
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = len(model.body)

    audit_tabular(model, _rows(40), _rows(30, seed=2), [f"f{i}" for i in range(FEATURES)])

    assert model.training
    assert len(model.body) == layers
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # no running statistic moved


def test_module_and_function_audits_agree_and_add_up() -> None:
    model = _trained_mlp()
    background, rows = _rows(40), _rows(60, seed=2)
    names = [f"f{i}" for i in range(FEATURES)]

    def proba(x: np.ndarray) -> np.ndarray:
        return _reference(model, x)

    with_module = audit_tabular(model, background, rows, names, explain_rows=20, seed=7)
    with_function = audit_tabular(proba, background, rows, names, explain_rows=20, seed=7)

    np.testing.assert_allclose(with_module.mean_abs, with_function.mean_abs, atol=1e-6)
    assert "torch model in inference mode" in with_module.explainer
    assert "torch model" not in with_function.explainer
    # Efficiency through the fast call: values add up to f(x) - E[f(background)].
    predict = tabular_predictor(model, background)
    values, base = permutation_values(predict, background, rows[:5], 10 * (2 * FEATURES + 1))
    np.testing.assert_allclose(values.sum(axis=1), predict(rows[:5]) - base, atol=1e-5)


def test_thread_count_comes_back_even_when_the_model_fails() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    def failing(x: np.ndarray) -> np.ndarray:
        seen.append(torch.get_num_threads())
        if len(seen) > 2:
            raise RuntimeError("model broke mid-audit")
        return np.tile([0.5, 0.5], (len(x), 1))

    with pytest.raises(RuntimeError, match="mid-audit"):
        audit_tabular(failing, _rows(10), _rows(10, seed=2), [f"f{i}" for i in range(FEATURES)])

    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1"), torch_threads(0):
        pass


class ByName(nn.Module):
    """Reaches a Sequential's layers by name: folding renames them ``0, 1, ...``."""

    def __init__(self) -> None:
        super().__init__()
        from collections import OrderedDict

        torch.manual_seed(5)
        self.layers = nn.Sequential(
            OrderedDict(norm=nn.BatchNorm1d(FEATURES), fc=nn.Linear(FEATURES, 2))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers.fc(self.layers.norm(x))


def test_a_model_reaching_its_layers_by_name_is_run_unfolded() -> None:
    model = ByName().eval()
    rows = _rows(30)

    predict = tabular_predictor(model, rows[:10])

    expected = torch.softmax(model(torch.as_tensor(rows, dtype=torch.float32)), 1)
    np.testing.assert_allclose(predict(rows), expected.detach().numpy(), atol=1e-6)
