"""A run's differential-privacy plan as the coordinator checks, stores and relays it.

The plan only proposes: each site derives its own noise from it and its data size, checks
the spend against its own budget and ledger (client/ledger.py) and may refuse. The
coordinator keeps the sites' signed ledger entries (``privacy.spent`` rows of the audit
log) for the report, which verifies them against the sites' identity keys; an entry it
altered or made up does not verify.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from coordinator.schema import Node, Run, Task
from crypto import identity
from protos import common_pb2, federation_pb2

MODES = ("record", "site")
ACCOUNTANTS = ("rdp", "prv")
MAX_EPSILON = 100.0
MAX_DELTA = 1e-2
MAX_STATEMENT = 4096
PRIVACY_KEY = "privacy"


def plan_from_proto(plan: common_pb2.PrivacyPlan, secure: str) -> dict[str, Any] | None:
    """The validated plan as plain data, ``None`` for a run without DP.

    Raises
    ------
    InvalidArgument
        Naming the field (``privacy.epsilon`` …) that is out of range.
    """
    if not plan.mode:
        if plan.epsilon or plan.delta or plan.noise_multiplier or plan.max_grad_norm:
            raise InvalidArgument(
                "privacy.mode must be 'record' or 'site' when DP settings are given"
            )
        return None
    if plan.mode not in MODES:
        raise InvalidArgument(f"privacy.mode must be one of {', '.join(MODES)}, not {plan.mode!r}")
    for name in ("epsilon", "delta", "noise_multiplier", "max_grad_norm"):
        value = getattr(plan, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"privacy.{name} must be a finite number >= 0, not {value}")
    if not 0.0 < plan.delta <= MAX_DELTA:
        raise InvalidArgument(f"privacy.delta must be in (0, {MAX_DELTA}], not {plan.delta}")
    if plan.epsilon and plan.noise_multiplier:
        raise InvalidArgument("privacy: give epsilon or noise_multiplier, not both")
    if not plan.epsilon and not plan.noise_multiplier:
        raise InvalidArgument("privacy.epsilon must be > 0 (or give a noise_multiplier)")
    if plan.epsilon > MAX_EPSILON:
        raise InvalidArgument(f"privacy.epsilon must be at most {MAX_EPSILON}, not {plan.epsilon}")
    if plan.noise_multiplier and not 0.1 <= plan.noise_multiplier <= 100:
        raise InvalidArgument(
            f"privacy.noise_multiplier must be in [0.1, 100], not {plan.noise_multiplier}"
        )
    accountant = plan.accountant or "rdp"
    if accountant not in ACCOUNTANTS:
        raise InvalidArgument(
            f"privacy.accountant must be one of {', '.join(ACCOUNTANTS)}, not {accountant!r}"
        )
    clip = plan.max_grad_norm or 1.0
    if clip > 1e3:
        raise InvalidArgument(f"privacy.max_grad_norm must be in (0, 1000], not {clip}")
    if plan.mode == "site":
        # Not built yet (distributed discrete Gaussian noise shares inside the encrypted
        # sum): refused here rather than accepted and refused by every site.
        raise InvalidArgument(
            "privacy.mode 'site' is not implemented in this version: use 'record'"
        )
    return {
        "mode": plan.mode,
        "epsilon": float(plan.epsilon),
        "delta": float(plan.delta),
        "noise_multiplier": float(plan.noise_multiplier),
        "max_grad_norm": float(clip),
        "accountant": accountant,
    }


def plan_to_proto(config: dict[str, Any]) -> common_pb2.PrivacyPlan | None:
    """The stored plan of a run's config as the proto a task carries."""
    plan = config.get(PRIVACY_KEY)
    if not isinstance(plan, dict) or not plan.get("mode"):
        return None
    return common_pb2.PrivacyPlan(
        mode=str(plan["mode"]),
        epsilon=float(plan.get("epsilon", 0.0)),
        delta=float(plan.get("delta", 0.0)),
        noise_multiplier=float(plan.get("noise_multiplier", 0.0)),
        max_grad_norm=float(plan.get("max_grad_norm", 1.0)),
        accountant=str(plan.get("accountant", "rdp")),
    )


def canonical(statement: dict[str, Any]) -> bytes:
    """The bytes a ledger statement is signed as (sorted keys, no spaces)."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def record_entry(
    session: Session, node_id: str, site: str, entry: federation_pb2.LedgerEntry
) -> federation_pb2.SubmitReply:
    """Store one site's signed ledger entry for a run it takes part in.

    The signature is checked here against the key the site joined with, so garbage is
    refused at the door; the report checks it again against the key then on record.

    Raises
    ------
    InvalidArgument
        An oversized or non-canonical statement, or one for another site or run.
    PermissionDenied
        A signature that does not verify under the site's identity.
    """
    if len(entry.statement) > MAX_STATEMENT or len(entry.signature) != 64:
        raise InvalidArgument(
            f"a ledger statement is at most {MAX_STATEMENT} bytes with a 64-byte signature"
        )
    try:
        statement = json.loads(entry.statement)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"the ledger statement is not JSON: {exc}") from exc
    if not isinstance(statement, dict) or canonical(statement) != bytes(entry.statement):
        raise InvalidArgument("the ledger statement must be canonical JSON (sorted, no spaces)")
    if statement.get("site") != site or statement.get("run_id") != entry.run_id:
        raise InvalidArgument("the ledger statement names another site or run")
    run = session.get(Run, entry.run_id)
    if run is None:
        raise NotFound(f"no run {entry.run_id!r}")
    if (
        session.query(Task.id).filter(Task.run_id == run.id, Task.node_id == node_id).first()
        is None
    ):
        raise PermissionDenied("this site has no task in that run")
    from sqlalchemy import func, select

    from coordinator.schema import AuditEvent

    held = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.run_id == run.id,
            AuditEvent.kind == "privacy.spent",
            AuditEvent.actor == node_id,
        )
    )
    # A site charges once per round (a redelivered task may charge again): a bound keeps a
    # site from flooding the audit log with valid but pointless entries.
    if int(held or 0) >= 2 * run.rounds + 2:
        raise FailedPrecondition(
            f"this site already sent {held} ledger entries for run {run.id} ({run.rounds} rounds)"
        )
    node = session.get(Node, node_id)
    assert node is not None
    try:
        identity.verify(
            bytes(node.ed25519_public_key), bytes(entry.statement), bytes(entry.signature)
        )
    except ValueError as exc:
        raise PermissionDenied(f"the ledger entry's signature does not verify: {exc}") from exc
    row = auditlog.append(
        session,
        "privacy.spent",
        run_id=run.id,
        actor=node_id,
        details={"site": site, "statement": statement, "signature": bytes(entry.signature).hex()},
    )
    return federation_pb2.SubmitReply(id=str(row.seq), message="ledger entry recorded")


def ledger_entries(session: Session, run_id: str) -> list[dict[str, Any]]:
    """The run's ledger entries as stored, each re-verified against its site's identity key.

    ``verified`` is False (with ``problem``) for an entry whose statement or signature was
    changed after the site sent it, or whose site's key is not the one on record: the
    report shows such an entry as unverified rather than trusting the coordinator's copy.
    """
    from sqlalchemy import select

    from coordinator.schema import AuditEvent, Institution

    keys: dict[str, tuple[str, bytes]] = {}
    for node, name in session.execute(
        select(Node, Institution.name).join(Institution, Node.institution_id == Institution.id)
    ):
        keys[node.id] = (name, bytes(node.ed25519_public_key or b""))
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.run_id == run_id, AuditEvent.kind == "privacy.spent")
        .order_by(AuditEvent.seq)
    )
    entries = []
    for row in rows:
        details = json.loads(row.details)
        statement = details.get("statement") or {}
        site = str(details.get("site", ""))
        problem = ""
        try:
            signature = bytes.fromhex(str(details.get("signature", "")))
            if statement.get("site") != site:
                raise ValueError("the statement names another site")
            name, key = keys.get(row.actor, ("", b""))
            if name != site or not key:
                raise ValueError(f"no identity key on record for site {site!r}")
            identity.verify(key, canonical(statement), signature)
        except ValueError as exc:
            problem = str(exc)
        entries.append(
            {
                "site": site,
                "statement": statement,
                "verified": not problem,
                "problem": problem,
                "key_fingerprint": (
                    identity.fingerprint(keys[row.actor][1])
                    if keys.get(row.actor, ("", b""))[1]
                    else ""
                ),
            }
        )
    return entries


def privacy_facts(session: Session, run: Run) -> dict[str, Any] | None:
    """The report's ``differential_privacy``: the plan and, per site, what its ledger says.

    Per site: mechanism, the run's ε at the run's δ (its last entry), accountant, noise,
    and its ledger's ε before the run and after (at the site's own δ, all its runs on that
    dataset composed), with its budget. Only entries whose signature verifies against the
    site's key on record count; others are listed as unverified, never used.
    """
    plan = run.config.get(PRIVACY_KEY)
    if not isinstance(plan, dict):
        return None
    entries = ledger_entries(session, run.id)
    sites: dict[str, dict[str, Any]] = {}
    unverified = []
    for entry in entries:
        if not entry["verified"]:
            unverified.append({"site": entry["site"], "problem": entry["problem"]})
            continue
        statement = entry["statement"]
        site = sites.setdefault(
            entry["site"],
            {
                "site": entry["site"],
                "mechanism": statement.get("mechanism"),
                "accountant": statement.get("accountant"),
                "noise_multiplier": statement.get("event", {}).get("noise_multiplier"),
                "sample_rate": statement.get("event", {}).get("sample_rate"),
                "delta": statement.get("run_delta"),
                "ledger_delta": statement.get("ledger_delta"),
                "budget": statement.get("budget"),
                "ledger_epsilon_before": statement.get("ledger_epsilon_before"),
                "key_fingerprint": entry["key_fingerprint"],
                "rounds_charged": 0,
            },
        )
        site["rounds_charged"] += 1
        site["epsilon"] = statement.get("run_epsilon")
        site["ledger_epsilon_after"] = statement.get("ledger_epsilon_after")
    return {
        "mode": plan.get("mode"),
        "target_epsilon": plan.get("epsilon") or None,
        "delta": plan.get("delta"),
        "noise_multiplier": plan.get("noise_multiplier") or None,
        "max_grad_norm": plan.get("max_grad_norm"),
        "accountant": plan.get("accountant"),
        "sites": sorted(sites.values(), key=lambda s: s["site"]),
        "unverified_entries": unverified,
        "not_covered": (
            "held-out evaluation metrics and SHAP audit summaries are computed without DP "
            "noise and are not charged to the ledgers"
        ),
    }
