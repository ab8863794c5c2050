"""Noisy SHAP summaries in DP runs: the Gaussian mechanism at a stated sensitivity, charged.

The chi-square check fails a correct mechanism with probability FALSE_FAILURE (1e-4);
the noise comes from the operating system's entropy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from client.custody import SiteIdentity
from client.dp_audit import AUDIT_SHARE, audit_noise_multiplier, public_baseline
from client.dp_site import RELEASE_AUDIT, PrivacyGuard
from client.ledger import compose
from client.policy import SitePolicy, TaskRefused
from explain.privacy_section import describe
from explain.summary import ATTRIBUTION_CLIP, private_statistics
from protos import admin_pb2, common_pb2, federation_pb2
from tests.helpers import breast_cancer_sites, wait_for_state
from tests.test_dp_threshold_runs import assert_counts_and_metrics_withheld

DELTA = 1e-5
FALSE_FAILURE = 1e-4


def clipped_mean(values: np.ndarray) -> np.ndarray:
    rows = values.shape[0]
    vectors = np.concatenate(
        [np.abs(values).mean(axis=2), values.transpose(0, 2, 1).reshape(rows, -1)], axis=1
    )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors * np.minimum(1.0, ATTRIBUTION_CLIP / norms)).mean(axis=0)


def released(values: np.ndarray, multiplier: float) -> tuple[np.ndarray, float]:
    mean_abs, signed, sigma = private_statistics(
        values, ["c0", "c1"], multiplier, np.random.default_rng()
    )
    return np.concatenate([mean_abs, *signed.values()]), sigma


def test_the_summary_carries_gaussian_noise_at_the_stated_sensitivity():
    rng = np.random.default_rng()
    values = rng.normal(0, 0.05, size=(50, 300, 2))
    values[0] *= 100  # one row far outside the clip: its influence is bounded all the same
    out, sigma = released(values, 2.0)
    assert sigma == pytest.approx(2.0 * 2 * ATTRIBUTION_CLIP / 50)
    residual = out - clipped_mean(values)
    statistic = float((residual**2).sum() / sigma**2)
    low, high = stats.chi2.ppf([FALSE_FAILURE / 2, 1 - FALSE_FAILURE / 2], residual.size)
    assert low < statistic < high
    # Replacing one row moves the noiseless release by at most the stated 2 * clip / N.
    other = values.copy()
    other[0] = -other[0]
    moved = np.linalg.norm(clipped_mean(values) - clipped_mean(other))
    assert moved <= 2 * ATTRIBUTION_CLIP / 50 + 1e-12


def test_the_audit_multiplier_costs_its_share_of_the_plan():
    multiplier = audit_noise_multiplier(0.8, DELTA)
    event = {"kind": "gaussian", "noise_multiplier": multiplier, "count": 1}
    assert 0.8 * 0.99 <= compose([event], DELTA) <= 0.8


def test_the_baseline_is_the_models_normaliser_mean_or_zeros():
    from torch import nn

    norm = nn.BatchNorm1d(3, affine=False)
    norm.running_mean[:] = nn.Parameter(norm.running_mean + 2.0).data
    assert public_baseline(nn.Sequential(norm, nn.Linear(3, 2)), 3).tolist() == [[2.0] * 3]
    assert public_baseline(nn.Linear(3, 2), 3).tolist() == [[0.0] * 3]


class Site:
    data_fingerprint = "d" * 64


def audit_task(epsilon: float | None, run_id: str = "r") -> federation_pb2.Task:
    task = federation_pb2.Task(run_id=run_id, round=3, task_id="audit")
    if epsilon is not None:
        task.privacy.CopyFrom(common_pb2.PrivacyPlan(mode="record", epsilon=epsilon, delta=DELTA))
    return task


def guard(tmp_path, budget: float | None) -> PrivacyGuard:
    identity = SiteIdentity.load_or_create(tmp_path, "a")
    return PrivacyGuard(tmp_path, "a", identity, SitePolicy(privacy_budget=budget))


def test_a_dp_runs_summary_is_charged_once_through_the_budget_gate(tmp_path):
    gate = guard(tmp_path, 2.0)
    privacy = gate.before_audit(audit_task(8.0), Site())
    assert privacy is not None
    [entry] = gate.ledger.entries
    assert entry.statement["release"] == RELEASE_AUDIT
    assert entry.statement["audit_epsilon"] == pytest.approx(AUDIT_SHARE * 8.0, rel=0.01)
    with pytest.raises(TaskRefused) as refused:  # a second release of the same run
        gate.before_audit(audit_task(8.0), Site())
    assert refused.value.code == "pin"
    # A run whose audit would pass the budget: refused before anything is explained.
    with pytest.raises(TaskRefused) as refused:
        gate.before_audit(audit_task(90.0, run_id="s"), Site())
    assert refused.value.code == "budget" and "attribution summary" in refused.value.reason
    assert len(gate.ledger.entries) == 1


def test_the_non_dp_audit_is_unchanged_at_a_site_without_a_budget(tmp_path):
    assert guard(tmp_path, None).before_audit(audit_task(None), Site()) is None


@pytest.mark.slow
def test_a_dp_runs_audit_releases_noisy_summaries_the_report_charges(coordinator, agents, tmp_path):
    admin = coordinator.admin()
    agents.start(coordinator.address, breast_cancer_sites(3), tmp_path, names=["a", "b", "c"])
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=1,
            min_clients=3,
            local_epochs=1,
            lr=0.01,
            round_deadline_seconds=120,
            privacy=common_pb2.PrivacyPlan(mode="record", epsilon=8.0, delta=DELTA),
        )
    )
    done = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)
    info = wait_for_state(admin, run.run_id, done, timeout=400)
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    from coordinator.report import report_facts

    facts = report_facts(coordinator.server.hub, run.run_id)
    dp = facts["privacy"]["differential_privacy"]
    assert not dp["unverified_entries"], dp["unverified_entries"]
    assert [s["site"] for s in dp["sites"]] == ["a", "b", "c"]
    for site in dp["sites"]:
        assert site["audit_epsilon"] == pytest.approx(AUDIT_SHARE * 8.0, rel=0.01)
        assert site["rounds_charged"] == 1
    text = json.dumps(facts)
    assert "Gaussian mechanism: rows clipped" in text
    # Beside the noised summaries: no exact held-out score, count or metric.
    assert_counts_and_metrics_withheld(coordinator.hub, run.run_id)
    assert "Withheld under DP" in describe(dp)
