"""What every charge of a site's privacy ledger shares (the gate is client/dp_site.py).

The dataset a charge names, the plan as the ledger stores it, and the pins a run's first
charge sets for its later ones: the plan itself, and the rounds it may charge (each once).
Used by the record-level rounds (client/dp_site.py), the site-level ones
(client/dp_site_rounds.py) and the attribution summary (client/dp_audit_gate.py).
"""

from __future__ import annotations

import json
from typing import Any

from client.dp import PrivacyPlan, plan_key
from client.ledger import Entry
from client.policy import TaskRefused
from protos import federation_pb2


def dataset_name(client: Any) -> str:
    """The dataset a charge is made against: the client's data fingerprint."""
    value = getattr(client, "data_fingerprint", None)
    return str(value) if value else "unfingerprinted-client"


def json_plan(plan: PrivacyPlan) -> dict[str, Any]:
    """The plan as the ledger stores it: canonical JSON read back, so comparisons are exact."""
    return dict(json.loads(plan_key(plan)))


def check_plan(mine: list[Entry], plan: PrivacyPlan) -> None:
    """The run's plan is the one its first charge at this site pinned.

    Raises
    ------
    TaskRefused
        ``pin`` when the plan changed since the site's first round.
    """
    if mine and mine[0].statement.get("plan") != json_plan(plan):
        raise TaskRefused("pin", "the run's privacy plan changed since this site's first round")


def check_round(task: federation_pb2.Task, rounds: int, mine: list[Entry]) -> None:
    """Each round of the pinned plan is charged and trained once, and no more rounds.

    Raises
    ------
    TaskRefused
        ``pin`` for a round past the plan's, one already charged (or an older one), or
        a round beyond the count the plan allows.
    """
    if task.round > rounds:
        raise TaskRefused(
            "pin", f"round {task.round} is past the {rounds} rounds this site planned"
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
    if len(mine) >= rounds:
        raise TaskRefused("pin", f"this site already trained the {rounds} rounds its plan allows")
