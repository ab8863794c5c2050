"""Compliance report: build the facts document, validate it, and write it as HTML, PDF or JSON.

The facts document (see :mod:`explain.facts` and ``explain/report.schema.json``) is the
report. It is computed once, validated against the schema that ships with the package,
and only then rendered, so the three formats always state the same, checked facts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import jsonschema

from explain.facts import REPORT_VERSION, ReportFacts, config_sha256
from explain.federated import compare_sites, compatible_summaries, merge_summaries
from explain.regulations import map_regulations
from explain.report_html import render_html
from explain.report_pdf import render_pdf
from explain.summary import AttributionSummary

__all__ = [
    "FORMATS",
    "build_facts",
    "config_sha256",
    "render_html",
    "render_json",
    "render_pdf",
    "validate_facts",
    "write_report",
]

FORMATS = ("html", "pdf", "json")

Timestamp = str | float | int | datetime | None


def build_facts(
    *,
    run: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]],
    privacy: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    summaries: Sequence[AttributionSummary],
    audit_log: Mapping[str, Any],
    threshold: float = 0.5,
    generated_at: datetime | None = None,
    rejected: Sequence[Mapping[str, str]] = (),
) -> ReportFacts:
    """Assemble and validate the facts document of a run.

    The caller supplies what the coordinator knows (run record, sites, privacy settings,
    per-round metrics, audit-log verdict) and the sites' attribution summaries; this
    function adds what is derived: the merged attribution, the site comparisons, the
    regulation mapping and, when absent, ``run.config_sha256``.

    Parameters
    ----------
    run
        Keys as in the schema's ``run``. Timestamps may be ISO strings, epoch seconds
        (as the coordinator stores them) or aware datetimes; they are written as UTC ISO
        8601. ``state`` may be a ``StrEnum``.
    sites, privacy, metrics, audit_log
        As in the schema; copied, not mutated. Metrics are sorted by round.
    summaries
        One per auditing site; empty when no audit ran (``attribution`` is then null).
        Summaries that cannot be merged with the others (a site's second one, other
        features, classes or kind) are moved to ``rejected_summaries`` with the reason.
    rejected
        Summaries the caller already rejected (e.g. malformed): ``{"site", "reason"}``.
    threshold
        Rank-correlation threshold below which a site is flagged
        (see :func:`explain.federated.compare_sites`).
    generated_at
        Defaults to now (UTC).

    Raises
    ------
    ValueError
        When the inputs do not make a valid report (see :func:`validate_facts`) or the
        summaries cannot be merged.
    """
    run_facts = {
        **run,
        "state": str(run.get("state", "")),
        "created_at": _iso(run.get("created_at")),
        "started_at": _iso(run.get("started_at")),
        "ended_at": _iso(run.get("ended_at")),
    }
    if run_facts.get("config_sha256") is None and isinstance(run.get("config"), Mapping):
        run_facts["config_sha256"] = config_sha256(run["config"])
    facts: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "generated_at": _iso(generated_at or datetime.now(UTC)),
        "run": run_facts,
        "sites": [
            {**site, "rounds_participated": sorted(site.get("rounds_participated", []))}
            for site in sites
        ],
        "privacy": {**privacy, "key_fingerprints": list(privacy.get("key_fingerprints", []))},
        "metrics": sorted(
            ({**m, "metrics": dict(m.get("metrics", {}))} for m in metrics),
            key=lambda m: m.get("round", 0),
        ),
        "audit_log": dict(audit_log),
    }
    known_sites = {site.get("name") for site in sites}
    usable, left_out = compatible_summaries([s for s in summaries if s.site in known_sites])
    facts["attribution"] = _attribution(usable, threshold)
    refused = (
        [{"site": str(r["site"]), "reason": str(r["reason"])} for r in rejected]
        + [
            {"site": s.site, "reason": "this site is not among the run's sites"}
            for s in summaries
            if s.site not in known_sites
        ]
        + [r.to_dict() for r in left_out]
    )
    if refused:  # only present when something was left out: other reports stay as they were
        facts["rejected_summaries"] = refused
    facts["regulations"] = map_regulations(facts)
    validate_facts(facts)
    return cast(ReportFacts, facts)


def validate_facts(facts: Mapping[str, Any]) -> None:
    """Check a facts document against ``report.schema.json`` and its cross-references.

    Beyond the schema: rounds completed may not exceed rounds planned, and every site with
    an attribution summary must be one of the report's sites.

    Raises
    ------
    ValueError
        Naming the first offending location, e.g. ``run.config_sha256``.
    """
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(facts))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(document)"
        raise ValueError(f"report facts invalid at {where}: {error.message}")
    run = facts["run"]
    if run["rounds_completed"] > run["rounds_planned"]:
        raise ValueError(
            f"report facts invalid at run.rounds_completed: {run['rounds_completed']} rounds "
            f"completed of {run['rounds_planned']} planned"
        )
    attribution = facts["attribution"]
    if attribution:
        known = {site["name"] for site in facts["sites"]}
        strangers = sorted({s["site"] for s in attribution["sites"]} - known)
        if strangers:
            raise ValueError(
                f"report facts invalid at attribution.sites: {strangers} are not among the "
                f"run's sites {sorted(known)}"
            )


def render_json(facts: Mapping[str, Any]) -> str:
    """The facts as indented JSON (NaN and infinities are rejected, not written)."""
    return json.dumps(facts, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_report(facts: Mapping[str, Any], fmt: str, out: Path) -> Path:
    """Validate, render and write the report; return the file written.

    ``out`` is the file to write, or an existing directory, in which case the file is
    ``cohort-report-<run id>.<fmt>`` inside it. Parent directories are created.

    Raises
    ------
    ValueError
        When ``fmt`` is not one of ``html``, ``pdf``, ``json`` or the facts are invalid.
    """
    if fmt not in FORMATS:
        raise ValueError(f"report format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    validate_facts(facts)
    out = Path(out)
    if out.is_dir():
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in facts["run"]["id"])
        out = out / f"cohort-report-{safe_id}.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pdf":
        render_pdf(facts, out)
    elif fmt == "html":
        out.write_text(render_html(facts), encoding="utf-8")
    else:
        out.write_text(render_json(facts), encoding="utf-8")
    return out


def _attribution(
    summaries: Sequence[AttributionSummary], threshold: float
) -> dict[str, Any] | None:
    if not summaries:
        return None
    return {
        "global": merge_summaries(summaries).to_dict(),
        "sites": [s.to_dict() for s in summaries],
        "comparisons": [c.to_dict() for c in compare_sites(summaries, threshold=threshold)],
        "threshold": threshold,
    }


def _iso(value: Timestamp) -> str | None:
    """UTC ISO 8601 for the timestamp forms the coordinator and callers use."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {value.isoformat()} has no time zone; pass an aware datetime")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@cache
def _schema() -> dict[str, Any]:
    text = files("explain").joinpath("report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema
