"""Site-side SHAP audits: shapes, planted signals ranked first, noise and row limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.row_sample import mean_abs_halfwidth
from explain.site_audit import audit_tabular, audit_torch, permutation_values

N_FEATURES = 8


def _logistic(x: np.ndarray) -> np.ndarray:
    """A fixed logistic model in which feature 3 drives the label, feature 0 barely."""
    logit = 3.0 * x[:, 3] + 0.3 * x[:, 0]
    positive = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1.0 - positive, positive], axis=1)


@pytest.fixture(scope="module")
def tabular_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(80, N_FEATURES)), rng.normal(size=(300, N_FEATURES))


def test_tabular_audit_ranks_the_planted_feature_first(
    tabular_data: tuple[np.ndarray, np.ndarray],
) -> None:
    background, rows = tabular_data
    names = [f"f{i}" for i in range(N_FEATURES)]

    summary = audit_tabular(
        _logistic,
        background,
        rows,
        names,
        ["benign", "malignant"],
        site="st-marys",
        max_rows=200,
        explain_rows=120,
    )

    assert summary.kind == "tabular"
    assert summary.site == "st-marys"
    assert summary.row_count == 120
    assert summary.feature_names == names
    assert len(summary.mean_abs) == N_FEATURES
    assert list(summary.mean_signed) == ["benign", "malignant"]
    assert all(len(v) == N_FEATURES for v in summary.mean_signed.values())
    assert int(np.argmax(summary.mean_abs)) == 3
    assert np.argsort(summary.mean_abs)[-2] == 0
    unused = [summary.mean_abs[i] for i in (1, 2, 4, 5, 6, 7)]
    assert max(unused) < 1e-9
    # With two classes the probabilities, hence the attributions, mirror each other.
    assert summary.mean_signed["malignant"][3] == pytest.approx(-summary.mean_signed["benign"][3])
    assert sum(summary.base_value) == pytest.approx(1.0)
    assert "PermutationExplainer" in summary.explainer
    assert "sample of 120 of 200 held-out rows; 95% CI" in summary.explainer


def test_tabular_audit_adds_noise_of_the_stated_scale(
    tabular_data: tuple[np.ndarray, np.ndarray],
) -> None:
    background, rows = tabular_data
    names = [f"f{i}" for i in range(N_FEATURES)]

    clean = audit_tabular(_logistic, background, rows, names, max_rows=40, seed=3)
    noisy = audit_tabular(_logistic, background, rows, names, max_rows=40, seed=3, noise_scale=0.02)

    assert noisy.noise_scale == 0.02
    assert clean.noise_scale == 0.0
    diffs = np.concatenate(
        [
            np.subtract(noisy.mean_abs, clean.mean_abs),
            *(np.subtract(noisy.mean_signed[c], clean.mean_signed[c]) for c in clean.class_names),
        ]
    )
    assert np.all(diffs != 0.0)
    assert 0.01 < diffs.std() < 0.03


def test_tabular_audit_is_reproducible_for_a_seed(
    tabular_data: tuple[np.ndarray, np.ndarray],
) -> None:
    background, rows = tabular_data
    names = [f"f{i}" for i in range(N_FEATURES)]

    first = audit_tabular(_logistic, background, rows, names, max_rows=30, seed=5)
    second = audit_tabular(_logistic, background, rows, names, max_rows=30, seed=5)

    assert first == second


def test_tabular_audit_rejects_rows_of_the_wrong_width(
    tabular_data: tuple[np.ndarray, np.ndarray],
) -> None:
    background, rows = tabular_data

    with pytest.raises(ValueError, match="rows must be"):
        audit_tabular(_logistic, background, rows[:, :3], [f"f{i}" for i in range(N_FEATURES)])


class TopLeftCNN(nn.Module):
    """Tiny CNN that can only see the top-left quarter of an 8x8 image."""

    mask: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)
        mask = torch.zeros(1, 1, 8, 8)
        mask[..., :2, :2] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image * self.mask)).flatten(1))


def test_image_audit_returns_per_region_attributions() -> None:
    torch.manual_seed(1)
    images = torch.rand(40, 1, 8, 8)
    model = TopLeftCNN()

    summary = audit_torch(
        model, {"image": images[:24]}, {"image": images[24:]}, "image", nsamples=16
    )

    assert summary.kind == "image"
    assert summary.feature_names == [f"region_{r}_{c}" for r in range(4) for c in range(4)]
    assert summary.class_names == ["class_0", "class_1", "class_2"]
    assert summary.row_count == 24
    assert len(summary.mean_abs) == 16
    assert int(np.argmax(summary.mean_abs)) == 0
    assert max(summary.mean_abs[1:]) < 1e-6
    assert "GradientExplainer" in summary.explainer
    assert model.training  # the audit restores the caller's mode
    assert all(p.grad is None for p in model.parameters())


class FirstTokensClassifier(nn.Module):
    """Token model that reads only positions 0 and 1, with a position embedding as a decoy."""

    keep: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(30, 8)
        self.positions = nn.Embedding(12, 8)
        self.head = nn.Linear(12 * 8, 2)
        keep = torch.zeros(1, 12, 1)
        keep[:, :2] = 1.0
        self.register_buffer("keep", keep)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1]))
        hidden = hidden * self.keep * attention_mask.unsqueeze(-1)
        return self.head(hidden.flatten(1))


def test_text_audit_attributes_the_token_positions_the_model_reads() -> None:
    torch.manual_seed(2)
    ids = torch.randint(1, 30, (36, 12))
    mask = torch.ones(36, 12, dtype=torch.long)
    model = FirstTokensClassifier()

    summary = audit_torch(
        model,
        {"input_ids": ids[:20], "attention_mask": mask[:20]},
        {"input_ids": ids[20:], "attention_mask": mask[20:]},
        "text",
        position_buckets=6,
        nsamples=16,
    )

    assert summary.feature_names == [f"tokens_{2 * i}_{2 * i + 1}" for i in range(6)]
    assert int(np.argmax(summary.mean_abs)) == 0
    assert summary.mean_abs[0] > 0
    assert max(summary.mean_abs[1:]) < 1e-6
    assert "inputs=input_ids" in summary.explainer


class ImageIgnoringFusion(nn.Module):
    """Image + tabular model whose image branch is switched off."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_branch = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        self.tabular_branch = nn.Linear(5, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, image: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head(0.0 * self.image_branch(image) + self.tabular_branch(x))


def test_multimodal_audit_reports_each_modality_share() -> None:
    torch.manual_seed(3)
    inputs = {"image": torch.rand(30, 1, 8, 8), "x": torch.randn(30, 5)}
    rows = {k: v[:18] for k, v in inputs.items()}
    background = {k: v[18:] for k, v in inputs.items()}

    summary = audit_torch(ImageIgnoringFusion(), rows, background, "multimodal", nsamples=16)

    assert summary.feature_names == ["image", "tabular"]
    assert summary.shares[1] == pytest.approx(1.0)
    assert summary.mean_abs[0] == pytest.approx(0.0, abs=1e-9)


def test_torch_audit_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        audit_torch(
            TopLeftCNN(),
            {"image": torch.rand(2, 1, 8, 8)},
            {"image": torch.rand(2, 1, 8, 8)},
            "video",
        )


def test_image_audit_of_two_inputs_is_rejected() -> None:
    images = torch.rand(4, 1, 8, 8)
    batch = {"image": images, "other": images}

    with pytest.raises(ValueError, match="exactly one input"):
        audit_torch(TopLeftCNN(), batch, batch, "image", explain_keys=["image", "other"])


def test_audits_leave_the_global_numpy_rng_alone() -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    images = torch.rand(6, 1, 8, 8)

    audit_torch(TopLeftCNN(), {"image": images[:3]}, {"image": images[3:]}, "image", nsamples=4)

    assert np.random.random() == expected


def test_multimodal_audit_explains_the_registry_model_through_its_token_embedding() -> None:
    models = pytest.importorskip("models")
    torch.manual_seed(4)
    model = models.build_model(
        "multimodal",
        vocab_size=20,
        dim=16,
        heads=2,
        layers=1,
        image_widths=(4, 8),
        tabular_features=3,
    )
    ids = torch.randint(1, 20, (10, 6))
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "image": torch.rand(10, 1, 8, 8),
        "tabular": torch.randn(10, 3),
    }

    summary = audit_torch(
        model,
        {k: v[:4] for k, v in inputs.items()},
        {k: v[4:] for k, v in inputs.items()},
        "multimodal",
        nsamples=4,
    )

    assert summary.feature_names == ["text", "image", "tabular"]
    assert summary.mean_abs[0] > 0
    assert "inputs=input_ids,image,tabular" in summary.explainer


class _SmallMLP(nn.Module):
    """A fixed, untrained 5-feature MLP: nonlinear enough that SHAP is not just w * x."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))

    def proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.net(torch.as_tensor(x, dtype=torch.float32))
        return torch.softmax(3 * logits, dim=1).double().numpy()


def test_tabular_values_agree_with_exact_shap_and_add_up() -> None:
    """Within 10% (mean abs error / mean abs value) of exact Shapley values.

    ExactExplainer enumerates all 2^5 coalitions: the reference is the true interventional
    Shapley value over the same background. The audit's default budget, 10 antithetic
    permutations, measured 2-3% here (seeds 0-2); 10% leaves room for sampling, not for a
    wrong game (base values from other rows, a dropped background).
    """
    import shap

    model = _SmallMLP()
    rng = np.random.default_rng(3)
    background, rows = rng.normal(size=(40, 5)), rng.normal(size=(12, 5))
    exact = shap.ExactExplainer(model.proba, shap.maskers.Independent(background, max_samples=40))
    reference = np.asarray(exact(rows).values)

    values, base = permutation_values(model.proba, background, rows, max_evals=10 * 11, seed=0)

    assert values.shape == reference.shape == (12, 5, 3)
    error = np.abs(values - reference).mean() / np.abs(reference).mean()
    assert np.abs(reference).mean() > 0.01  # a real signal to be wrong about
    assert error < 0.1, error
    # Additivity: each row's attributions sum to f(x) minus the background's mean output.
    np.testing.assert_allclose(values.sum(axis=1), model.proba(rows) - base, atol=1e-9)
    np.testing.assert_allclose(base[0], model.proba(background).mean(axis=0), atol=1e-9)


def test_audit_of_a_sample_states_an_interval_that_covers_the_all_rows_mean() -> None:
    model = _SmallMLP()
    rng = np.random.default_rng(4)
    background, rows = rng.normal(size=(30, 5)), rng.normal(size=(400, 5))
    names = [f"f{i}" for i in range(5)]

    everything = audit_tabular(model.proba, background, rows, names, explain_rows=400)
    sampled = audit_tabular(model.proba, background, rows, names, explain_rows=80, seed=1)

    assert everything.row_count == 400 and sampled.row_count == 80
    assert "all 400 held-out rows explained" in everything.explainer
    stated = float(sampled.explainer.rsplit("±", 1)[1])
    assert 0 < stated < 0.5 * max(everything.mean_abs)
    # The stated bound is the widest feature's; every feature's mean falls inside it.
    errors = np.abs(np.subtract(sampled.mean_abs, everything.mean_abs))
    assert np.all(errors <= stated)


def test_interval_half_width_follows_the_finite_population_correction() -> None:
    values = np.random.default_rng(0).normal(size=(50, 4, 2))

    assert np.all(mean_abs_halfwidth(values, population=50) == 0.0)
    wide = mean_abs_halfwidth(values, population=10_000)
    narrow = mean_abs_halfwidth(values, population=60)
    assert np.all(narrow < wide) and np.all(wide > 0)
    with pytest.raises(ValueError, match="population of 40"):
        mean_abs_halfwidth(values, population=40)
