"""Datasets that yield ``(inputs, label)`` pairs, ``inputs`` being the model's keyword tensors."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from models.tokenizer import WordTokenizer

Example = tuple[dict[str, torch.Tensor], torch.Tensor]


class DictDataset(Dataset[Example]):
    """Rows of named tensors plus an int64 label; the names are the model's forward kwargs.

    Every Cohort model is called as ``model(**inputs)``, so one dataset type serves the
    MLP (``x``), the CNN (``image``), the text encoder (``input_ids``, ``attention_mask``)
    and the multimodal model (any mix of those). PyTorch's default collate stacks dicts
    of tensors, so no custom collate function is needed.

    Parameters
    ----------
    inputs
        Name -> tensor whose first dimension is the row.
    labels
        Integer class labels, one per row.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | np.ndarray) -> None:
        labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        for name, tensor in inputs.items():
            if tensor.shape[0] != labels_t.shape[0]:
                raise ValueError(
                    f"input {name!r} has {tensor.shape[0]} rows but there are "
                    f"{labels_t.shape[0]} labels"
                )
        self.inputs = inputs
        self.labels = labels_t

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Example:
        return {k: v[index] for k, v in self.inputs.items()}, self.labels[index]

    @property
    def num_classes(self) -> int:
        """Number of classes seen in the labels (max label + 1)."""
        return int(self.labels.max().item()) + 1 if len(self) else 0

    def subset(self, indices: np.ndarray | list[int]) -> DictDataset:
        """Return the rows at ``indices`` as a new dataset (used to split sites and folds)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return DictDataset({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx])

    def select(self, names: list[str]) -> DictDataset:
        """Keep only the named inputs (e.g. the image alone, for a single-modality baseline)."""
        missing = [n for n in names if n not in self.inputs]
        if missing:
            raise ValueError(f"no inputs named {missing}; have {sorted(self.inputs)}")
        return DictDataset({n: self.inputs[n] for n in names}, self.labels)


class TabularDataset(DictDataset):
    """Feature matrix and labels; yields ``({"x": float32 [F]}, int64 label)``.

    Parameters
    ----------
    x
        Features ``[rows, features]``, already scaled the same way at every site.
    y
        Integer labels.
    feature_names
        Column names, kept for SHAP reports.
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, feature_names: list[str] | None = None
    ) -> None:
        x_arr = np.asarray(x, dtype=np.float32)
        if x_arr.ndim != 2:
            raise ValueError(f"x must be 2-D [rows, features], got shape {x_arr.shape}")
        if feature_names is not None and len(feature_names) != x_arr.shape[1]:
            raise ValueError(f"{len(feature_names)} feature names for {x_arr.shape[1]} columns")
        super().__init__({"x": torch.from_numpy(x_arr.copy())}, y)
        self.feature_names = feature_names or [f"x{i}" for i in range(x_arr.shape[1])]
        self.raw: np.ndarray | None = None


class TextDataset(DictDataset):
    """Texts tokenised with a shared tokenizer; yields ``input_ids`` and ``attention_mask``."""

    def __init__(
        self, texts: list[str], labels: np.ndarray, tokenizer: WordTokenizer, max_len: int = 32
    ) -> None:
        ids, mask = tokenizer.encode(texts, max_len)
        super().__init__({"input_ids": ids, "attention_mask": mask}, labels)
        self.texts = texts
        self.tokenizer = tokenizer


def load_digits_images() -> DictDataset:
    """sklearn's 1,797 handwritten digits as ``image [1, 8, 8]`` in ``[0, 1]``, 10 classes.

    Shipped with scikit-learn, so the image pipeline can be exercised offline.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return DictDataset({"image": images}, digits.target)


def make_audio_tones(
    n: int, seed: int, *, num_classes: int = 3, sample_rate: int = 8000, seconds: float = 0.25
) -> DictDataset:
    """Noisy tones whose class is the pitch band (class ``k`` near ``300 * 2**k`` Hz).

    A stand-in for recorded audio: it exercises the spectrogram and the audio encoder
    without shipping recordings.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    freq = 300.0 * 2.0**labels * rng.uniform(0.9, 1.1, size=n)
    amplitude = rng.uniform(0.3, 1.0, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    waves = amplitude[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None, :] + phase[:, None])
    waves += rng.normal(0.0, 0.3, size=waves.shape)
    return DictDataset({"audio": torch.tensor(waves, dtype=torch.float32)}, labels)


CREDIT_FEATURES = [
    "age",
    "annual_income_k",
    "credit_limit_k",
    "utilization",
    "months_employed",
    "late_payments_12m",
    "debt_to_income",
    "open_accounts",
    "has_mortgage",
    "prior_default",
]


def _credit_rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    age = rng.uniform(21, 70, n)
    income = rng.lognormal(np.log(50.0), 0.5, n)
    limit = income * rng.uniform(0.1, 0.5, n)
    utilization = rng.beta(2.0, 3.0, n)
    employed = np.clip(rng.exponential(60.0, n), 0, 480)
    late = rng.poisson(0.3 + 1.5 * utilization)
    dti = rng.beta(2.0, 5.0, n)
    accounts = rng.poisson(4.0, n)
    mortgage = rng.binomial(1, 0.4, n)
    prior = rng.binomial(1, 0.05, n)
    logit = (
        -1.9
        + 3.0 * (utilization - 0.4)
        + 0.7 * late
        + 4.0 * (dti - 0.28)
        + 1.6 * prior
        - 0.8 * np.log(income / 50.0)
        - 0.004 * (employed - 60.0)
        - 0.02 * (age - 45.0)
        + 1.2 * ((utilization > 0.7) & (late > 0))  # maxed out and already late
    )
    default = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    x = np.column_stack(
        [age, income, limit, utilization, employed, late, dti, accounts, mortgage, prior]
    )
    return x, default.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _credit_scale() -> tuple[np.ndarray, np.ndarray]:
    # Population statistics from one fixed reference draw: every bank standardises with
    # the same constants, so a weight means the same thing at every site.
    x, _ = _credit_rows(50_000, np.random.default_rng(20240101))
    return x.mean(axis=0), x.std(axis=0)


def make_credit_default(n: int, seed: int) -> TabularDataset:
    """Synthetic retail-bank customers and whether they defaulted within a year (~20 %).

    Default risk rises with card utilisation, late payments, debt-to-income and a prior
    default, falls with income, tenure and age, with an interaction for maxed-out cards
    that are already late. Features are standardised with fixed population constants
    (the same at every bank); ``raw`` keeps the unscaled values for explanations.
    """
    x, y = _credit_rows(n, np.random.default_rng(seed))
    mean, std = _credit_scale()
    dataset = TabularDataset((x - mean) / std, y, feature_names=list(CREDIT_FEATURES))
    dataset.raw = x.astype(np.float32)
    return dataset
