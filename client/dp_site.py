"""The site's privacy gate: projects a run's spend against its budget, charges the ledger.

Before every training round (the run's first included) the site composes what its ledger
already holds for the dataset with what the rest of this run plans to spend, at the
site's own δ, and refuses (code ``budget``) when that would pass its budget; nothing of
its data is touched after a refusal. Otherwise the round is charged to the ledger first
(write-ahead), then trained with DP-SGD under the run's single accountant (record
mode), or trained as usual and sent in site-level DP's noised layout (site mode,
client/dp_site_scheme.py, whose layout the first charge pins).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.dp import MECHANISM_RECORD, PrivacyPlan, RecordSchedule, make_accountant, plan_key
from client.dp import record_schedule as schedule_for
from client.dp_norm import stats_event, stats_history
from client.ledger import Entry, Ledger, compose
from client.policy import SitePolicy, TaskRefused
from crypto.dp_layout import MECHANISM_SITE, SiteNoise, zcdp_epsilon
from protos import common_pb2, federation_pb2

log = logging.getLogger(__name__)


@dataclass
class RoundPrivacy:
    """What a DP trainer needs for one round: the plan, the pinned schedule, the accountant."""

    plan: PrivacyPlan
    schedule: RecordSchedule
    accountant: Any
    entry: Entry
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SiteRoundPrivacy:
    """A site-level DP round: the pinned layout the update is encoded in, and its charge."""

    plan: PrivacyPlan
    noise: SiteNoise
    entry: Entry
    metrics: dict[str, float] = field(default_factory=dict)


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


def _dataset(client: Any) -> str:
    value = getattr(client, "data_fingerprint", None)
    return str(value) if value else "unfingerprinted-client"


class PrivacyGuard:
    """One per agent: the ledger and the runs' accountants (kept across rounds)."""

    def __init__(self, state_dir: Path, site: str, site_identity: Any, policy: SitePolicy) -> None:
        self.ledger = Ledger.for_site(state_dir, site, site_identity)
        self.policy = policy
        self._accountants: dict[str, Any] = {}

    def before_round(
        self, task: federation_pb2.Task, config: dict[str, Any], client: Any
    ) -> RoundPrivacy | SiteRoundPrivacy | None:
        """Refuse, or charge this round and return its DP settings (None: a run without DP).

        Raises
        ------
        TaskRefused
            ``budget`` when the projection passes the budget (or the run has no DP and
            the site keeps a budget); ``pin`` when the plan changed mid-run; ``model``
            when this site's client cannot train privately.
        """
        plan = PrivacyPlan.from_proto(task.privacy) if task.HasField("privacy") else None
        budget = self.policy.privacy_budget
        if plan is None and any(e.run_id == task.run_id for e in self.ledger.entries):
            raise TaskRefused(
                "pin", "the run started with differential privacy; this task has none"
            )
        if plan is None:
            if budget is not None:
                raise TaskRefused(
                    "budget",
                    f"this site keeps a privacy budget (epsilon {budget:g}) and the run has no "
                    "differential privacy: training would spend an unbounded epsilon",
                )
            return None
        if plan.mode == "site":
            return self._site_level(task, plan, config, client, budget)
        if plan.mode != "record":
            raise TaskRefused("policy", f"privacy mode {plan.mode!r} is not available at this site")
        if not hasattr(client, "fit_private"):
            raise TaskRefused("model", "this site's client cannot train with record-level DP")
        dataset = _dataset(client)
        mine = self.ledger.run_entries(task.run_id, dataset)
        schedule = self._schedule(task, plan, config, client, mine)
        if task.round > schedule.rounds:
            raise TaskRefused(
                "pin", f"round {task.round} is past the {schedule.rounds} rounds this site planned"
            )
        charged = [int(e.statement.get("round", 0)) for e in mine]
        if charged and task.round <= max(charged):
            # Each round is charged (and trained) once: a coordinator that re-issues a round,
            # or an older one, would otherwise spend the site's budget again and again.
            raise TaskRefused(
                "pin",
                f"round {task.round} of this run was already charged to this site's privacy "
                f"ledger (rounds charged: up to {max(charged)}); a round is trained once",
            )
        if len(mine) >= schedule.rounds:
            raise TaskRefused(
                "pin", f"this site already trained the {schedule.rounds} rounds its plan allows"
            )
        delta = self.policy.privacy_delta
        before = self.ledger.spent(dataset, delta)
        remaining = max(1, schedule.rounds - len(mine))
        # The run's first round also releases the input statistics (client/dp_norm.py).
        extra = (
            [stats_event(schedule.stats_noise_multiplier)]
            if (not mine and schedule.stats_noise_multiplier)
            else []
        )
        projected = compose(
            self.ledger.events(dataset) + extra + [schedule.event(remaining)], delta
        )
        if budget is not None and projected > budget:
            raise TaskRefused(
                "budget",
                f"the run would bring this site's spend on dataset {dataset[:12]} to epsilon "
                f"{projected:.3f} (at delta {delta:g}), past its budget of {budget:g} "
                f"(spent so far: {before:.3f})",
            )
        epochs, batch_size = _training_shape(config)
        accountant = self._accountant(task.run_id, plan, mine)
        after_run = self._epsilon_after(accountant, schedule, plan, extra)
        after = compose(self.ledger.events(dataset) + extra + [schedule.event(1)], delta)
        entry = self.ledger.charge(
            {
                "extra_events": extra,
                "stats_noise_multiplier": schedule.stats_noise_multiplier,
                "run_id": task.run_id,
                "round": task.round,
                "dataset": dataset,
                "mechanism": MECHANISM_RECORD,
                "accountant": plan.accountant,
                "plan": json_plan(plan),
                "rounds": schedule.rounds,
                "local_epochs": epochs,
                "batch_size": batch_size,
                "event": schedule.event(1),
                "run_epsilon": after_run,
                "run_delta": plan.delta,
                "ledger_delta": delta,
                "ledger_epsilon_before": before,
                "ledger_epsilon_after": after,
                "budget": budget,
            }
        )
        metrics = {
            "dp_epsilon": after_run,
            "dp_delta": plan.delta,
            "dp_noise_multiplier": schedule.noise_multiplier,
            "dp_sample_rate": schedule.sample_rate,
            "ledger_epsilon": after,
        }
        if budget is not None:
            metrics["privacy_budget_left"] = budget - after
        return RoundPrivacy(plan, schedule, accountant, entry, metrics)

    def _site_level(
        self,
        task: federation_pb2.Task,
        plan: PrivacyPlan,
        config: dict[str, Any],
        client: Any,
        budget: float | None,
    ) -> SiteRoundPrivacy:
        """Site-level DP's gate (client/dp_site_scheme.py): project, refuse or charge a round.

        The layout (the noise for the plan's quorum) is derived at the run's first round
        and pinned in the ledger with its charge; later rounds use the pinned one, so a
        task that changes the rounds, the plan or its quorum cannot change the noise.
        """
        from client import dp_site_scheme

        if task.secure != common_pb2.SECURE_SCHEME_PAILLIER:
            raise TaskRefused(
                "policy",
                "site-level DP noise shares protect a site only inside an encrypted sum; "
                "this task is not a secure run",
            )
        dataset = _dataset(client)
        mine = self.ledger.run_entries(task.run_id, dataset)
        if mine:
            first = mine[0].statement
            if first.get("plan") != json_plan(plan):
                raise TaskRefused(
                    "pin", "the run's privacy plan changed since this site's first round"
                )
            try:
                noise, rounds = SiteNoise.from_dict(first["layout"]), int(first["rounds"])
            except (KeyError, TypeError, ValueError) as exc:
                raise TaskRefused(
                    "pin", f"the ledger's pinned layout does not read: {exc}"
                ) from exc
        else:
            try:
                rounds = int(config.get("rounds", 0))
            except (TypeError, ValueError) as exc:
                raise TaskRefused("error", f"the run's rounds do not read: {exc}") from exc
            noise = dp_site_scheme.layout_for(
                plan, rounds, _dimension(client, config), _key_bits(task)
            )
        self._check_round(task, rounds, mine)
        delta = self.policy.privacy_delta
        before = self.ledger.spent(dataset, delta)
        remaining = max(1, rounds - len(mine))
        projected = compose(self.ledger.events(dataset) + [noise.event(remaining)], delta)
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
        after = compose(self.ledger.events(dataset) + [noise.event(1)], delta)
        entry = self.ledger.charge(
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

    @staticmethod
    def _check_round(task: federation_pb2.Task, rounds: int, mine: list[Entry]) -> None:
        """Each round of the pinned plan is charged and trained once, and no more rounds."""
        if task.round > rounds:
            raise TaskRefused(
                "pin", f"round {task.round} is past the {rounds} rounds this site planned"
            )
        charged = [int(e.statement.get("round", 0)) for e in mine]
        if charged and task.round <= max(charged):
            raise TaskRefused(
                "pin",
                f"round {task.round} of this run was already charged to this site's privacy "
                f"ledger (rounds charged: up to {max(charged)}); a round is trained once",
            )
        if len(mine) >= rounds:
            raise TaskRefused(
                "pin", f"this site already trained the {rounds} rounds its plan allows"
            )

    def before_audit(self, task: federation_pb2.Task, client: Any) -> AuditPrivacy | None:
        """Refuse, or charge the run's attribution summary (None: a run without DP).

        The summary is released once per run with the Gaussian mechanism at
        client/dp_audit.py's share of the plan's ε, projected and charged like a round.

        Raises
        ------
        TaskRefused
            ``budget`` past the budget (or a run without DP at a site that keeps one);
            ``pin`` for a plan dropped or changed since the site trained, or a second
            release.
        """
        from client.dp_audit import AUDIT_SHARE, audit_noise_multiplier

        plan = PrivacyPlan.from_proto(task.privacy) if task.HasField("privacy") else None
        budget = self.policy.privacy_budget
        dataset = _dataset(client)
        mine = self.ledger.run_entries(task.run_id, dataset)
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
        if mine and mine[0].statement.get("plan") != json_plan(plan):
            raise TaskRefused("pin", "the run's privacy plan changed since this site's first round")
        if any(e.statement.get("release") == RELEASE_AUDIT for e in mine):
            raise TaskRefused("pin", "this site already released the run's attribution summary")
        multiplier = (
            audit_noise_multiplier(AUDIT_SHARE * plan.epsilon, plan.delta)
            if plan.epsilon
            else plan.noise_multiplier
        )
        event = {"kind": "gaussian", "noise_multiplier": multiplier, "count": 1}
        delta = self.policy.privacy_delta
        before = self.ledger.spent(dataset, delta)
        after = compose(self.ledger.events(dataset) + [event], delta)
        if budget is not None and after > budget:
            raise TaskRefused(
                "budget",
                f"the run's attribution summary would bring this site's spend on dataset "
                f"{dataset[:12]} to epsilon {after:.3f} (at delta {delta:g}), past its budget "
                f"of {budget:g} (spent so far: {before:.3f})",
            )
        entry = self.ledger.charge(
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

    def pinned_layout(self, run_id: str) -> SiteNoise | None:
        """The site-level DP layout this site's ledger pinned for ``run_id`` (None: none)."""
        for entry in self.ledger.entries:
            if entry.run_id == run_id and "layout" in entry.statement:
                try:
                    return SiteNoise.from_dict(entry.statement["layout"])
                except ValueError as exc:
                    raise TaskRefused("pin", str(exc)) from exc
        return None

    def _schedule(
        self,
        task: federation_pb2.Task,
        plan: PrivacyPlan,
        config: dict[str, Any],
        client: Any,
        mine: list[Entry],
    ) -> RecordSchedule:
        """The run's schedule: computed at its first round, read back from the ledger after."""
        if mine:
            first = mine[0].statement
            if first.get("plan") != json_plan(plan):
                raise TaskRefused(
                    "pin", "the run's privacy plan changed since this site's first round"
                )
            # The ledger charged the steps of the first round's epochs and batch size; a task
            # asking for more epochs (or smaller batches) would take steps nobody charged.
            pinned = (first.get("local_epochs"), first.get("batch_size"))
            if pinned != _training_shape(config):
                raise TaskRefused(
                    "pin",
                    f"the run's local epochs / batch size {_training_shape(config)} differ from "
                    f"the {pinned} this site charged its privacy ledger for",
                )
            event = first["event"]
            return RecordSchedule(
                float(event["sample_rate"]),
                int(event["steps"]),
                float(event["noise_multiplier"]),
                int(first["rounds"]),
                float(first.get("stats_noise_multiplier", 0.0)),
            )
        try:
            rounds = int(config.get("rounds", 0))
        except (TypeError, ValueError) as exc:
            raise TaskRefused("error", f"the run's rounds do not read: {exc}") from exc
        epochs, batch = _training_shape(config)
        return schedule_for(
            plan,
            int(client.num_train),
            batch,
            epochs,
            rounds,
            standardise=bool(getattr(client, "private_standardiser", False)),
        )

    def _accountant(self, run_id: str, plan: PrivacyPlan, mine: list[Entry]) -> Any:
        """The run's one accountant; after a restart, rebuilt from the run's ledger entries."""
        if run_id not in self._accountants:
            history = []
            for e in mine:
                for extra in e.statement.get("extra_events", []):
                    history.append(stats_history(float(extra["noise_multiplier"])))
                history.append(
                    (
                        float(e.statement["event"]["noise_multiplier"]),
                        float(e.statement["event"]["sample_rate"]),
                        int(e.statement["event"]["steps"]),
                    )
                )
            self._accountants[run_id] = make_accountant(plan.accountant, history)
        return self._accountants[run_id]

    @staticmethod
    def _epsilon_after(
        accountant: Any, schedule: RecordSchedule, plan: PrivacyPlan, extra: list[dict[str, Any]]
    ) -> float:
        """The run's ε at its δ once this round's steps are taken (what the hook will count)."""
        probe = make_accountant(
            plan.accountant,
            list(accountant.history)
            + [stats_history(float(e["noise_multiplier"])) for e in extra]
            + [(schedule.noise_multiplier, schedule.sample_rate, schedule.steps_per_round)],
        )
        return float(probe.get_epsilon(delta=plan.delta))

    def after_round(self, privacy: RoundPrivacy | SiteRoundPrivacy) -> dict[str, float]:
        """Metrics for the update: the ε the run's accountant actually counted."""
        if isinstance(privacy, SiteRoundPrivacy):
            return dict(privacy.metrics)  # the noise is added at encoding, as charged
        counted = float(privacy.accountant.get_epsilon(delta=privacy.plan.delta))
        return {**privacy.metrics, "dp_epsilon": counted}


def _training_shape(config: dict[str, Any]) -> tuple[int, int]:
    """(local epochs, batch size) a task asks for: what sets the DP steps of a round."""
    try:
        return int(config.get("local_epochs", 1)), int(config.get("batch_size", 32))
    except (TypeError, ValueError) as exc:
        raise TaskRefused("error", f"the run's epochs/batch size do not read: {exc}") from exc


def json_plan(plan: PrivacyPlan) -> dict[str, Any]:
    """The plan as the ledger stores it: canonical JSON read back, so comparisons are exact."""
    import json

    return dict(json.loads(plan_key(plan)))
