"""The report's differential-privacy facts in words and as a per-site table.

What each site's own signed ledger says the run cost it (coordinator/ledger_copies.py verified
every entry against the site's identity key); both renderers print the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Table = tuple[list[str], list[list[str]]]


def _num(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1e-3
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(value)


def describe(dp: object) -> str:
    """One line for the privacy summary: the plan, and how many sites' entries verified."""
    if not dp:
        return "not applied"
    if not isinstance(dp, Mapping):
        return str(dp)
    target = (
        f"target ε {_num(dp.get('target_epsilon'))}"
        if dp.get("target_epsilon")
        else f"noise multiplier {_num(dp.get('noise_multiplier'))}"
    )
    sites = dp.get("sites") or []
    bad = dp.get("unverified_entries") or []
    text = (
        f"{dp.get('mode')}-level ({target}, δ {_num(dp.get('delta'))}, clip "
        f"{_num(dp.get('max_grad_norm'))}, {dp.get('accountant')} accountant); "
        f"signed ledger entries from {len(sites)} site(s) verified"
    )
    if bad:
        text += (
            f"; {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} did NOT verify and were ignored"
        )
    if dp.get("withheld"):
        text += f". Withheld under DP: {dp['withheld']}"
    if dp.get("not_covered"):
        text += f". Not covered: {dp['not_covered']}"
    return text


def dp_table(facts: Mapping[str, Any]) -> Table:
    """Per site: ε and δ of the run, accountant, σ, rounds, ledger ε before/after, budget."""
    dp = facts["privacy"].get("differential_privacy")
    header = [
        "Site",
        "ε (run)",
        "δ (run)",
        "Accountant",
        "σ",
        "Rounds",
        "Ledger ε before",
        "Ledger ε after",
        "Budget",
        "SHAP ε",
    ]
    if not isinstance(dp, Mapping):
        return header, []
    rows = [
        [
            str(site["site"]),
            _num(site.get("epsilon")),
            _num(site.get("delta")),
            str(site.get("accountant") or "-"),
            _num(site.get("noise_multiplier")),
            str(site.get("rounds_charged", 0)),
            _num(site.get("ledger_epsilon_before")),
            _num(site.get("ledger_epsilon_after")),
            "none" if site.get("budget") is None else _num(site.get("budget")),
            _num(site.get("audit_epsilon")),
        ]
        for site in dp.get("sites") or []
    ]
    return header, rows


def dp_notes(facts: Mapping[str, Any]) -> list[str]:
    """The mechanism per site and the identity key each site's entries verified against."""
    dp = facts["privacy"].get("differential_privacy")
    if not isinstance(dp, Mapping):
        return []
    notes = [
        f"{site['site']}: {site.get('mechanism') or '-'}; ledger entries signed by identity "
        f"key {site.get('key_fingerprint') or '-'} (compare with `cohort client identity`)"
        for site in dp.get("sites") or []
    ]
    notes += [
        f"{bad['site']}: a ledger entry did NOT verify ({bad['problem']}) and is not used"
        for bad in dp.get("unverified_entries") or []
    ]
    return notes
