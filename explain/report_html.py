"""Render the facts document as one self-contained HTML page (inline CSS, inline PNG charts)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

from explain import narrative as nv
from explain.plots import importance_chart, metrics_chart, region_map, site_heatmap
from explain.regulations import DISCLAIMER

_CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: #1d2433; background: #f4f6f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 60px; background: #fff;
       min-height: 100vh; box-shadow: 0 0 18px rgba(0,0,0,.06); }
header h1 { font-size: 24px; margin: 0 0 4px; }
header p { margin: 0; color: #5b6577; }
nav { margin: 16px 0 8px; font-size: 13px; }
nav a { color: #2f6f9f; margin-right: 14px; text-decoration: none; }
.badges { display: flex; flex-wrap: wrap; gap: 10px; margin: 18px 0 6px; }
.badge { border-radius: 8px; padding: 8px 12px; min-width: 120px; border: 1px solid; }
.badge b { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .04em;
           color: #5b6577; font-weight: 600; }
.badge span { font-size: 16px; font-weight: 600; }
.ok { background: #eaf6ee; border-color: #9fd3ae; }
.warn { background: #fff6e0; border-color: #f0cf7a; }
.bad { background: #fdecea; border-color: #f0a39b; }
.info { background: #edf3fa; border-color: #b4cbe3; }
section { margin-top: 30px; }
h2 { font-size: 19px; border-bottom: 2px solid #dfe5ee; padding-bottom: 4px; }
h3 { font-size: 15px; margin-top: 20px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 13px; }
th, td { text-align: left; padding: 6px 9px; border-bottom: 1px solid #e4e8ef;
         vertical-align: top; }
th { background: #f0f3f7; font-weight: 600; }
table.kv th { width: 260px; background: transparent; color: #5b6577; font-weight: 500; }
td.mono, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px;
                 word-break: break-all; }
tr.flagged td { background: #fdecea; }
table.regulations { table-layout: fixed; overflow-wrap: break-word; }
.status-gap { color: #b3261e; font-weight: 600; }
.status-evidenced { color: #1e7b3a; font-weight: 600; }
img.chart { max-width: 100%; display: block; margin: 10px 0; }
pre { background: #f6f8fa; padding: 10px 12px; border-radius: 6px; font-size: 12px;
      overflow-x: auto; }
p.note { color: #5b6577; font-size: 12px; }
.scroll { overflow-x: auto; max-width: 100%; }
table.numbers th { word-break: normal; overflow-wrap: normal; hyphens: none; }
table.numbers td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.name { white-space: nowrap; }
"""

_MONO_KEYS = {"Configuration sha256", "Final model sha256", "Head hash", "Public-key fingerprints"}


def render_html(facts: Mapping[str, Any]) -> str:
    """Return the full HTML document; no external resources, so it can be mailed or archived."""
    run = facts["run"]
    body = [
        "<header>",
        f"<h1>Cohort compliance report \u2014 run {escape(run['id'])}</h1>",
        f"<p>Model <b>{escape(run['model'])}</b> \u00b7 generated {escape(facts['generated_at'])}"
        f" \u00b7 report format {escape(facts['report_version'])}</p>",
        "</header>",
        _nav(),
        _badges(facts),
        _section(
            "run",
            _pairs(nv.run_pairs(facts)) + "<h3>Configuration</h3>"
            f"<pre>{escape(nv.config_text(facts))}</pre>",
        ),
        _section("model-card", _pairs(nv.model_card_pairs(facts))),
        _section("sites", _table(nv.sites_table(facts), mono_columns={4}, name_columns={0})),
        _section("privacy", _pairs(nv.privacy_pairs(facts)) + _dp(facts)),
        _section("metrics", _metrics(facts)),
        _section("explanations", _explanations(facts)),
        _section("audit-log", _pairs(nv.audit_pairs(facts))),
        _section("regulations", _regulations(facts)),
        _section("appendix", _appendix(facts)),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Cohort report {escape(run['id'])}</title>"
        f"<style>{_CSS}</style></head><body><main>{''.join(body)}</main></body></html>\n"
    )


def _dp(facts: Mapping[str, Any]) -> str:
    """Differential privacy per site, from the sites' verified ledger entries (if any)."""
    from explain.privacy_section import dp_notes, dp_table

    table = dp_table(facts)
    if not table[1]:
        return ""
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in dp_notes(facts))
    return "<h3>Differential privacy per site</h3>" + _table(table) + notes


def _nav() -> str:
    links = "".join(f'<a href="#{anchor}">{escape(title)}</a>' for anchor, title in nv.SECTIONS)
    return f"<nav>{links}</nav>"


def _badges(facts: Mapping[str, Any]) -> str:
    items = "".join(
        f'<div class="badge {tone}"><b>{escape(label)}</b><span>{escape(value)}</span></div>'
        for label, value, tone in nv.headline(facts)
    )
    return f'<div class="badges">{items}</div>'


def _section(anchor: str, content: str) -> str:
    title = dict(nv.SECTIONS)[anchor]
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{content}</section>'


def _pairs(pairs: nv.Pairs) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th>{_td(v, k in _MONO_KEYS)}</tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _table(
    table: nv.Table,
    *,
    mono_columns: set[int] | None = None,
    row_classes: list[str] | None = None,
    name_columns: set[int] | None = None,
    numeric: bool = False,
) -> str:
    """A table in a horizontally scrolling box: a wide one never widens the page."""
    header, rows = table
    if not rows:
        return '<p class="note">None recorded.</p>'
    mono = mono_columns or set()
    names = name_columns or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            _td(cell, j in mono, "name" if j in names else "num" if numeric else "")
            for j, cell in enumerate(row)
        )
        body.append(f"<tr{css}>{cells}</tr>")
    kind = ' class="numbers"' if numeric else ""
    return (
        f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _td(text: str, mono: bool = False, css: str = "") -> str:
    classes = " ".join(c for c in ("mono" if mono else "", css) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(text)}</td>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="chart" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _metrics(facts: Mapping[str, Any]) -> str:
    chart = metrics_chart(facts["metrics"])
    parts = [_img(chart, "Training metrics per round")] if chart else []
    parts += [_table(table, numeric=True) for table in nv.metrics_tables(facts)]
    holdout = nv.holdout_table(facts)
    if holdout is not None:
        parts.append(f"<h3>{escape(nv.HOLDOUT_TITLE)}</h3>" + _table(holdout))
    return "".join(parts)


def _appendix(facts: Mapping[str, Any]) -> str:
    timings = nv.timings_table(facts)
    if timings is None:
        return '<p class="note">No engineering timings were reported.</p>'
    return f"<h3>{escape(nv.TIMINGS_TITLE)}</h3>" + _table(timings, numeric=True)


def _rejected(facts: Mapping[str, Any]) -> str:
    rejected = facts.get("rejected_summaries") or []
    if not rejected:
        return ""
    table = (["Site", "Why its summary was left out"], [[r["site"], r["reason"]] for r in rejected])
    return "<h3>Rejected audit summaries</h3>" + _table(table)


def _explanations(facts: Mapping[str, Any]) -> str:
    attribution = facts["attribution"]
    parts = [f"<p>{escape(nv.explanation_intro(facts))}</p>", _rejected(facts)]
    if not attribution:
        return "".join(parts)
    parts += [
        "<h3>Global feature importance</h3>",
        _img(importance_chart(attribution["global"]), "Global feature importance"),
    ]
    regions = region_map(attribution["global"])
    if regions:
        parts.append(_img(regions, "Importance by image region"))
    parts += [
        _table(nv.importance_table(facts)),
        "<h3>Sites compared</h3>",
        _img(site_heatmap(attribution), "Feature importance by site"),
    ]
    if attribution["comparisons"]:
        flags = ["flagged" if c["flagged"] else "" for c in attribution["comparisons"]]
        parts.append(_table(nv.comparisons_table(facts), row_classes=flags))
    else:
        parts.append('<p class="note">One site only: nothing to compare.</p>')
    return "".join(parts)


def _regulations(facts: Mapping[str, Any]) -> str:
    header, rows = nv.regulations_table(facts)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{escape(c)}</td>" for c in row[:-1])
        + f'<td class="status-{escape(row[-1])}">{escape(row[-1])}</td></tr>'
        for row in rows
    )
    widths = "".join(f'<col style="width:{w}%">' for w in (11, 13, 28, 38, 10))
    return (
        f'<table class="regulations"><colgroup>{widths}</colgroup>'
        f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
        f'<p class="note">{escape(DISCLAIMER)}</p>'
    )
