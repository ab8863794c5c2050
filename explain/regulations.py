"""Map the facts of a run to the regulatory requirements they serve as evidence for.

Each entry names a requirement and points at the facts in the same report that address
it, or says plainly that the report holds no such evidence (``status: "gap"``). This is a
documentation aid for compliance officers, not a legal opinion on compliance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from explain.facts import RegulationEntry, RegulationStatus

DISCLAIMER = (
    "This mapping points to evidence contained in this report. It is not legal advice and "
    "does not by itself establish compliance; the controller and the model owner remain "
    "responsible for the assessment."
)


def map_regulations(facts: Mapping[str, Any]) -> list[RegulationEntry]:
    """Return the regulation entries for a facts document (its ``regulations`` excluded).

    Covered: GDPR Art. 22 (automated decisions: meaningful information about the logic),
    GDPR Art. 35 (data protection impact assessment: safeguards), EU AI Act Art. 12
    (record-keeping) and the US supervisory guidance SR 11-7 on model risk management
    (documentation; validation and ongoing monitoring).
    """
    return [
        _gdpr_22(facts),
        _gdpr_35(facts),
        _ai_act_12(facts),
        _sr_11_7_documentation(facts),
        _sr_11_7_monitoring(facts),
    ]


def _gdpr_22(facts: Mapping[str, Any]) -> RegulationEntry:
    attribution = facts.get("attribution")
    requirement = (
        "Decisions based solely on automated processing that significantly affect a person "
        "need safeguards, including human intervention, and the data subject is owed "
        "meaningful information about the logic involved (with Art. 13(2)(f), 15(1)(h))."
    )
    status: RegulationStatus
    if not attribution:
        evidence = "No SHAP audit was submitted for this run: the model's logic is not documented."
        status = "gap"
    else:
        glob = attribution["global"]
        top = _top_features(glob["feature_names"], glob["mean_abs"], 3)
        evidence = (
            f"SHAP audit on {glob['row_count']} held-out rows at {len(glob['sites'])} site(s) "
            f"({attribution['sites'][0]['explainer']}). Most influential features: {top}. "
            "See 'Model explanations'. Human review of individual decisions is the "
            "deploying institution's procedure and is outside this report."
        )
        status = "evidenced"
    return _entry("GDPR", "Art. 22", requirement, evidence, status)


def _gdpr_35(facts: Mapping[str, Any]) -> RegulationEntry:
    privacy = facts["privacy"]
    sites = facts["sites"]
    rows = sum(site["row_count"] for site in sites)
    requirement = (
        "A data protection impact assessment describes the processing, its necessity and "
        "proportionality, the risks to data subjects and the measures addressing them, "
        "including safeguards and security measures."
    )
    noise = _attribution_noise(facts)
    parts = [
        f"{len(sites)} site(s) trained on {rows} local rows; no row left its site.",
        f"Coordinator visibility: {privacy['coordinator_visibility']}",
    ]
    status: RegulationStatus
    if privacy["secure_aggregation"] == "paillier":
        parts.append(
            f"Updates were Paillier-encrypted ({privacy['key_bits']}-bit key, private key held "
            f"by {privacy['key_custodian'] or 'the sites'}) and summed without decryption."
        )
        status = "evidenced"
    else:
        parts.append(
            "Secure aggregation was off: the coordinator saw each site's update in "
            "plaintext, which the assessment must justify."
        )
        status = "gap"
    parts.append(f"Differential privacy: {_describe(privacy['differential_privacy'])}.")
    if noise is not None:
        parts.append(f"Attribution summaries carry Gaussian noise of scale {noise:g}.")
    return _entry("GDPR", "Art. 35", requirement, " ".join(parts), status)


def _ai_act_12(facts: Mapping[str, Any]) -> RegulationEntry:
    log = facts["audit_log"]
    requirement = (
        "High-risk AI systems shall technically allow the automatic recording of events "
        "(logs) over their lifetime, for traceability of the system's functioning."
    )
    status: RegulationStatus
    if log["verified"]:
        evidence = (
            f"Hash-chained audit log of {log['rows']} events (run creation, joins, accepted "
            f"and rejected updates, round closes, downloads, reports) recomputed intact; "
            f"head hash {log['head_hash']}."
        )
        status = "evidenced"
    else:
        evidence = (
            f"The audit log failed verification at row {log['first_bad_row']}: "
            f"{log['reason']}. Records after that row cannot be relied on."
        )
        status = "gap"
    return _entry("EU AI Act", "Art. 12", requirement, evidence, status)


def _sr_11_7_documentation(facts: Mapping[str, Any]) -> RegulationEntry:
    run = facts["run"]
    requirement = (
        "Model documentation detailed enough that parties unfamiliar with the model can "
        "understand how it operates, its limitations and key assumptions, and reproduce it."
    )
    evidence = (
        f"Model '{run['model']}', code version {run['code_version'] or 'unrecorded'}, "
        f"configuration sha256 {run['config_sha256']}, final model sha256 "
        f"{run['model_sha256'] or 'not produced'}; {run['rounds_completed']} of "
        f"{run['rounds_planned']} rounds completed with {len(facts['metrics'])} rounds of "
        "recorded metrics."
    )
    complete = run["model_sha256"] is not None and bool(facts["metrics"])
    return _entry(
        "SR 11-7",
        "Sec. VI (documentation)",
        requirement,
        evidence,
        "evidenced" if complete else "gap",
    )


def _sr_11_7_monitoring(facts: Mapping[str, Any]) -> RegulationEntry:
    attribution = facts.get("attribution")
    requirement = (
        "Validation includes outcomes analysis and ongoing monitoring, checking that the "
        "model performs as intended across the populations it is used on."
    )
    if not attribution or not attribution["comparisons"]:
        evidence = (
            "No cross-site comparison of explanations is available (fewer than two site audits)."
        )
        return _entry("SR 11-7", "Sec. V (validation)", requirement, evidence, "gap")
    comparisons = attribution["comparisons"]
    flagged = [c["site"] for c in comparisons if c["flagged"]]
    finding = (
        f"flagged for review: {', '.join(flagged)}"
        if flagged
        else "no site's explanation ranking departs from the rest"
    )
    evidence = (
        f"Each of {len(comparisons)} sites' SHAP importance ranking was compared with the "
        f"other sites' (Spearman rank correlation, threshold {attribution['threshold']:g}); "
        f"{finding}. Per-round metrics are listed under 'Training metrics'."
    )
    return _entry("SR 11-7", "Sec. V (validation)", requirement, evidence, "evidenced")


def _entry(
    regulation: str, article: str, requirement: str, evidence: str, status: RegulationStatus
) -> RegulationEntry:
    return RegulationEntry(
        regulation=regulation,
        article=article,
        requirement=requirement,
        evidence=evidence,
        status=status,
    )


def _top_features(names: list[str], values: list[float], k: int) -> str:
    ranked = sorted(zip(names, values, strict=True), key=lambda nv: -nv[1])[:k]
    return ", ".join(f"{name} ({value:.3g})" for name, value in ranked)


def _attribution_noise(facts: Mapping[str, Any]) -> float | None:
    attribution = facts.get("attribution")
    if not attribution:
        return None
    scales = [s["noise_scale"] for s in attribution["sites"]]
    return max(scales) if any(scales) else None


def _describe(value: object) -> str:
    if value is None:
        return "not applied"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
