"""A site's SHAP audit against the final model: what leaves is a summary, never rows."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from protos.wire import NDArrays

log = logging.getLogger(__name__)


def run_site_audit(
    client: Any,
    weights: NDArrays,
    *,
    site: str,
    rows: int = 200,
    seed: int = 0,
    noise_scale: float = 0.0,
) -> Any | None:
    """Explain the final model on this site's held-out rows.

    The built-in trainer exposes its held-out data and ``predict_proba``; a user's
    ``NumPyClient`` may instead implement ``audit(parameters, config) -> AttributionSummary``.
    Clients offering neither are not audited (the agent says so).
    """
    from explain.site_audit import audit_tabular
    from explain.summary import AttributionSummary

    if hasattr(client, "audit"):
        summary = client.audit(weights, {"rows": rows, "seed": seed})
        return summary if isinstance(summary, AttributionSummary) else None
    if not (hasattr(client, "predict_proba") and hasattr(client, "holdout_data")):
        log.info("client offers no audit hook; skipping the SHAP audit")
        return None

    import models

    models.set_weights(client.model, weights)
    client.model.eval()
    holdout = client.holdout_data
    background = client.train_data.x
    n_classes = int(client.predict_proba(holdout.x[:1]).shape[1])
    model = _audited_model(client)
    return audit_tabular(
        model,
        background,
        np.asarray(holdout.x),
        client.feature_names,
        [f"class_{i}" for i in range(n_classes)],
        site=site,
        max_rows=rows,
        noise_scale=noise_scale,
        seed=seed,
    )


def _audited_model(client: Any) -> Any:
    """What the audit explains: the module when ``predict_proba`` is the built-in one.

    The built-in trainer's ``predict_proba`` is ``softmax(model(x))``, so the audit may run
    a folded copy of the module instead (explain.torch_adapter.tabular_predictor). A
    subclass or a user's client that overrides ``predict_proba`` (scaling, another head,
    a calibration step) is explained through its own function: the module alone is not
    the model the site scores with.
    """
    import torch

    from client.trainer import TabularTrainer

    # The bound method's function: an override on the class or on the instance differs.
    scorer = getattr(client, "predict_proba", None)
    builtin = getattr(scorer, "__func__", None) is TabularTrainer.predict_proba
    module = getattr(client, "model", None)
    return module if builtin and isinstance(module, torch.nn.Module) else client.predict_proba


def warm_explainer() -> None:
    """Compile shap's numba kernels now, on three made-up features, not during an audit.

    They compile once per process and take from seconds to most of a minute on a busy
    machine; a site that does this while it trains answers its audit task that much
    sooner. The types match a real audit's (float64 rows and outputs), so nothing
    compiles again; no data of the site is touched.
    """
    from explain.site_audit import audit_tabular

    rows = np.random.default_rng(0).normal(size=(4, 3))

    def proba(x: np.ndarray) -> np.ndarray:
        positive = 1.0 / (1.0 + np.exp(-x.sum(axis=1)))
        return np.stack([1.0 - positive, positive], axis=1)

    try:
        audit_tabular(proba, rows, rows[:1], ["a", "b", "c"], max_rows=1, max_background=4)
    except Exception:
        log.debug("explainer warm-up failed", exc_info=True)
