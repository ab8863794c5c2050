"""Site-side SHAP audit of the final model on held-out data, reduced to a releasable summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import shap
import torch
from torch import Tensor, nn

from explain.gradient_shap import default_keys, expected_gradients, explained_inputs
from explain.pooling import feature_statistics, pool_modalities, pool_positions, pool_regions
from explain.row_sample import describe_sample, mean_abs_halfwidth, sample_index
from explain.summary import ATTRIBUTION_CLIP, AttributionSummary, add_noise, private_statistics
from explain.torch_adapter import (
    frozen_for_audit,
    tabular_predictor,
    torch_threads,
)

PredictProba = Callable[[np.ndarray], np.ndarray]

TORCH_KINDS = ("image", "text", "multimodal")


def audit_tabular(
    model: nn.Module | PredictProba,
    background: np.ndarray,
    rows: np.ndarray,
    feature_names: Sequence[str],
    class_names: Sequence[str] | None = None,
    *,
    site: str = "local",
    max_rows: int = 1000,
    explain_rows: int = 100,
    max_background: int = 100,
    max_evals: int | None = None,
    noise_scale: float = 0.0,
    seed: int = 0,
    dp_noise_multiplier: float = 0.0,
    threads: int | None = 1,
) -> AttributionSummary:
    """Explain a tabular model on a seeded sample of a site's rows with PermutationExplainer.

    PermutationExplainer is model-agnostic (it needs only the model's outputs), its values add
    up exactly to ``f(x) - E[f(background)]``, and with ten antithetic permutations a row's
    values are within about 16% (mean absolute error over features) of a ten-times-longer
    run. shap's gradient explainers were measured against it on the tabular MLP and are
    off by 40-55% in probability units (``bench/audit.py`` prints all three), so tabular
    audits stay with permutations and bound their cost by the row sample instead: every
    explained row costs ``max_evals x background`` evaluations, and ``explain_rows`` rows
    (100 by default) are explained out of up to ``max_rows`` held-out rows. The summary's
    ``explainer`` states the sample and the 95% confidence interval of its means
    (:mod:`explain.row_sample`); ``row_count`` is the rows explained.

    Those ``100 x 610 x 100`` model rows (30 features) are the audit's time, so a torch
    model is best passed itself: it is then run through
    :func:`explain.torch_adapter.tabular_predictor` (batch norm folded, inference mode,
    float32; the same probabilities to float rounding), and every model runs on
    ``threads`` torch threads. Measured with ``bench/audit.py``, both together make the
    audit of 1,000 rows x 30 features of the tabular MLP 5-7 CPU-s; a smaller
    background or fewer permutations would buy less than they cost (the bench prints
    their error).

    Parameters
    ----------
    model
        A torch module called as ``model(x)`` on float32 rows ``[N, F]``, returning logits
        (explained as ``softmax(logits)``), or any ``[N, F] -> [N, C]`` function of
        class probabilities (``[N]`` is read as one output).
    background
        Reference rows that "absent" features are drawn from; at most ``max_background``
        of them are used (a seeded sample).
    rows
        Held-out rows to audit; at most ``max_rows`` (a seeded sample, so the audit does
        not depend on row order), of which ``explain_rows`` are explained.
    feature_names, class_names
        Column and output names; classes default to ``class_0 ...``.
    site
        Name recorded in the summary.
    max_evals
        Model evaluations per row; default ten antithetic permutations, ``10 * (2F + 1)``.
    noise_scale
        Standard deviation of Gaussian noise added to the released statistics
        (see :func:`explain.summary.add_noise`).
    seed
        Fixes row/background sampling, the permutations and the noise.
    dp_noise_multiplier
        Differentially private runs (> 0): the statistics are released with the Gaussian
        mechanism (:func:`explain.summary.private_statistics`, noise from OS entropy, not
        ``seed``); ``background`` must then be public (client/dp_audit.py).
    threads
        Torch intra-op threads while explaining (:func:`explain.torch_adapter.torch_threads`);
        one by default, ``None`` leaves the process's setting alone.

    Returns
    -------
    AttributionSummary
        Aggregates only; the explained rows never leave this function.
    """
    background_arr = _matrix(background, "background", len(feature_names))
    rows_arr = _matrix(rows, "rows", len(feature_names))
    rng = np.random.default_rng(seed)
    rows_arr = _sample(rows_arr, max_rows, rng)
    background_arr = _sample(background_arr, max_background, rng)
    population = len(rows_arr)
    explained = rows_arr[sample_index(population, explain_rows, rng)]
    evals = max_evals if max_evals is not None else 10 * (2 * len(feature_names) + 1)
    torch_model = isinstance(model, nn.Module)
    with torch_threads(threads):
        if isinstance(model, nn.Module):
            predict = tabular_predictor(model, background_arr)
        else:
            predict = model
        values, base = permutation_values(predict, background_arr, explained, evals, seed)
    names = _class_names(class_names, values.shape[2])
    private = dp_noise_multiplier > 0  # differential privacy: explain.summary.private_statistics
    if private:
        mean_abs, mean_signed, sigma = private_statistics(
            values, names, dp_noise_multiplier, np.random.default_rng()
        )
    else:
        mean_abs, mean_signed = feature_statistics(values, names)
    summary = AttributionSummary(
        site=site,
        kind="tabular",
        feature_names=list(feature_names),
        class_names=names,
        mean_abs=mean_abs,
        mean_signed=mean_signed,
        row_count=len(explained),
        base_value=base.mean(axis=0).tolist(),
        noise_scale=sigma if private else 0.0,
        explainer=(
            f"shap {shap.__version__} PermutationExplainer "
            f"(max_evals={evals}, background={len(background_arr)}"
            + (", torch model in inference mode" if torch_model else "")
            + "); "
            + (
                f"Gaussian mechanism: rows clipped to L2 {ATTRIBUTION_CLIP:g}, noise sigma "
                f"{sigma:.3g} (multiplier {dp_noise_multiplier:.3g})"
                if private  # the sample's confidence interval would be an un-noised release
                else describe_sample(
                    len(explained), population, mean_abs_halfwidth(values, population)
                )
            )
        ),
    )
    return add_noise(summary, noise_scale, seed)


def permutation_values(
    predict_proba: PredictProba,
    background: np.ndarray,
    rows: np.ndarray,
    max_evals: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """SHAP values ``[N, F, C]`` and base values ``[N, C]`` of every row, by permutation.

    The interventional game over ``background`` (shap's ``Independent`` masker with every
    background row): per row, ``values.sum(F) == f(row) - base`` up to float rounding.
    """

    def model_output(x: np.ndarray) -> np.ndarray:
        out = np.asarray(predict_proba(x), dtype=float)
        return out[:, None] if out.ndim == 1 else out

    n_classes = model_output(background[:1]).shape[1]
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.PermutationExplainer(model_output, masker, seed=seed)
    explanation = explainer(rows, max_evals=max_evals, silent=True)
    values = np.asarray(explanation.values, dtype=float).reshape(len(rows), -1, n_classes)
    base = np.asarray(explanation.base_values, dtype=float).reshape(len(rows), n_classes)
    return values, base


def audit_torch(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    background: Mapping[str, Tensor],
    kind: str,
    class_names: Sequence[str] | None = None,
    *,
    site: str = "local",
    max_rows: int = 1000,
    explain_rows: int = 64,
    max_background: int = 64,
    nsamples: int = 32,
    grid: tuple[int, int] = (4, 4),
    position_buckets: int = 8,
    explain_keys: Sequence[str] | None = None,
    modality_of: Mapping[str, str] | None = None,
    embeddings: Mapping[str, nn.Module] | None = None,
    noise_scale: float = 0.0,
    seed: int = 0,
    threads: int | None = 1,
) -> AttributionSummary:
    """Explain a torch model with shap's GradientExplainer (expected gradients).

    Expected gradients work on any differentiable model (CNNs, attention, gated fusion)
    where DeepExplainer's per-layer rules do not cover every operation. Attributions are
    taken on class probabilities, then pooled into features that are the same at every
    site:

    - ``"image"``: pixels summed over a ``grid`` of regions, named ``region_<r>_<c>``;
    - ``"text"``: the token embedding *output* is explained (ids are integers and cannot
      be differentiated), summed over the embedding dimension and over
      ``position_buckets`` contiguous position buckets, named ``tokens_<first>_<last>``;
    - ``"multimodal"``: every explained input summed whole, one feature per modality
      (``image``, ``text``, ``audio``, ``tabular``; see ``modality_of``). Read
      :attr:`AttributionSummary.shares` for each modality's share.

    Inputs that are not explained (attention masks, anything in ``inputs`` but not in
    ``explain_keys``) are held at the explained row's own value. Each explained row costs
    ``nsamples`` forward and backward passes, so the cost is bounded by explaining a seeded
    sample of ``explain_rows`` of up to ``max_rows`` held-out rows; the summary's
    ``explainer`` states the sample and the 95% confidence interval of its means.

    Parameters
    ----------
    model
        Called as ``model(**inputs)``, returning logits ``[B, C]``.
    inputs, background
        Batched input dicts with the same keys: held-out rows to explain and reference
        rows. At most ``max_rows`` / ``max_background`` rows are used (seeded samples).
    kind
        ``"image"``, ``"text"`` or ``"multimodal"``.
    class_names
        Output names; default ``class_0 ...``.
    nsamples
        Interpolation samples per row and class; more is smoother and slower.
    explain_keys
        Inputs to attribute. Defaults: ``image`` (or the only input) for images, the one
        integer input an ``nn.Embedding`` looks up for text, and for multimodal every
        input except integer inputs without an embedding and names ending in ``mask``.
    embeddings
        Input name -> embedding module, when automatic discovery is not wanted.
    noise_scale, seed, threads
        As in :func:`audit_tabular`.

    Raises
    ------
    ValueError
        On an unknown kind, mismatched input dicts, or explained inputs that cannot be
        found or pooled.
    """
    if kind not in TORCH_KINDS:
        raise ValueError(f"kind must be one of {TORCH_KINDS}, got {kind!r}")
    if set(inputs) != set(background) or not inputs:
        raise ValueError(
            f"inputs and background must have the same keys, got {sorted(inputs)} "
            f"and {sorted(background)}"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rng = np.random.default_rng(seed)
    held_out = _sample_batch(inputs, max_rows, rng, device)
    refs = _sample_batch(background, max_background, rng, device)
    population = next(iter(held_out.values())).shape[0]
    chosen = torch.as_tensor(sample_index(population, explain_rows, rng), device=device)
    rows = {k: v[chosen] for k, v in held_out.items()}
    keys = list(explain_keys) if explain_keys is not None else default_keys(kind, rows)

    with frozen_for_audit(model), _numpy_global_rng_kept(), torch_threads(threads):
        # By default a multimodal audit skips integer inputs no embedding looks up (lengths,
        # flags); inputs the caller names must all be explainable.
        strict = explain_keys is not None or kind != "multimodal"
        slots = explained_inputs(model, rows, keys, embeddings, strict=strict)
        keys = [slot.key for slot in slots]
        if kind != "multimodal" and len(keys) != 1:
            raise ValueError(f"a {kind} audit explains exactly one input, got {keys}")
        attributions, base = expected_gradients(model, rows, refs, slots, nsamples, seed)

    n_classes = base.shape[0]
    names = _class_names(class_names, n_classes)
    if kind == "image":
        pooled, features = pool_regions(attributions[keys[0]], grid)
    elif kind == "text":
        pooled, features = pool_positions(attributions[keys[0]], position_buckets)
    else:
        pooled, features = pool_modalities(attributions, modality_of)
    mean_abs, mean_signed = feature_statistics(pooled, names)
    row_count = next(iter(rows.values())).shape[0]
    halfwidth = mean_abs_halfwidth(pooled, population)
    summary = AttributionSummary(
        site=site,
        kind=kind,
        feature_names=features,
        class_names=names,
        mean_abs=mean_abs,
        mean_signed=mean_signed,
        row_count=row_count,
        base_value=base.tolist(),
        explainer=(
            f"shap {shap.__version__} GradientExplainer "
            f"(nsamples={nsamples}, background={next(iter(refs.values())).shape[0]}, "
            f"inputs={','.join(keys)}); " + describe_sample(row_count, population, halfwidth)
        ),
    )
    return add_noise(summary, noise_scale, seed)


def _sample_batch(
    batch: Mapping[str, Tensor], limit: int, rng: np.random.Generator, device: torch.device
) -> dict[str, Tensor]:
    if limit < 1:
        raise ValueError(f"row limits must be >= 1, got {limit}")
    sizes = {k: v.shape[0] for k, v in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every input must have the same number of rows, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("no rows to audit")
    index = torch.as_tensor(np.sort(rng.choice(n, size=min(n, limit), replace=False)))
    return {k: v[index].to(device) for k, v in batch.items()}


def _matrix(values: np.ndarray, name: str, n_features: int) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != n_features or arr.shape[0] == 0:
        raise ValueError(f"{name} must be [rows >= 1, {n_features}], got shape {arr.shape}")
    return arr


def _sample(arr: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if limit < 1:
        raise ValueError(f"row limits must be >= 1, got {limit}")
    if len(arr) <= limit:
        return arr
    return arr[np.sort(rng.choice(len(arr), size=limit, replace=False))]


def _class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(n_classes)]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {n_classes} outputs")
    return list(class_names)


@contextmanager
def _numpy_global_rng_kept() -> Iterator[None]:
    # GradientExplainer seeds numpy's global generator; give the caller theirs back.
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)
