"""Per-run facts about the sites, fixed before round 1: the pinned schema, who is out, provenance.

- The run's data schema is pinned once: the operator's (run config ``schema``, checked at
  CreateRun) or else the schema of the first site to have joined among those online
  when the run starts (the custodian's when the run names one). Tasks carry it; sites
  match their columns to it by name.
- A site whose reported schema differs (missing, extra or differently typed columns,
  unknown label classes) is left out of the run before it is given any task; a
  ``schema`` SiteRefusal row and an audit row name it and the difference, so
  ``runs show`` says why. A site that itself refused a task for ``model`` or ``schema``
  is left out of the rest of the run the same way.
- When a site is first given a task in a run, its rows, data fingerprint, schema
  fingerprint and agent version are copied into ``run_sites`` and audit-logged
  (``site.provenance``): what reports read, whatever the site later re-joins with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.queries import site_name
from coordinator.refusals import clean_reason
from coordinator.schema import Node, Run, RunSite, SiteRefusal
from protos import data_schema

# Refusals after which a site will refuse every other task of the run too.
LASTING_CODES = ("model", "schema")


def operator_schema(config: Mapping[str, object]) -> str:
    """The canonical JSON of the run config's ``schema``; "" when it names none.

    Raises
    ------
    ValueError
        Naming what is wrong with the schema.
    """
    value = config.get("schema")
    if value in (None, {}, ""):
        return ""
    try:
        return data_schema.from_dict(value).canonical()
    except ValueError as exc:
        raise ValueError(f"config 'schema': {exc}") from exc


def reported_schema(node: Node) -> data_schema.DataSchema | None:
    """The schema ``node`` reported; None when none or when it does not read."""
    try:
        return data_schema.from_capabilities(node.capabilities or {})
    except ValueError:
        return None


def pin_schema(session: Session, run: Run, online: Sequence[Node]) -> None:
    """Pin the run's schema from its first participant, unless one is pinned already."""
    if run.data_schema:
        return
    ordered = sorted(online, key=lambda n: (n.created_at, n.id))
    if run.custodian:
        ordered.sort(key=lambda n: site_name(session, n) != run.custodian)
    for node in ordered:
        schema = reported_schema(node)
        if schema is None:
            continue
        run.data_schema = schema.canonical()
        auditlog.append(
            session,
            "run.schema_pinned",
            run_id=run.id,
            actor=node.id,
            details={
                "site": site_name(session, node),
                "schema_sha256": schema.fingerprint(),
                "columns": len(schema.columns),
            },
        )
        return


def schema_problems(run: Run, node: Node) -> list[str]:
    """How ``node``'s reported schema differs from the run's pinned one (empty: it fits)."""
    if not run.data_schema:
        return []
    pinned = data_schema.from_json(run.data_schema)
    try:
        seen = data_schema.from_capabilities(node.capabilities or {})
    except ValueError as exc:
        return [f"its reported schema does not read ({exc})"]
    if seen is None:
        return []  # a client that reports no schema (a Flower app) checks nothing here
    return data_schema.differences(pinned, seen)


def _lasting_refusals(session: Session, run_id: str) -> dict[str, str]:
    rows = session.scalars(
        select(SiteRefusal).where(
            SiteRefusal.run_id == run_id,
            SiteRefusal.code.in_(LASTING_CODES),
            SiteRefusal.task_id != "",
        )
    )
    return {row.node_id: f"refused ({row.code}): {row.reason}" for row in rows}


def excluded(session: Session, run: Run, nodes: Sequence[Node]) -> dict[str, str]:
    """Node id → why it is left out of ``run`` (schema difference or a lasting refusal)."""
    out = _lasting_refusals(session, run.id)
    for node in nodes:
        if node.id in out:
            continue
        problems = schema_problems(run, node)
        if problems:
            out[node.id] = "; ".join(problems)
    return {node.id: out[node.id] for node in nodes if node.id in out}


def admissible(session: Session, run: Run, online: Sequence[Node], now: float) -> list[Node]:
    """The online sites that may take part; the others get a refusal row (once) saying why."""
    left_out = excluded(session, run, online)
    refused = _lasting_refusals(session, run.id)  # these said why themselves
    for node in online:
        reason = left_out.get(node.id)
        if reason is None or node.id in refused:
            continue
        _record_exclusion(session, run, node, reason, now)
    return [node for node in online if node.id not in left_out]


def _record_exclusion(session: Session, run: Run, node: Node, reason: str, now: float) -> None:
    text = clean_reason(
        f"site {site_name(session, node)} does not match the run's schema: {reason}"
    )
    already = session.scalar(
        select(SiteRefusal.id).where(
            SiteRefusal.run_id == run.id,
            SiteRefusal.node_id == node.id,
            SiteRefusal.code == "schema",
            SiteRefusal.reason == text,
        )
    )
    if already is not None:
        return
    session.add(
        SiteRefusal(
            run_id=run.id,
            node_id=node.id,
            task_id="",
            round=run.current_round,
            code="schema",
            reason=text,
            time=now,
        )
    )
    auditlog.append(
        session,
        "site.excluded",
        run_id=run.id,
        actor=node.id,
        details={"site": site_name(session, node), "code": "schema", "reason": text[:300]},
    )


def impossible(session: Session, run: Run) -> str | None:
    """Why the run can never gather ``min_clients`` sites, or None while it still may.

    Counts every enrolled node, online or not, that is not left out: a site that is
    offline may still come back, one that is left out will not without new data.
    """
    nodes = list(session.scalars(select(Node).where(Node.revoked_at == 0.0)))
    left_out = excluded(session, run, nodes)
    if len(nodes) - len(left_out) >= run.min_clients or not left_out:
        return None
    named = "; ".join(
        f"{site_name(session, node)}: {left_out[node.id]}" for node in nodes if node.id in left_out
    )
    return clean_reason(
        f"only {len(nodes) - len(left_out)} of the {run.min_clients} sites the run needs can "
        f"take part; left out: {named}"
    )


def record(session: Session, run: Run, node_id: str, now: float | None = None) -> None:
    """Freeze ``node_id``'s provenance in ``run`` the first time it is given a task there."""
    exists = session.scalar(
        select(RunSite.id).where(RunSite.run_id == run.id, RunSite.node_id == node_id)
    )
    if exists is not None:
        return
    node = session.get(Node, node_id)
    if node is None:
        return
    caps = node.capabilities or {}
    schema = reported_schema(node)
    try:
        rows = max(0, int(str(caps.get("rows", "0") or "0")))
    except ValueError:
        rows = 0
    fingerprint = str(caps.get("data_fingerprint", "") or "")[:64]
    site = RunSite(
        run_id=run.id,
        node_id=node.id,
        site_name=site_name(session, node),
        rows=min(rows, 2**62),
        data_fingerprint=fingerprint,
        schema_fingerprint=schema.fingerprint() if schema is not None else "",
        agent_version=node.agent_version or "",
        recorded_at=time.time() if now is None else now,
    )
    session.add(site)
    session.flush()
    auditlog.append(
        session,
        "site.provenance",
        run_id=run.id,
        actor=node.id,
        details={
            "site": site.site_name,
            "rows": site.rows,
            "data_fingerprint": site.data_fingerprint,
            "schema_sha256": site.schema_fingerprint,
            "agent_version": site.agent_version,
        },
    )


def recorded_nodes(session: Session, run_id: str) -> set[str]:
    """The nodes whose provenance ``run_id`` holds (one query for a round's many tasks)."""
    return set(session.scalars(select(RunSite.node_id).where(RunSite.run_id == run_id)))


def frozen_sites(session: Session, run_id: str) -> dict[str, RunSite]:
    """Node id → the provenance recorded for it in ``run_id``."""
    rows = session.scalars(select(RunSite).where(RunSite.run_id == run_id))
    return {row.node_id: row for row in rows}
