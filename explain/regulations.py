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


# Where each mapped text comes from, as checked with a search of stored public pages on
# 2 December 2026. Where no primary (official) text was found, the entry says so rather
# than citing one.
AI_ACT = "Regulation (EU) 2024/1689 (OJ L, 12.7.2024)"
AI_ACT_DATES = (
    "Dates: for stand-alone (Annex III) high-risk systems these obligations apply from "
    "2 December 2027 (Annex I products: 2 August 2028) under the Digital Omnibus on AI, "
    "which the Council approved on 29 June 2026 as law firms report; no Official Journal "
    "text of that amending regulation was found to cite, so until it is published the "
    "original date of 2 August 2026 is the one in force."
)
MRM = "SR 26-2 / OCC 2026-13"
MRM_SOURCE = (
    "Source: OCC Bulletin 2026-13, 'Model Risk Management: Revised Guidance' (occ.gov, 17 April "
    "2026), issued with the Federal Reserve (SR 26-2) and the FDIC; it rescinds OCC Bulletin "
    "2011-12, and SR 26-2 supersedes SR 11-7. The Federal Reserve's own page was not in the "
    "searched sources (its letter was read as republished). The agencies state the guidance "
    "is most relevant to banking organisations over $30 billion in assets."
)


def map_regulations(facts: Mapping[str, Any]) -> list[RegulationEntry]:
    """Return the regulation entries for a facts document (its ``regulations`` excluded).

    Covered: GDPR Art. 22 (automated decisions: meaningful information about the logic),
    GDPR Art. 35 (DPIA: safeguards, with the run's differential-privacy spend per site),
    EU AI Act Art. 10 (data governance), Art. 11 with Annex IV (technical documentation),
    Art. 12 (record-keeping) and Art. 19 (keeping the logs), and the US interagency
    model-risk guidance that replaced SR 11-7 in April 2026 (SR 26-2 / OCC Bulletin
    2026-13: development and documentation; validation and monitoring).
    """
    return [
        _gdpr_22(facts),
        _gdpr_35(facts),
        _ai_act_10(facts),
        _ai_act_11(facts),
        _ai_act_12(facts),
        _ai_act_19(facts),
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
    parts.append(_dp_evidence(privacy["differential_privacy"]))
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
    disagreeing = log.get("discrepancies") or []
    if log["verified"] and disagreeing:
        evidence = (
            f"Hash-chained audit log of {log['rows']} events recomputed intact, but "
            f"{len(disagreeing)} of this report's facts disagree with the run's own rows in "
            f"it (the tables were changed after the fact): {'; '.join(disagreeing[:3])}."
        )
        status = "gap"
    elif log["verified"]:
        evidence = (
            f"Hash-chained audit log of {log['rows']} events (run creation, joins, accepted "
            f"and rejected updates, round closes, downloads, reports) recomputed intact, and "
            f"the report's run, site and round facts agree with it; head hash "
            f"{log['head_hash']}."
        )
        status = "evidenced"
    else:
        evidence = (
            f"The audit log failed verification at row {log['first_bad_row']}: "
            f"{log['reason']}. Records after that row cannot be relied on."
        )
        status = "gap"
    return _entry(
        "EU AI Act", "Art. 12", f"{requirement} ({AI_ACT}.) {AI_ACT_DATES}", evidence, status
    )


def _dp_evidence(dp: object) -> str:
    """GDPR Art. 35 cites each site's mechanism, ε, δ, accountant and budget before/after."""
    if not isinstance(dp, Mapping):
        return (
            "Differential privacy: not applied; the model and its aggregates carry no bound "
            "on what they reveal about one record."
        )
    sites = dp.get("sites") or []
    per_site = "; ".join(
        f"{s['site']}: {s.get('mechanism')}, ε {s.get('epsilon', 0):.3g} at δ {s.get('delta'):g} "
        f"({s.get('accountant')} accountant), ledger ε {s.get('ledger_epsilon_before', 0):.3g} "
        f"before and {s.get('ledger_epsilon_after', 0):.3g} after at δ {s.get('ledger_delta'):g}"
        + (
            f" of a budget of {s['budget']:g}"
            if s.get("budget") is not None
            else " (no budget set)"
        )
        for s in sites
    )
    text = (
        f"Differential privacy ({dp.get('mode')}-level), from each site's signed ledger: "
        f"{per_site or 'no verified entries'}."
    )
    if dp.get("unverified_entries"):
        bad = len(dp["unverified_entries"])
        text += f" {bad} ledger entr(ies) failed signature checks and are not relied on."
    if dp.get("not_covered"):
        text += f" Not covered by these numbers: {dp['not_covered']}."
    return text


def _ai_act_10(facts: Mapping[str, Any]) -> RegulationEntry:
    sites = facts["sites"]
    requirement = (
        "Training, validation and testing data sets of high-risk systems are subject to data "
        "governance and management practices (design choices, data collection and origin, "
        "preparation, assumptions, examination for biases, data gaps) and are relevant, "
        f"representative and as free of errors as possible. ({AI_ACT}, Art. 10.) {AI_ACT_DATES}"
    )
    printed = [s for s in sites if s.get("data_fingerprint")]
    evidence = (
        f"{len(printed)} of {len(sites)} site(s) recorded a sha256 fingerprint of the data they "
        "trained on, with row counts and (where pinned) the data schema; see 'Sites'. Cross-site "
        "comparison of explanations flags sites whose data behaves differently. Collection, "
        "origin, labelling and bias examination of each site's data are the sites' own records "
        "and are not evidenced here."
    )
    return _entry("EU AI Act", "Art. 10", requirement, evidence, "evidenced" if printed else "gap")


def _ai_act_11(facts: Mapping[str, Any]) -> RegulationEntry:
    run = facts["run"]
    requirement = (
        "Technical documentation drawn up before the system is placed on the market, with at "
        "least the Annex IV contents: general description and intended purpose, development "
        "process and design choices, training data and methods, monitoring and control, risk "
        f"management system, changes, standards applied, declaration of conformity. ({AI_ACT}, "
        f"Art. 11 and Annex IV.) {AI_ACT_DATES}"
    )
    evidence = (
        f"This report documents the development process: model '{run['model']}', configuration "
        f"sha256 {run['config_sha256']}, code version {run['code_version'] or 'unrecorded'}, "
        f"{run['rounds_completed']} of {run['rounds_planned']} rounds, the sites and their data "
        "fingerprints, privacy safeguards and the explanation audit. Intended purpose, the risk "
        "management system (Art. 9), standards applied and the declaration of conformity are "
        "the provider's documents and are not in this report."
    )
    return _entry("EU AI Act", "Art. 11, Annex IV", requirement, evidence, "gap")


def _ai_act_19(facts: Mapping[str, Any]) -> RegulationEntry:
    log = facts["audit_log"]
    requirement = (
        "Providers keep the logs automatically generated under Art. 12(1), to the extent under "
        "their control, for a period appropriate to the intended purpose and of at least six "
        f"months unless other Union or national law provides otherwise. ({AI_ACT}, Art. 19.) "
        f"{AI_ACT_DATES}"
    )
    evidence = (
        f"The coordinator's hash-chained log holds {log['rows']} rows and never deletes one "
        "(a removed row breaks the chain); how long the database is kept is the operator's "
        "retention setting, which this report cannot evidence."
    )
    return _entry("EU AI Act", "Art. 19", requirement, evidence, "gap")


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
        MRM,
        "Model development and use (documentation)",
        f"{requirement} {MRM_SOURCE}",
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
        return _entry(
            MRM, "Validation and monitoring", f"{requirement} {MRM_SOURCE}", evidence, "gap"
        )
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
    return _entry(
        MRM, "Validation and monitoring", f"{requirement} {MRM_SOURCE}", evidence, "evidenced"
    )


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
