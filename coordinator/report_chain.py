"""The report's facts held against the run's own rows of the verified audit chain.

The facts come from tables an operator with database access can edit; the audit chain
is hash-linked, so an edit there shows as a broken chain. A report that only said "audit
log: verified" beside edited tables would vouch for the edit (review of 2026-12-03: a
renamed model, a renamed site with another row count and fingerprint, a deleted update
and changed round metrics all read as verified). So each fact the chain also records is
compared with the chain's record, and every difference is listed in the report:

- ``run.created``: the model, the planned rounds, the scheme, the strategy and the
  configuration's sha256;
- ``site.provenance``: each site's name, row count, data and schema fingerprints;
- ``round.closed``: each closed round's update count, total weight, contributing nodes,
  aggregate sha256 and (rows written since 2026-12-03) metrics; and a round the chain
  closed that the tables lack;
- ``run.trained`` and ``run.completed``: the final model's sha256;
- ``key.registered``: the secure run's key fingerprint (and the report takes the key's
  custodian and size from this row, not from the run's columns).

Only rows up to where the chain verifies count: past a broken row nothing is evidence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from coordinator.schema import AuditEvent, Round, Run

_CHECKED = (
    "run.created",
    "run.started",
    "site.provenance",
    "round.closed",
    "run.trained",
    "run.completed",
    "key.registered",
)


def run_rows(rows: Iterable[AuditEvent], run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(kind, actor, details)`` of the run's rows that the report compares, in order."""
    out = []
    for row in rows:
        if row.run_id != run_id or row.kind not in _CHECKED:
            continue
        try:
            details = json.loads(row.details)
        except ValueError:
            details = {}
        out.append((row.kind, row.actor, details if isinstance(details, dict) else {}))
    return out


def discrepancies(
    run: Run,
    config_sha256: str,
    sites: Sequence[Mapping[str, Any]],
    closed: Sequence[Round],
    contributors: Mapping[int, set[str]],
    rows: Sequence[tuple[str, str, dict[str, Any]]],
) -> list[str]:
    """Every fact of the report that its run's verified audit rows contradict (module doc).

    ``contributors``: round number → the nodes whose updates the tables hold for it.
    """
    return [
        *_created(run, config_sha256, [d for kind, _, d in rows if kind == "run.created"]),
        *_sites(sites, {actor: d for kind, actor, d in rows if kind == "site.provenance"}),
        *_rounds(closed, contributors, [d for kind, _, d in rows if kind == "round.closed"]),
        *_completed(run, [d for kind, _, d in rows if kind in ("run.trained", "run.completed")]),
        *_key(run, registered_key(rows)),
    ]


def run_version(rows: Sequence[tuple[str, str, dict[str, Any]]]) -> str | None:
    """The coordinator's version when the run started, as ``run.started`` logged it."""
    started = [d for kind, _, d in rows if kind == "run.started" and d.get("code_version")]
    return str(started[0]["code_version"]) if started else None


def registered_key(rows: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The run's ``key.registered`` row: custodian, fingerprint and bits as the log has them."""
    keys = [d for kind, _, d in rows if kind == "key.registered"]
    return keys[-1] if keys else None


def _key(run: Run, logged: dict[str, Any] | None) -> list[str]:
    if logged is None or logged.get("fingerprint") == run.key_fingerprint:
        return []
    return [
        f"key fingerprint is {run.key_fingerprint[:16] or 'none'}, the log's key.registered "
        f"says {str(logged.get('fingerprint'))[:16]}"
    ]


def _created(run: Run, config_sha256: str, created: list[dict[str, Any]]) -> list[str]:
    if not created:
        return ["the audit log holds no run.created row for this run"]
    found = []
    # Each field the report shows that sits in its own column, outside the config's hash.
    shown = (
        ("model", run.model),
        ("rounds", run.rounds),
        ("secure", str(run.secure)),
        ("strategy", run.strategy),
    )
    for field, value in shown:
        said = created[0].get(field)
        if field in created[0] and said != value:
            found.append(f"run {field} is {value!r}, the log's run.created says {said!r}")
    own = created[0].get("config_json_sha256")  # rows written since 2026-12-03
    if own is not None and own != config_sha256:
        found.append(
            f"configuration sha256 is {config_sha256[:16]}…, the log's run.created says "
            f"{str(own)[:16]}…"
        )
    return found


def _sites(sites: Sequence[Mapping[str, Any]], logged: Mapping[str, dict[str, Any]]) -> list[str]:
    found = []
    for site in sites:
        row = logged.get(str(site["node_id"]))
        if row is None:
            # A run from before provenance was recorded claims nothing for the site.
            if (
                site.get("data_fingerprint")
                or site.get("row_count")
                or site.get("schema_fingerprint")
            ):
                found.append(f"site {site['name']!r}: no site.provenance row in the log")
            continue
        for fact, field in (
            ("name", "site"),
            ("row_count", "rows"),
            ("data_fingerprint", "data_fingerprint"),
            ("schema_fingerprint", "schema_sha256"),
        ):
            value, said = site.get(fact), row.get(field)
            if (value or None) != (said or None):
                found.append(f"site {site['name']!r}: {fact} is {value!r}, the log says {said!r}")
    return found


def _rounds(
    closed: Sequence[Round], contributors: Mapping[int, set[str]], logged: list[dict[str, Any]]
) -> list[str]:
    found = []
    closings = {int(d.get("round", 0)): d for d in logged}
    for current in closed:
        row = closings.pop(current.number, None)
        if row is None:
            found.append(f"round {current.number}: no round.closed row in the log")
            continue
        checks: list[tuple[str, Any, Any]] = [
            ("updates", current.num_updates, row.get("updates")),
            ("total weight", int(current.total_weight), row.get("total_weight")),
            ("aggregate sha256", current.model_sha256, row.get("model_sha256")),
            (
                "contributing nodes",
                sorted(contributors.get(current.number, set())),
                sorted(row.get("sites") or []),
            ),
        ]
        if "metrics" in row:  # rows written since 2026-12-03; as canonical JSON (NaN == NaN)
            checks.append(("metrics", _canonical(current.metrics), _canonical(row["metrics"])))
        for what, value, said in checks:
            if value != said:
                found.append(f"round {current.number}: {what} {value!r}, the log says {said!r}")
    for number in sorted(closings):
        found.append(f"round {number}: the log closed it, the tables hold no closed round")
    return found


def _completed(run: Run, ended: list[dict[str, Any]]) -> list[str]:
    """The final model against the last ``run.trained`` or ``run.completed`` row."""
    said = ended[-1].get("final_model_sha256") if ended else None
    if said is None or said == (run.final_model_sha256 or ""):
        return []
    return [
        f"final model sha256 is {run.final_model_sha256[:16] or 'none'}…, the log says "
        f"{str(said)[:16]}…"
    ]


def _canonical(value: Any) -> str:
    return json.dumps(value or {}, sort_keys=True, default=str)
