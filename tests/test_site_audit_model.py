"""Which function a site's SHAP audit explains: the one the site scores with.

The built-in trainer's ``predict_proba`` is ``softmax(model(x))``, so the audit may run
the module itself (folded, fast). A client that overrides ``predict_proba`` must be
explained through its override: auditing the bare module would vouch for a model the
site does not use.
"""

from __future__ import annotations

import numpy as np
from helpers import breast_cancer_sites

from client.audit import _audited_model, run_site_audit
from client.trainer import TabularTrainer
from models import get_weights


class Calibrated(TabularTrainer):
    """A site's own scoring step: the last feature alone decides the class."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        positive = 1.0 / (1.0 + np.exp(-10.0 * (np.asarray(x)[:, -1] - np.median(x[:, -1]))))
        return np.stack([1.0 - positive, positive], axis=1)


def test_the_built_in_trainer_is_audited_through_its_module() -> None:
    trainer = breast_cancer_sites(1)[0]
    assert _audited_model(trainer) is trainer.model


def test_an_overridden_predict_proba_is_what_the_audit_explains() -> None:
    plain = breast_cancer_sites(1)[0]
    site = Calibrated(plain.source, seed=0)
    chosen = _audited_model(site)
    assert chosen is not site.model and chosen == site.predict_proba

    summary = run_site_audit(site, get_weights(site.model), site="a", rows=40, seed=1)

    assert summary is not None
    # Only the last feature moves the override's output: it holds all the attribution.
    top = int(np.argmax(summary.mean_abs))
    assert summary.feature_names[top] == site.feature_names[-1]
    assert "torch model" not in summary.explainer


def test_an_override_on_the_instance_is_what_the_audit_explains() -> None:
    """An app factory may set ``trainer.predict_proba = calibrated`` on the instance."""
    site = breast_cancer_sites(1)[0]
    calibrated = Calibrated.predict_proba.__get__(site)
    site.predict_proba = calibrated  # type: ignore[method-assign]

    assert _audited_model(site) == calibrated
