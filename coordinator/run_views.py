"""How the admin API shows a run: the ``RunInfo`` of ``runs show``, ``list`` and ``watch``."""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.errors import NotFound
from coordinator.schema import Round, Run, SiteAudit, Task, TaskKind, TaskState, Update
from protos import admin_pb2, serde


def find_run(session: Session, run_id: str) -> Run:
    """The run ``run_id``; NotFound for an unknown (or unusable) id."""
    usable = run_id and len(run_id) <= 36 and "\x00" not in run_id
    run = session.get(Run, run_id) if usable else None
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    return run


def run_info(
    session: Session, run: Run, offline_after_seconds: float, brief: bool = False
) -> admin_pb2.RunInfo:
    """A run as ``RunInfo``: its settings and state, and unless ``brief`` the rest.

    The rest: rounds, threshold custody, refusals, what it waits for, the sites' results.
    """
    info = admin_pb2.RunInfo(
        run_id=run.id,
        name=run.name,
        state=serde.run_state_to_proto(run.state),
        model=run.model,
        rounds=run.rounds,
        current_round=run.current_round,
        min_clients=run.min_clients,
        secure=serde.scheme_to_proto(run.secure),
        strategy=run.strategy,
        config_json=json.dumps(run.config, default=str),
        created_unix=run.created_at,
        started_unix=run.started_at,
        ended_unix=run.ended_at,
        failure_reason=run.failure_reason,
        key_fingerprint=run.key_fingerprint,
        custodian=run.custodian,
        final_model_sha256=run.final_model_sha256,
    )
    if brief:
        return info
    from coordinator.custody_view import custody_info

    custody = custody_info(session, run)
    if custody is not None:
        info.threshold_custody.CopyFrom(custody)
    info.audits_received = int(
        session.scalar(
            select(func.count()).select_from(SiteAudit).where(SiteAudit.run_id == run.id)
        )
        or 0
    )
    rounds = session.scalars(
        select(Round).where(Round.run_id == run.id).order_by(Round.number)
    ).all()
    for rnd in rounds:
        selected = (
            session.scalar(
                select(func.count())
                .select_from(Task)
                .where(
                    Task.run_id == run.id,
                    Task.round == rnd.number,
                    Task.kind == TaskKind.TRAIN,
                    Task.state != TaskState.CANCELLED,
                )
            )
            or 0
        )
        received = session.execute(
            select(func.count(), func.coalesce(func.sum(Update.size), 0)).where(
                Update.run_id == run.id, Update.round == rnd.number
            )
        ).one()
        info.round_infos.add(
            number=rnd.number,
            state=rnd.state.value,
            selected=int(selected),
            submitted=int(received[0]),
            total_weight=rnd.total_weight,
            metrics={k: float(v) for k, v in (rnd.metrics or {}).items()},
            opened_unix=rnd.opened_at,
            closed_unix=rnd.closed_at,
            model_sha256=rnd.model_sha256,
            bytes_received=int(received[1]),
        )
    from coordinator import refusals
    from coordinator.waiting import site_results, waiting_for

    refusals.add_refusals(session, run.id, info)
    now = time.time()
    info.waiting_for = waiting_for(session, run, now, offline_after_seconds)
    for site, audit, metrics in site_results(session, run, now):
        info.site_results.add(site_name=site, audit=audit, holdout_metrics=metrics)
    return info
