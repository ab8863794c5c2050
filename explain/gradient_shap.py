"""SHAP's GradientExplainer over a torch model's inputs: which inputs, and their attributions.

The torch half of the site audit (explain/site_audit.py ``audit_torch``): float inputs are
explained directly, token ids through the output of their embedding layer (found in the
model or given), and the expected-gradients values (Erion et al., "Improving performance
of deep learning models with axiomatic attribution priors and expected gradients", Nature
Machine Intelligence 2021; shap's ``GradientExplainer``) come back per input.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import shap
import torch
from torch import Tensor, nn

from explain.torch_adapter import (
    ExplainedInput,
    ProbabilityModel,
    embedding_outputs,
    find_token_embeddings,
    probabilities,
)


def expected_gradients(
    model: nn.Module,
    rows: dict[str, Tensor],
    refs: dict[str, Tensor],
    slots: list[ExplainedInput],
    nsamples: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-input SHAP values ``{key: [N, *shape, C]}`` and the base value ``[C]``."""
    embedded = {s.key: s.embedding for s in slots if s.embedding is not None}
    row_embeds = embedding_outputs(model, rows, embedded) if embedded else {}
    ref_embeds = embedding_outputs(model, refs, embedded) if embedded else {}

    def explained(batch: dict[str, Tensor], embeds: dict[str, Tensor]) -> list[Tensor]:
        return [embeds[s.key] if s.embedding is not None else batch[s.key] for s in slots]

    row_data = explained(rows, row_embeds)
    ref_data = explained(refs, ref_embeds)
    for slot, row_tensor, ref_tensor in zip(slots, row_data, ref_data, strict=True):
        if row_tensor.shape[1:] != ref_tensor.shape[1:]:
            raise ValueError(
                f"input {slot.key!r}: rows have shape {tuple(row_tensor.shape[1:])} but the "
                f"background has {tuple(ref_tensor.shape[1:])}; pad both to the same length"
            )
    held_keys = [k for k in rows if k not in {s.key for s in slots if s.embedding is None}]

    with torch.no_grad():
        base = probabilities(model(**refs)).mean(dim=0).cpu().double().numpy()

    wrapper = ProbabilityModel(model, slots)
    wrapper.hold({k: rows[k][:1] for k in held_keys})
    explainer = shap.GradientExplainer(wrapper, [t.float() for t in ref_data], batch_size=nsamples)
    per_row: list[list[np.ndarray]] = []
    n_rows = row_data[0].shape[0]
    # One row at a time: the inputs held fixed (masks, token ids) belong to that row.
    for j in range(n_rows):
        wrapper.hold({k: rows[k][j : j + 1] for k in held_keys})
        phis = explainer.shap_values(
            [t[j : j + 1].float() for t in row_data], nsamples=nsamples, rseed=seed + j
        )
        # shap returns a bare array, not a one-element list, when one tensor is explained.
        phis = [phis] if len(slots) == 1 else phis
        per_row.append([np.asarray(p, dtype=float) for p in phis])
    attributions = {
        slot.key: np.concatenate([row[i] for row in per_row], axis=0)
        for i, slot in enumerate(slots)
    }
    return attributions, base


def explained_inputs(
    model: nn.Module,
    rows: dict[str, Tensor],
    keys: list[str],
    embeddings: Mapping[str, nn.Module] | None,
    *,
    strict: bool,
) -> list[ExplainedInput]:
    unknown = [k for k in keys if k not in rows]
    if unknown:
        raise ValueError(f"explain_keys {unknown} are not model inputs {sorted(rows)}")
    given = dict(embeddings or {})
    token_keys = [k for k in keys if not rows[k].is_floating_point() and k not in given]
    found = find_token_embeddings(model, rows, token_keys, strict=strict) if token_keys else {}
    modules = {**found, **given}
    explainable = [k for k in keys if rows[k].is_floating_point() or k in modules]
    if not explainable:
        raise ValueError(f"none of the inputs {keys} can be explained")
    return [ExplainedInput(key=k, embedding=modules.get(k)) for k in explainable]


def default_keys(kind: str, rows: Mapping[str, Tensor]) -> list[str]:
    if kind == "image":
        if "image" in rows:
            return ["image"]
        floats = [k for k, v in rows.items() if v.is_floating_point() and v.ndim >= 3]
        if len(floats) == 1:
            return floats
        raise ValueError(
            f"cannot tell which input is the image among {sorted(rows)}; pass explain_keys=[name]"
        )
    if kind == "text":
        if "input_ids" in rows:
            return ["input_ids"]
        tokens = [
            k for k, v in rows.items() if not v.is_floating_point() and not k.endswith("mask")
        ]
        if len(tokens) == 1:
            return tokens
        raise ValueError(
            f"cannot tell which input holds the tokens among {sorted(rows)}; "
            "pass explain_keys=[name]"
        )
    # Multimodal: everything but masks; integer inputs without an embedding drop out later.
    return [k for k, v in rows.items() if not k.endswith("mask") and v.dtype != torch.bool]
