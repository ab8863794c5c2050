"""The vocabulary of a compliance report: the typed shape of its facts document.

The facts document is the report; HTML, PDF and JSON are renderings of it. It is a plain
dict so that it serialises as is and validates against ``explain/report.schema.json``;
these TypedDicts give the same structure to the type checker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict

REPORT_VERSION = "1.0"

RunState = Literal["pending", "running", "completed", "failed", "stopped"]
RegulationStatus = Literal["evidenced", "gap"]


class RunFacts(TypedDict):
    id: str
    model: str
    state: RunState
    rounds_planned: int
    rounds_completed: int
    config: dict[str, Any]
    config_sha256: str
    model_sha256: str | None
    code_version: str
    created_at: str
    started_at: str | None
    ended_at: str | None
    started_by: str
    failure_reason: NotRequired[str | None]


class SiteFacts(TypedDict):
    name: str
    node_id: str
    data_fingerprint: str | None
    row_count: int
    rounds_participated: list[int]
    # Frozen when the site first took part (coordinator.provenance): schema and agent.
    schema_fingerprint: NotRequired[str | None]
    code_version: NotRequired[str | None]


class PrivacyFacts(TypedDict):
    secure_aggregation: Literal["paillier", "none"]
    key_bits: int | None
    key_custodian: str | None
    key_fingerprints: list[str]
    coordinator_visibility: str
    update_quantisation: dict[str, Any] | str | None
    differential_privacy: dict[str, Any] | str | None
    # Threshold runs: t of N, the share holders and the custodian's signed erasure.
    key_custody: NotRequired[dict[str, Any] | None]


class RoundMetrics(TypedDict):
    round: int
    num_updates: int
    total_weight: int
    metrics: dict[str, float | None]


# "global" is a Python keyword, hence the functional syntax.
AttributionFacts = TypedDict(
    "AttributionFacts",
    {
        "global": dict[str, Any],
        "sites": list[dict[str, Any]],
        "comparisons": list[dict[str, Any]],
        "threshold": float,
    },
)


class AuditLogFacts(TypedDict):
    verified: bool
    rows: int
    first_bad_row: int | None
    reason: str | None
    head_hash: str
    discrepancies: NotRequired[list[str]]


class RegulationEntry(TypedDict):
    regulation: str
    article: str
    requirement: str
    evidence: str
    status: RegulationStatus


class RejectedSummaryFacts(TypedDict):
    site: str
    reason: str


class ReportFacts(TypedDict):
    report_version: str
    generated_at: str
    run: RunFacts
    sites: list[SiteFacts]
    privacy: PrivacyFacts
    metrics: list[RoundMetrics]
    attribution: AttributionFacts | None
    audit_log: AuditLogFacts
    regulations: list[RegulationEntry]
    # Summaries a site sent that the attribution leaves out, each with the reason.
    rejected_summaries: NotRequired[list[RejectedSummaryFacts]]


def config_sha256(config: Mapping[str, Any]) -> str:
    """sha256 of the configuration as canonical JSON (sorted keys, no whitespace).

    The report prints it; the ``run.created`` audit row records it (``config_json_sha256``).
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
