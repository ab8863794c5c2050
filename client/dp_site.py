"""The site's privacy gate: projects a run's spend against its budget, charges the ledger.

Before every training round (the run's first included) the site composes what its ledger
already holds for the dataset with what the rest of this run plans to spend, at the
site's own δ, and refuses (code ``budget``) when that would pass its budget; nothing of
its data is touched after a refusal. Otherwise the round is charged to the ledger first
(write-ahead), then trained with DP-SGD under the run's single accountant (record
mode), or trained as usual and sent in site-level DP's noised layout (site mode,
client/dp_site_scheme.py, whose layout the first charge pins).

This module is the guard and its record-level rounds; site-level rounds are
client/dp_site_rounds.py, the attribution summary's charge client/dp_audit_gate.py, and
what every charge shares (the dataset, the plan's and rounds' pins) client/dp_charge.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.dp import MECHANISM_RECORD, PrivacyPlan, RecordSchedule, make_accountant
from client.dp import record_schedule as schedule_for
from client.dp_audit_gate import RELEASE_AUDIT, AuditPrivacy, audit_charge
from client.dp_charge import check_plan, check_round, dataset_name, json_plan
from client.dp_norm import stats_event, stats_history
from client.dp_site_rounds import SiteRoundPrivacy, pinned_layout, site_round
from client.ledger import Entry, Ledger, compose
from client.policy import SitePolicy, TaskRefused
from crypto.dp_layout import SiteNoise
from protos import federation_pb2

__all__ = [
    "RELEASE_AUDIT",
    "AuditPrivacy",
    "PrivacyGuard",
    "RoundPrivacy",
    "SiteRoundPrivacy",
]

log = logging.getLogger(__name__)


@dataclass
class RoundPrivacy:
    """What a DP trainer needs for one round: the plan, the pinned schedule, the accountant."""

    plan: PrivacyPlan
    schedule: RecordSchedule
    accountant: Any
    entry: Entry
    metrics: dict[str, float] = field(default_factory=dict)


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
            return site_round(self.ledger, self.policy, task, plan, config, client)
        if plan.mode != "record":
            raise TaskRefused("policy", f"privacy mode {plan.mode!r} is not available at this site")
        if not hasattr(client, "fit_private"):
            raise TaskRefused("model", "this site's client cannot train with record-level DP")
        dataset = dataset_name(client)
        mine = self.ledger.round_entries(task.run_id, dataset)
        schedule = self._schedule(task, plan, config, client, mine)
        check_round(task, schedule.rounds, mine)
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
            "ledger_epsilon": after,
        }
        if budget is not None:
            metrics["privacy_budget_left"] = budget - after
        return RoundPrivacy(plan, schedule, accountant, entry, metrics)

    def before_audit(self, task: federation_pb2.Task, client: Any) -> AuditPrivacy | None:
        """Refuse, or charge the run's attribution summary (``audit_charge`` says how)."""
        return audit_charge(self.ledger, self.policy, task, client)

    def pinned_layout(self, run_id: str) -> SiteNoise | None:
        """The site-level DP layout this site's ledger pinned for ``run_id`` (None: none)."""
        return pinned_layout(self.ledger, run_id)

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
            check_plan(mine, plan)
            first = mine[0].statement
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
            rounded_rows(int(client.num_train), self.policy.dp_rows_step),
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
        """Metrics for the update: the ε charged for the round, as its ledger entry says.

        Not a count of the steps taken: Poisson batches that came out empty take no step,
        and how many did moves with the exact row count, an un-noised figure (review of
        2026-12-03). The run's accountant counts the charged steps (client/dp.py).
        """
        return dict(privacy.metrics)


def rounded_rows(rows: int, step: int) -> int:
    """``rows`` rounded up to a multiple of ``step``: the row count DP-SGD's schedule uses.

    The sample rate ``1 / ⌈rows / batch⌉`` and the steps travel in the site's signed
    ledger copies; computed from the exact count, runs with batches 16, 17, 18, … would
    each bound it and together pin it to a row (review: a coordinator could probe at ε ≈ 0
    with a large noise multiplier). From the rounded count, every schedule any run can ask
    for is a function of ``⌈rows / step⌉`` alone. Poisson sampling at the smaller rate
    still gives exactly the accounted privacy (Opacus's ``DPDataLoader`` samples each row
    with that probability whatever the dataset's size).
    """
    return -(-max(rows, 1) // step) * step


def _training_shape(config: dict[str, Any]) -> tuple[int, int]:
    """(local epochs, batch size) a task asks for: what sets the DP steps of a round."""
    try:
        return int(config.get("local_epochs", 1)), int(config.get("batch_size", 32))
    except (TypeError, ValueError) as exc:
        raise TaskRefused("error", f"the run's epochs/batch size do not read: {exc}") from exc
