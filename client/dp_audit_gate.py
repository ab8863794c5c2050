"""The privacy gate for a DP run's attribution summary (the noise is client/dp_audit.py).

The summary is released once per run with the Gaussian mechanism at client/dp_audit.py's
share of the plan's ε, projected against the site's budget and charged to its ledger like
a training round. The guard that calls this is client/dp_site.py ``PrivacyGuard``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client.dp import PrivacyPlan
from client.dp_charge import check_plan, dataset_name, json_plan
from client.ledger import Entry, Ledger, compose
from client.policy import SitePolicy, TaskRefused
from protos import federation_pb2

RELEASE_AUDIT = "attribution_summary"
MECHANISM_AUDIT = (
    "Gaussian mechanism on the SHAP attribution summary: each row's attributions clipped "
    "(L2), public baseline"
)


@dataclass
class AuditPrivacy:
    """A DP run's attribution summary: its noise multiplier and its ledger charge."""

    noise_multiplier: float
    entry: Entry


def audit_charge(
    ledger: Ledger, policy: SitePolicy, task: federation_pb2.Task, client: Any
) -> AuditPrivacy | None:
    """Refuse, or charge the run's attribution summary (None: a run without DP).

    Raises
    ------
    TaskRefused
        ``budget`` past the budget (or a run without DP at a site that keeps one);
        ``pin`` for a plan dropped or changed since the site trained, or a second
        release.
    """
    from client.dp_audit import AUDIT_SHARE, audit_noise_multiplier

    plan = PrivacyPlan.from_proto(task.privacy) if task.HasField("privacy") else None
    budget = policy.privacy_budget
    dataset = dataset_name(client)
    mine = ledger.run_entries(task.run_id, dataset)
    if plan is None:
        if mine:
            raise TaskRefused(
                "pin", "the run started with differential privacy; this task has none"
            )
        if budget is not None:
            raise TaskRefused(
                "budget",
                f"this site keeps a privacy budget (epsilon {budget:g}) and the run has no "
                "differential privacy: its attribution summary would spend an unbounded "
                "epsilon",
            )
        return None
    check_plan(mine, plan)
    if any(e.statement.get("release") == RELEASE_AUDIT for e in mine):
        raise TaskRefused("pin", "this site already released the run's attribution summary")
    multiplier = (
        audit_noise_multiplier(AUDIT_SHARE * plan.epsilon, plan.delta)
        if plan.epsilon
        else plan.noise_multiplier
    )
    event = {"kind": "gaussian", "noise_multiplier": multiplier, "count": 1}
    delta = policy.privacy_delta
    before = ledger.spent(dataset, delta)
    after = compose(ledger.events(dataset) + [event], delta)
    if budget is not None and after > budget:
        raise TaskRefused(
            "budget",
            f"the run's attribution summary would bring this site's spend on dataset "
            f"{dataset[:12]} to epsilon {after:.3f} (at delta {delta:g}), past its budget "
            f"of {budget:g} (spent so far: {before:.3f})",
        )
    entry = ledger.charge(
        {
            "run_id": task.run_id,
            "round": task.round,
            "release": RELEASE_AUDIT,
            "dataset": dataset,
            "mechanism": MECHANISM_AUDIT,
            "accountant": "rdp",
            "plan": json_plan(plan),
            "event": event,
            "audit_epsilon": compose([event], plan.delta),
            "run_delta": plan.delta,
            "ledger_delta": delta,
            "ledger_epsilon_before": before,
            "ledger_epsilon_after": after,
            "budget": budget,
        }
    )
    return AuditPrivacy(multiplier, entry)
