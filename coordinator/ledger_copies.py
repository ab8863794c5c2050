"""The sites' signed privacy-ledger entries as the coordinator keeps them, and what they say.

The coordinator keeps each site's signed ledger entries (``privacy.spent`` rows of the
audit log) for the report, which verifies them against the sites' identity keys: an entry
it altered or made up does not verify. The run's plan itself is coordinator/privacy.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from coordinator.identity import logged_fingerprints
from coordinator.privacy import PRIVACY_KEY, plan_to_proto
from coordinator.schema import Node, Run, Task
from crypto import identity
from protos import federation_pb2

MAX_STATEMENT = 4096
RELEASE_AUDIT = "attribution_summary"  # client/dp_audit_gate.py: the SHAP summary's charge


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


def _line_hash(statement: Any, signature: Any) -> str:
    """The hash a site's next ledger line names as ``prev`` (client/ledger.py Entry.line_hash)."""
    try:
        raw = bytes.fromhex(str(signature or ""))
        return hashlib.sha256(canonical(statement) + raw).hexdigest()
    except (ValueError, TypeError):
        return ""


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
    registered = logged_fingerprints(session, list(keys))
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
            # The key as the audit log registered it, not as the node row says now: a key
            # written into the row could re-sign altered entries (review of 2026-12-03).
            if identity.fingerprint(key) != registered.get(row.actor):
                raise ValueError(f"site {site!r}'s key on record is not the one it registered")
            identity.verify(key, canonical(statement), signature)
        except ValueError as exc:
            problem = str(exc)
        entries.append(
            {
                "site": site,
                "node_id": row.actor,
                "line_hash": _line_hash(statement, details.get("signature")),
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


def _silent_sites(
    session: Session,
    run: Run,
    entries: list[dict[str, Any]],
    charged: set[str],
    updates: Sequence[Any],
) -> list[dict[str, str]]:
    """Sites whose updates or audit summary the run holds, with no verified charge for it.

    A breached coordinator that files none of a site's entries, or drops the charge of its
    summary, would otherwise leave the report saying nothing of that site's spend
    (review of 2026-12-03).
    """
    from sqlalchemy import select

    from coordinator.queries import site_names
    from coordinator.schema import SiteAudit

    names = site_names(session)
    out = []
    trained: dict[str, set[int]] = {}
    for node, number in updates:
        trained.setdefault(node, set()).add(int(number))
    for node in sorted(set(trained) - charged):
        rounds = ", ".join(map(str, sorted(trained[node])))
        out.append(
            {
                "site": names.get(node, f"node {node}"),
                "problem": f"sent updates for round(s) {rounds} and no verified ledger entry",
            }
        )
    audited = session.scalars(select(SiteAudit.node_id).where(SiteAudit.run_id == run.id))
    charged_audits = {
        e["node_id"]
        for e in entries
        if e["verified"] and _is_audit(e) and e["statement"].get("run_id") == run.id
    }
    for node in sorted(set(audited) - charged_audits):
        out.append(
            {
                "site": names.get(node, f"node {node}"),
                "problem": "its audit summary is on file with no verified charge for it",
            }
        )
    return out


def _signed_plan(config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's plan as a site signs it: the task's proto fields (float32 as the site saw)."""
    proto = plan_to_proto(config)
    if proto is None:
        return None
    signed: dict[str, Any] = {
        "mode": proto.mode,
        "epsilon": float(proto.epsilon),
        "delta": float(proto.delta),
        "noise_multiplier": float(proto.noise_multiplier),
        "max_grad_norm": float(proto.max_grad_norm or 1.0),
        "accountant": proto.accountant or "rdp",
    }
    if proto.mode == "site":  # client/dp.py PrivacyPlan.as_dict
        signed.update(quorum=int(proto.quorum), max_sites=int(proto.max_sites))
    return signed


def _same_plan(signed: Any, expected: dict[str, Any] | None) -> bool:
    if not isinstance(signed, dict) or expected is None or set(signed) != set(expected):
        return False
    for key, want in expected.items():
        got = signed[key]
        if isinstance(want, float):
            if not isinstance(got, int | float) or not math.isclose(got, want, rel_tol=1e-6):
                return False
        elif got != want:
            return False
    return True


def _entry_problem(
    entry: dict[str, Any], run: Run, plan: dict[str, Any] | None, seen: set[str]
) -> str:
    """Why a correctly signed entry still cannot count for this run ("" when it can)."""
    if not entry["verified"]:
        return str(entry["problem"])
    statement = entry["statement"]
    if statement.get("run_id") != run.id:
        return f"the site signed this entry for run {str(statement.get('run_id'))[:64]!r}"
    rnd = statement.get("round")
    # A DP run's attribution summary is charged at its audit task (round rounds + 1).
    last = run.rounds + 1 if statement.get("release") == RELEASE_AUDIT else run.rounds
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 1 <= rnd <= last:
        return f"the entry's round {statement.get('round')!r} is not a round of this run"
    if not _same_plan(statement.get("plan"), plan):
        return "the plan the site signed is not the run's plan"
    if entry["line_hash"] in seen:
        return "a second copy of the same signed entry"
    seen.add(entry["line_hash"])
    return ""


def _chain_problems(site: str, entries: list[dict[str, Any]], trained: set[int]) -> list[str]:
    """Order a site's entries by round and check it against the signed ``prev`` links.

    Each entry names the hash of the line before it in the site's ledger (which also
    holds its other runs, so links need not be contiguous here). A link that points
    backwards in round order, two entries naming the same ``prev`` (a forked ledger) or
    a round the site sent an update for without a verified charge are problems.
    """
    problems = []
    position = {e["line_hash"]: i for i, e in enumerate(entries)}
    prevs: set[str] = set()
    for i, entry in enumerate(entries):
        prev = str(entry["statement"].get("prev", ""))
        if prev in prevs:
            problems.append(f"{site}: two entries follow the same ledger line (forked ledger)")
        prevs.add(prev)
        if prev in position and position[prev] >= i:
            problems.append(f"{site}: round {entry['statement']['round']} is out of chain order")
    charged = {int(e["statement"]["round"]) for e in entries if not _is_audit(e)}
    highest = max(charged | trained, default=0)
    missing = sorted(r for r in range(1, highest + 1) if r not in charged)
    if missing:
        problems.append(
            f"{site}: no verified ledger entry for round(s) {', '.join(map(str, missing))}"
        )
    return problems


def privacy_facts(session: Session, run: Run) -> dict[str, Any] | None:
    """The report's ``differential_privacy``: the plan and, per site, what its ledger says.

    Per site: mechanism, the run's ε at the run's δ and its ledger's ε after (both the
    highest the site signed for this run: ε only grows, so a coordinator that re-files an
    early entry or drops a late one cannot lower them), accountant, noise, the ledger's ε
    before the run, with its budget. An entry counts only if its signature verifies
    against the site's key on record, it names this run, one of its rounds and the run's
    plan, and is not a second copy; entries are ordered by round and checked against the
    signed ``prev`` chain. Anything else is listed as unverified, never used.
    """
    plan = run.config.get(PRIVACY_KEY)
    if not isinstance(plan, dict):
        return None
    from sqlalchemy import select

    from coordinator.schema import Update

    expected = _signed_plan(run.config)
    sites: dict[str, dict[str, Any]] = {}
    by_site: dict[str, list[dict[str, Any]]] = {}
    node_of: dict[str, str] = {}
    unverified = []
    seen: set[str] = set()
    stored = ledger_entries(session, run.id)
    for entry in stored:
        problem = _entry_problem(entry, run, expected, seen)
        if problem:
            unverified.append({"site": entry["site"], "problem": problem})
            continue
        by_site.setdefault(entry["site"], []).append(entry)
        node_of[entry["site"]] = entry["node_id"]
    updates = session.execute(
        select(Update.node_id, Update.round).where(Update.run_id == run.id)
    ).all()
    unverified += _silent_sites(session, run, stored, set(node_of.values()), updates)
    for name, entries in by_site.items():
        entries.sort(key=lambda e: (e["statement"]["round"], _number(e["statement"].get("time"))))
        trained = {int(r) for node, r in updates if node == node_of[name]}
        for problem in _chain_problems(name, entries, trained):
            unverified.append({"site": name, "problem": problem})
        rounds = [e for e in entries if not _is_audit(e)]
        audits = [e for e in entries if _is_audit(e)]
        first = (rounds or entries)[0]["statement"]
        sites[name] = {
            "site": name,
            "mechanism": first.get("mechanism"),
            "accountant": first.get("accountant"),
            "noise_multiplier": first.get("event", {}).get("noise_multiplier"),
            "sample_rate": first.get("event", {}).get("sample_rate"),
            "delta": first.get("run_delta"),
            "ledger_delta": first.get("ledger_delta"),
            "budget": first.get("budget"),
            "ledger_epsilon_before": first.get("ledger_epsilon_before"),
            "key_fingerprint": entries[0]["key_fingerprint"],
            "rounds_charged": len(rounds),
            # A site that only released its summary spent nothing on training in this run.
            "epsilon": _highest(rounds, "run_epsilon") if rounds else 0.0,
            # The noisy SHAP summary's own ε at the run's δ (client/dp_audit.py), if released.
            "audit_epsilon": _highest(audits, "audit_epsilon"),
            "ledger_epsilon_after": _highest(entries, "ledger_epsilon_after"),
        }
    return {
        "mode": plan.get("mode"),
        "target_epsilon": plan.get("epsilon") or None,
        "delta": plan.get("delta"),
        "noise_multiplier": plan.get("noise_multiplier") or None,
        "max_grad_norm": plan.get("max_grad_norm"),
        "accountant": plan.get("accountant"),
        "sites": sorted(sites.values(), key=lambda s: s["site"]),
        "unverified_entries": unverified,
        # What no site released (client/tasks.py withheld): exact figures no ε covers.
        "withheld": (
            "each site's example count, its training, evaluation and timing metrics and its "
            "held-out scores of the final model (every site weighs 1); SHAP audit summaries "
            "are released with the Gaussian mechanism and charged (audit ε per site)"
        ),
        "not_covered": "; ".join(
            (
                [
                    "a record-level site's DP-SGD sample rate and steps (in its signed "
                    "ledger entries) tell its training row count rounded up to a multiple "
                    "of its --dp-rows-step (16 by default), whatever batch sizes its runs use"
                ]
                if plan.get("mode") == "record"
                else []
            )
            + [
                "a DP audit summary's row count and noise scale tell a site's held-out row "
                "count when it has fewer than the audit's 100 rows",
                "the time from a task to its update tells roughly how much a site trained",
            ]
        ),
    }


def _is_audit(entry: dict[str, Any]) -> bool:
    return bool(entry["statement"].get("release") == RELEASE_AUDIT)


def _number(value: Any) -> float:
    """A signed field as a number for ordering (a site may sign anything there)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def _highest(entries: list[dict[str, Any]], field: str) -> float | None:
    values = [
        float(e["statement"][field])
        for e in entries
        if isinstance(e["statement"].get(field), int | float)
        and math.isfinite(e["statement"][field])
    ]
    return max(values) if values else None
