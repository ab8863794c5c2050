"""The SHAP audit of a registry model at a site: :meth:`ModelTrainer.audit`'s work.

:func:`audit_kind` picks the explanation that fits the inputs (tabular per column, images
per region, text per token position, several modalities per modality) and
:func:`audit_model` runs it on the held-out rows, the training rows as background, with
explain/site_audit.py. The trainer that owns the model and the rows is
client/model_trainer.py; the lock over the global generators, client/rng.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

import models
from client.rng import GLOBAL_RNG_LOCK
from models.datasets import DictDataset


def audit_kind(inputs: Mapping[str, torch.Tensor]) -> str:
    """The SHAP audit that fits these inputs: tabular, image, text or multimodal."""
    names = [k for k in inputs if not k.endswith("mask")]
    if names == ["x"]:
        return "tabular"
    if len(names) == 1:
        tensor = inputs[names[0]]
        if tensor.is_floating_point() and tensor.ndim >= 4:
            return "image"
        if not tensor.is_floating_point():
            return "text"
    # Several modalities, or one (audio) no other kind pools: one feature per input.
    return "multimodal"


def audit_model(
    model: nn.Module,
    holdout: DictDataset,
    train: DictDataset,
    config: Mapping[str, Any],
    *,
    site: str,
    device: torch.device,
    nsamples: int,
) -> Any:
    """SHAP audit of ``model`` (in eval mode) on ``holdout``; returns an ``AttributionSummary``.

    ``config`` holds ``rows`` (at most this many held-out rows) and ``seed``; ``train``'s
    rows are the background; ``nsamples`` is GradientExplainer's samples per row and class
    for torch audits.
    """
    from explain.site_audit import audit_tabular, audit_torch

    rows, seed = int(config.get("rows", 1000)), int(config.get("seed", 0))
    inputs, background = holdout.inputs, train.inputs
    kind = audit_kind(inputs)

    def predict(batch: Mapping[str, torch.Tensor]) -> np.ndarray:
        return models.predict_proba(model, dict(batch), device=device)

    n_classes = int(predict({k: v[:1] for k, v in inputs.items()}).shape[1])
    classes = [f"class_{i}" for i in range(n_classes)]
    if kind == "tabular":
        width = int(inputs["x"].shape[1])
        names = getattr(holdout, "feature_names", None) or [f"x{i}" for i in range(width)]
        # The module itself, not a predict function: the audit runs a folded copy of it.
        return audit_tabular(
            model,
            background["x"].numpy(),
            inputs["x"].numpy(),
            list(names),
            classes,
            site=site,
            max_rows=rows,
            seed=seed,
        )
    with GLOBAL_RNG_LOCK:
        return audit_torch(
            model,
            inputs,
            background,
            kind,
            classes,
            site=site,
            max_rows=rows,
            nsamples=nsamples,
            seed=seed,
        )
