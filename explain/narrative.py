"""What the report says, as titled tables of text: one source for the HTML and PDF views.

Both renderers walk :data:`SECTIONS` and print these tables, so the two formats cannot
drift apart in content; they differ only in layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from explain import privacy_section

SECTIONS: list[tuple[str, str]] = [
    ("run", "Run"),
    ("model-card", "Intended use and limitations"),
    ("sites", "Participating sites"),
    ("privacy", "Privacy and secure aggregation"),
    ("metrics", "Training metrics"),
    ("explanations", "Model explanations (SHAP)"),
    ("audit-log", "Audit log integrity"),
    ("regulations", "Regulatory mapping"),
    ("appendix", "Appendix"),
]

Table = tuple[list[str], list[list[str]]]
Pairs = list[tuple[str, str]]

NONE = "\u2014"  # em dash for "no value"


def fmt(value: Any) -> str:
    """Human-readable text for any fact value."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or NONE
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) or NONE
    return str(value)


def fmt_rounds(rounds: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5 (4)"``: compact, and a gap shows at a glance."""
    if not rounds:
        return NONE
    spans: list[list[int]] = []
    for r in sorted(rounds):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(f"{a}\u2013{b}" if a != b else str(a) for a, b in spans)
    return f"{text} ({len(rounds)})"


def headline(facts: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Badges for the top of the report: ``(label, value, tone)``, tone ok|warn|bad|info."""
    run, privacy, log = facts["run"], facts["privacy"], facts["audit_log"]
    attribution = facts["attribution"]
    flagged = [c["site"] for c in attribution["comparisons"] if c["flagged"]] if attribution else []
    gaps = sum(1 for r in facts["regulations"] if r["status"] == "gap")
    state_tone = {"completed": "ok", "failed": "bad", "stopped": "warn"}.get(run["state"], "info")
    return [
        ("Run state", run["state"], state_tone),
        ("Rounds", f"{run['rounds_completed']} / {run['rounds_planned']}", "info"),
        ("Sites", str(len(facts["sites"])), "info"),
        (
            "Secure aggregation",
            privacy["secure_aggregation"],
            "ok" if privacy["secure_aggregation"] != "none" else "warn",
        ),
        _log_badge(log),
        ("Flagged sites", str(len(flagged)) if attribution else NONE, "warn" if flagged else "ok"),
        ("Evidence gaps", str(gaps), "warn" if gaps else "ok"),
    ]


def _log_badge(log: Mapping[str, Any]) -> tuple[str, str, str]:
    """Verified only when the chain holds and the report's facts agree with it."""
    if not log["verified"]:
        return ("Audit log", "BROKEN", "bad")
    disagreeing = len(log.get("discrepancies") or [])
    if disagreeing:
        return ("Audit log", f"verified; {disagreeing} facts DISAGREE with it", "bad")
    return ("Audit log", "verified", "ok")


def run_pairs(facts: Mapping[str, Any]) -> Pairs:
    run = facts["run"]
    return [
        ("Run id", run["id"]),
        ("Model", run["model"]),
        ("State", run["state"]),
        ("Rounds completed / planned", f"{run['rounds_completed']} / {run['rounds_planned']}"),
        ("Started by", run["started_by"] or NONE),
        ("Created", run["created_at"]),
        ("Started", fmt(run["started_at"])),
        ("Ended", fmt(run["ended_at"])),
        ("Code version", run["code_version"] or NONE),
        ("Configuration sha256", run["config_sha256"]),
        ("Final model sha256", fmt(run["model_sha256"])),
    ] + ([("Failure or stop reason", run["failure_reason"])] if run.get("failure_reason") else [])


def config_text(facts: Mapping[str, Any]) -> str:
    return json.dumps(facts["run"]["config"], indent=2, sort_keys=True, default=str)


def sites_table(facts: Mapping[str, Any]) -> Table:
    header = ["Site", "Node id", "Rows", "Rounds participated", "Data fingerprint"]
    if any("schema_fingerprint" in s for s in facts["sites"]):
        header += ["Schema fingerprint", "Agent"]
    rows = [
        [
            s["name"],
            s["node_id"] or NONE,
            str(s["row_count"]),
            fmt_rounds(s["rounds_participated"]),
            fmt(s["data_fingerprint"]),
        ]
        + (
            [fmt(s.get("schema_fingerprint")), fmt(s.get("code_version"))]
            if len(header) > 5
            else []
        )
        for s in facts["sites"]
    ]
    return header, rows


HOLDOUT_TITLE = "Final model on each site's held-out rows"


def holdout_table(facts: Mapping[str, Any]) -> Table | None:
    """Per audited site, the final model scored on its own held-out rows; None without any."""
    attribution = facts.get("attribution") or {}
    sites = [s for s in attribution.get("sites", []) if s.get("holdout_metrics")]
    if not sites:
        return None
    names = sorted(
        {k for s in sites for k in s["holdout_metrics"] if k != "examples"},
        key=lambda k: (k not in ("accuracy", "loss"), k),
    )
    header = ["Site", "Held-out rows", *names]
    rows = [
        [
            s["site"],
            fmt(int(s["holdout_metrics"]["examples"]))
            if "examples" in s["holdout_metrics"]
            else NONE,
            *(fmt(s["holdout_metrics"].get(n)) for n in names),
        ]
        for s in sites
    ]
    return header, rows


def privacy_pairs(facts: Mapping[str, Any]) -> Pairs:
    p = facts["privacy"]
    return [
        ("Secure aggregation", p["secure_aggregation"]),
        ("Key size (bits)", fmt(p["key_bits"])),
        ("Key custodian", fmt(p["key_custodian"])),
        *custody_pairs(p.get("key_custody")),
        ("Public-key fingerprints", fmt(p["key_fingerprints"])),
        ("What the coordinator could see", p["coordinator_visibility"]),
        ("Update quantisation", fmt(p["update_quantisation"])),
        (
            "Differential privacy",
            privacy_section.describe(p["differential_privacy"]),
        ),
    ]


# Metrics that time the software rather than measure the model: an appendix, not the story.
TIMING_SUFFIX = "_seconds"
# Columns a metrics table holds besides "Round": more and a 1280 px page or an A4 column
# has to break words ("Roun d", "0.645 3"); further metrics go to a second table.
METRIC_COLUMNS = 6
TIMINGS_TITLE = "Appendix: engineering timings per round (seconds)"


def label(name: str) -> str:
    """A metric name as a header that wraps between words: ``eval_roc_auc`` -> ``eval roc auc``."""
    return name.replace("_", " ")


def metrics_tables(facts: Mapping[str, Any]) -> list[Table]:
    """The per-round model metrics as tables of at most :data:`METRIC_COLUMNS` columns.

    Updates and total weight come first; engineering timings (``*_seconds``) are left
    out here and shown by :func:`timings_table` in the appendix.
    """
    names = [n for n in metric_names(facts["metrics"]) if not n.endswith(TIMING_SUFFIX)]
    columns: list[tuple[str, Any]] = [
        ("Updates", lambda m: str(m["num_updates"])),
        ("Total weight", lambda m: fmt(m["total_weight"])),
        *((label(n), lambda m, n=n: fmt(m["metrics"].get(n))) for n in names),
    ]
    tables: list[Table] = []
    for start in range(0, len(columns), METRIC_COLUMNS):
        chunk = columns[start : start + METRIC_COLUMNS]
        header = ["Round", *(title for title, _ in chunk)]
        rows = [[str(m["round"]), *(cell(m) for _, cell in chunk)] for m in facts["metrics"]]
        tables.append((header, rows))
    return tables


def custody_pairs(custody: Mapping[str, Any] | None) -> Pairs:
    """Threshold runs: who must join to decrypt, and what the dealer says it erased."""
    if not custody:
        return []
    if custody.get("verified") is False:
        return [
            (
                "Key custody",
                "UNVERIFIED: the dealer's custody statement on record does not verify "
                f"({custody.get('problem', '')}); none of its claims is shown",
            )
        ]
    holders = ", ".join(f"{h['site']} ({h['fingerprint']})" for h in custody["holders"])
    return [
        (
            "Key custody",
            f"threshold: {custody['threshold']} of {custody['parties']} share holders must "
            f"join to decrypt; no site holds the key. Dealt by {custody['custodian']}"
            + (
                f". A round is decrypted only once {custody['echo_quorum']} holders signed "
                "echoes of the same aggregate, so a coordinator with fewer than "
                f"{custody['threshold']} colluding holders cannot have two different "
                f"aggregates of one round decrypted; up to "
                f"{custody['parties'] - custody['echo_quorum']} holders may be gone"
                if custody.get("echo_quorum")
                else ""
            ),
        ),
        ("Share holders", holders),
        ("Dealer's signed erasure statement", custody["erasure"]),
    ]


def metrics_table(facts: Mapping[str, Any]) -> Table:
    """The first of :func:`metrics_tables` (kept for callers that show one table)."""
    return metrics_tables(facts)[0]


def timings_table(facts: Mapping[str, Any]) -> Table | None:
    """``*_seconds`` metrics per round (encode, model, train), or None when none were sent."""
    names = [n for n in metric_names(facts["metrics"]) if n.endswith(TIMING_SUFFIX)]
    if not names:
        return None
    header = ["Round", *(label(n.removesuffix(TIMING_SUFFIX)) for n in names)]
    rows = [
        [str(m["round"]), *(fmt_seconds(m["metrics"].get(n)) for n in names)]
        for m in facts["metrics"]
    ]
    return header, rows


def fmt_seconds(value: Any) -> str:
    """Seconds to what a reader compares: 3 significant digits, ms below a second."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return fmt(value)
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


MODEL_CARD_TITLE = dict(SECTIONS)["model-card"]
# Operator-supplied text in the run's configuration (`cohort admin runs start
# --intended-use/--limitations`), shown as written: the report states, it does not judge.
MODEL_CARD_KEYS = (
    ("intended_use", "Intended use"),
    ("limitations", "Limitations"),
    ("out_of_scope_use", "Out-of-scope use"),
    ("contact", "Contact"),
)


def model_card_pairs(facts: Mapping[str, Any]) -> Pairs:
    """The model card: the operator's statements, then what the run itself establishes."""
    run = facts["run"]
    config = run.get("config") or {}
    card = config.get("model_card") if isinstance(config.get("model_card"), Mapping) else {}
    pairs: Pairs = []
    for key, title in MODEL_CARD_KEYS:
        text = card.get(key) if isinstance(card, Mapping) else None
        pairs.append((title, str(text) if text else "not stated by the operator"))
    rows = sum(int(s.get("row_count") or 0) for s in facts["sites"])
    pairs += [
        (
            "Trained on",
            f"{len(facts['sites'])} sites, {rows:,} rows in all (see Participating sites)",
        ),
        ("Model", f"{run['model']}, {run['rounds_completed']} of {run['rounds_planned']} rounds"),
    ]
    return pairs


def metric_names(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names in first-seen order across rounds."""
    seen: dict[str, None] = {}
    for m in metrics:
        seen.update(dict.fromkeys(m["metrics"]))
    return list(seen)


def importance_table(facts: Mapping[str, Any], top: int = 10) -> Table:
    """Top features of the merged attribution with their share.

    For a binary model the mean signed SHAP value for the positive class is added: it says
    in which direction the feature moves the prediction. With more classes one column per
    class would swamp the table; the JSON facts hold them all.
    """
    glob = facts["attribution"]["global"]
    total = sum(max(v, 0.0) for v in glob["mean_abs"]) or 1.0
    classes = glob["class_names"]
    binary = len(classes) == 2
    order = sorted(range(len(glob["mean_abs"])), key=lambda i: -glob["mean_abs"][i])[:top]
    header = ["#", "Feature", "Mean |SHAP|", "Share"]
    if binary:
        header.append(f"Mean SHAP ({classes[1]})")
    rows = []
    for rank, i in enumerate(order, start=1):
        row = [
            str(rank),
            glob["feature_names"][i],
            f"{glob['mean_abs'][i]:.4g}",
            f"{max(glob['mean_abs'][i], 0.0) / total:.1%}",
        ]
        if binary:
            row.append(f"{glob['mean_signed'][classes[1]][i]:+.4g}")
        rows.append(row)
    return header, rows


def comparisons_table(facts: Mapping[str, Any]) -> Table:
    attribution = facts["attribution"]
    rows_by_site = {s["site"]: s for s in attribution["sites"]}
    header = [
        "Site",
        "Rows explained",
        "Noise scale",
        "Rank correlation",
        "Flagged",
        "Largest shifts (site vs rest)",
    ]
    rows = []
    for c in attribution["comparisons"]:
        summary = rows_by_site[c["site"]]
        shifts = "; ".join(
            f"{s['feature']} {s['site_value']:.3g} vs {s['rest_value']:.3g}"
            for s in c["top_shifts"]
        )
        rows.append(
            [
                c["site"],
                str(summary["row_count"]),
                f"{summary['noise_scale']:g}",
                NONE if c["rank_correlation"] is None else f"{c['rank_correlation']:.2f}",
                "FLAGGED" if c["flagged"] else "no",
                shifts or NONE,
            ]
        )
    return header, rows


def explanation_intro(facts: Mapping[str, Any]) -> str:
    attribution = facts["attribution"]
    if not attribution:
        return "No site submitted a SHAP audit for this run."
    glob = attribution["global"]
    explainers = sorted({s["explainer"] for s in attribution["sites"]})
    return (
        f"Each site explained the final model on its own held-out data and sent only "
        f"aggregate statistics (no rows). The {glob['kind']} audit covers {glob['row_count']} "
        f"rows at {len(glob['sites'])} site(s), merged with weights proportional to rows. "
        f"Attributions are in units of class probability. Sites are flagged when the "
        f"Spearman rank correlation of their importances with the rest of the federation "
        f"is below {attribution['threshold']:g}. Explainer: {'; '.join(explainers)}."
    )


def audit_pairs(facts: Mapping[str, Any]) -> Pairs:
    log = facts["audit_log"]
    return [
        ("Chain verified", "yes" if log["verified"] else "NO"),
        ("Events", str(log["rows"])),
        ("First bad row", fmt(log["first_bad_row"])),
        ("Reason", fmt(log["reason"])),
        ("Head hash", log["head_hash"]),
        (
            "Facts the log contradicts",
            "; ".join(log["discrepancies"]) if log.get("discrepancies") else "none",
        ),
    ]


def regulations_table(facts: Mapping[str, Any]) -> Table:
    header = ["Regulation", "Article", "Requirement", "Evidence in this report", "Status"]
    rows = [
        [r["regulation"], r["article"], r["requirement"], r["evidence"], r["status"]]
        for r in facts["regulations"]
    ]
    return header, rows
