"""The SHAP audit of a differentially private run: a noisy summary, charged to the ledger.

In a run with a DP plan (record or site mode) the site releases its attribution summary
with the Gaussian mechanism (explain/summary.py ``private_statistics``: each explained
row's attributions clipped, the means noised) and charges it to the same ledger, through
the same projection and refusal as a training round (client/dp_audit_gate.py, called by
client/dp_site.py ``PrivacyGuard.before_audit``). Two things keep the sensitivity at the
explained rows:

- the baseline the explainer measures against is public: the final model's own input
  normaliser mean (its first ``BatchNorm1d``'s running mean, released with the model;
  under DP it is the DP-released mean, client/dp_norm.py), or zeros for a model without
  one; never a background of the site's other (training) rows, whose change would move
  every row's attributions at once;
- the summary carries no statistic but the noised means, the public baseline's outputs
  and the explained row count (the sample's confidence interval, computed from the
  private values, is left out).

Its ε is ``AUDIT_SHARE`` of the plan's ε, at the plan's δ, on top of the training's: the
report lists it per site. A site's own ``audit()`` hook or a non-tabular model has no
bounded sensitivity here and is refused in a DP run (the non-DP audit is unchanged).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from client.policy import TaskRefused

AUDIT_SHARE = 0.1  # of the plan's ε: what the released attribution summary may cost


def audit_noise_multiplier(epsilon: float, delta: float) -> float:
    """The Gaussian mechanism's multiplier whose one release costs ``epsilon`` at ``delta``.

    Bisected against the ledger's own composition (RDP, client/ledger.py), so the charge
    the ledger records is the ε asked for (to 0.5%, rounded towards more noise).
    """
    from client.dp import smallest_sigma
    from client.ledger import compose

    def cost(multiplier: float) -> float:
        return compose([{"kind": "gaussian", "noise_multiplier": multiplier, "count": 1}], delta)

    return smallest_sigma(
        cost,
        epsilon,
        low=0.05,
        high=1.0,
        refusal="no noise reaches epsilon {target:g} for the audit",
    )


def public_baseline(model: nn.Module, features: int) -> np.ndarray:
    """One reference row that depends on the released model alone (module docstring)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d) and module.running_mean is not None:
            mean = module.running_mean.detach().cpu().numpy().astype(np.float64)
            if mean.shape == (features,):
                return mean[None, :]
            break
    return np.zeros((1, features))


def private_site_audit(
    client: Any, weights: list[np.ndarray], *, site: str, rows: int, seed: int, multiplier: float
) -> Any:
    """The built-in tabular trainer's audit, released with the Gaussian mechanism.

    Raises
    ------
    TaskRefused
        ``policy`` for a client whose audit this site cannot bound (its own ``audit``
        hook, or no built-in tabular model): it releases nothing.
    """
    import models
    from explain.site_audit import audit_tabular

    if hasattr(client, "audit") or not (
        hasattr(client, "predict_proba") and hasattr(client, "holdout_data")
    ):
        raise TaskRefused(
            "policy",
            "in a differentially private run this site releases only the built-in tabular "
            "audit, whose attributions it can bound and noise; this client's audit cannot be",
        )
    models.set_weights(client.model, weights)
    client.model.eval()
    holdout = np.asarray(client.holdout_data.x)
    n_classes = int(client.predict_proba(holdout[:1]).shape[1])
    return audit_tabular(
        client.predict_proba,
        public_baseline(client.model, holdout.shape[1]),
        holdout,
        client.feature_names,
        [f"class_{i}" for i in range(n_classes)],
        site=site,
        max_rows=rows,
        seed=seed,
        dp_noise_multiplier=multiplier,
    )
