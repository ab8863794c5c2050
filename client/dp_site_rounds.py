"""Site-level DP's gate for one round (the noise scheme is client/dp_site_scheme.py).

The layout (the noise for the plan's quorum) is derived at the run's first round and
pinned in the ledger with its charge; later rounds use the pinned one, so a task that
changes the rounds, the plan or its quorum cannot change the noise. The guard that
calls this is client/dp_site.py ``PrivacyGuard``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from client.dp import PrivacyPlan
from client.dp_charge import check_plan, check_round, dataset_name, json_plan
from client.ledger import Entry, Ledger, compose
from client.policy import SitePolicy, TaskRefused
from crypto.dp_layout import MECHANISM_SITE, SiteNoise, zcdp_epsilon
from protos import common_pb2, federation_pb2


@dataclass
class SiteRoundPrivacy:
    """A site-level DP round: the pinned layout the update is encoded in, and its charge."""

    plan: PrivacyPlan
    noise: SiteNoise
    entry: Entry
    metrics: dict[str, float] = field(default_factory=dict)


def _dimension(client: Any, config: dict[str, Any]) -> int:
    """Values of the run's model, as the client builds it (the update's length)."""
    from client.trainer import scalar_config

    try:
        return sum(int(w.size) for w in client.get_parameters(scalar_config(config)))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise TaskRefused("error", f"site-level DP cannot size the update: {exc}") from exc


def _key_bits(task: federation_pb2.Task) -> int:
    """Bits of the run's Paillier modulus, from the task's public key."""
    import crypto

    try:
        return int(crypto.public_key_from_bytes(bytes(task.encoding.public_key)).n.bit_length())
    except (TypeError, ValueError) as exc:
        raise TaskRefused("error", f"the run's public key does not read: {exc}") from exc


def _layout(
    task: federation_pb2.Task,
    plan: PrivacyPlan,
    config: dict[str, Any],
    client: Any,
    mine: list[Entry],
) -> tuple[SiteNoise, int]:
    """The run's layout and rounds: derived at its first round, read back from the ledger after."""
    from client import dp_site_scheme

    if mine:
        check_plan(mine, plan)
        first = mine[0].statement
        try:
            return SiteNoise.from_dict(first["layout"]), int(first["rounds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TaskRefused("pin", f"the ledger's pinned layout does not read: {exc}") from exc
    try:
        rounds = int(config.get("rounds", 0))
    except (TypeError, ValueError) as exc:
        raise TaskRefused("error", f"the run's rounds do not read: {exc}") from exc
    noise = dp_site_scheme.layout_for(plan, rounds, _dimension(client, config), _key_bits(task))
    return noise, rounds


def site_round(
    ledger: Ledger,
    policy: SitePolicy,
    task: federation_pb2.Task,
    plan: PrivacyPlan,
    config: dict[str, Any],
    client: Any,
) -> SiteRoundPrivacy:
    """Project the run's spend against the site's budget, then refuse or charge a round.

    Raises
    ------
    TaskRefused
        ``policy`` outside a secure run; ``pin`` for a changed plan, an unreadable
        pinned layout or a round charged before; ``budget`` past the site's budget.
    """
    if task.secure != common_pb2.SECURE_SCHEME_PAILLIER:
        raise TaskRefused(
            "policy",
            "site-level DP noise shares protect a site only inside an encrypted sum; "
            "this task is not a secure run",
        )
    budget = policy.privacy_budget
    dataset = dataset_name(client)
    mine = ledger.round_entries(task.run_id, dataset)
    noise, rounds = _layout(task, plan, config, client, mine)
    check_round(task, rounds, mine)
    delta = policy.privacy_delta
    before = ledger.spent(dataset, delta)
    remaining = max(1, rounds - len(mine))
    projected = compose(ledger.events(dataset) + [noise.event(remaining)], delta)
    if budget is not None and projected > budget:
        raise TaskRefused(
            "budget",
            f"the site-level DP run would bring this site's spend on dataset "
            f"{dataset[:12]} to epsilon {projected:.3f} (at delta {delta:g}), past its "
            f"budget of {budget:g} (spent so far: {before:.3f})",
        )
    # The total noise over the quorum in units of the L2 sensitivity: what a Gaussian
    # mechanism's noise multiplier means, for the report (the accounting uses rho).
    multiplier = noise.sigma * math.sqrt(noise.quorum) / noise.sensitivity
    run_epsilon = zcdp_epsilon(noise.rho(), len(mine) + 1, plan.delta)
    after = compose(ledger.events(dataset) + [noise.event(1)], delta)
    entry = ledger.charge(
        {
            "run_id": task.run_id,
            "round": task.round,
            "dataset": dataset,
            "mechanism": MECHANISM_SITE,
            "accountant": "zCDP (Kairouz et al. 2021), composed with dp-accounting's RDP",
            "plan": json_plan(plan),
            "rounds": rounds,
            "layout": noise.as_dict(),
            "event": {**noise.event(1), "noise_multiplier": multiplier},
            "run_epsilon": run_epsilon,
            "run_delta": plan.delta,
            "ledger_delta": delta,
            "ledger_epsilon_before": before,
            "ledger_epsilon_after": after,
            "budget": budget,
        }
    )
    metrics = {
        "dp_epsilon": run_epsilon,
        "dp_delta": plan.delta,
        "dp_site_sigma_levels": noise.sigma,
        "dp_noise_multiplier": multiplier,
        "ledger_epsilon": after,
    }
    if budget is not None:
        metrics["privacy_budget_left"] = budget - after
    return SiteRoundPrivacy(plan, noise, entry, metrics)


def pinned_layout(ledger: Ledger, run_id: str) -> SiteNoise | None:
    """The site-level DP layout ``ledger`` pinned for ``run_id`` (None: none).

    Raises
    ------
    TaskRefused
        ``pin`` when the pinned layout does not read.
    """
    for entry in ledger.entries:
        if entry.run_id == run_id and "layout" in entry.statement:
            try:
                return SiteNoise.from_dict(entry.statement["layout"])
            except ValueError as exc:
                raise TaskRefused("pin", str(exc)) from exc
    return None
