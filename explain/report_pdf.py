"""Render the facts document as a paginated A4 PDF with reportlab, charts embedded as images."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import matplotlib
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    Paragraph,
    Preformatted,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from explain import narrative as nv
from explain.plots import DPI, importance_chart, metrics_chart, region_map, site_heatmap
from explain.regulations import DISCLAIMER

_PAGE_WIDTH = A4[0] - 36 * mm
_GRID = colors.HexColor("#d5dbe4")
_HEAD = colors.HexColor("#eef2f7")
_FLAG = colors.HexColor("#fdecea")
_TONES = {
    "ok": colors.HexColor("#eaf6ee"),
    "warn": colors.HexColor("#fff6e0"),
    "bad": colors.HexColor("#fdecea"),
    "info": colors.HexColor("#edf3fa"),
}


def render_pdf(facts: Mapping[str, Any], path: Path) -> None:
    """Write the report to ``path`` as PDF (same sections and charts as the HTML view)."""
    styles = _styles()
    run = facts["run"]
    story: list[Flowable] = [
        Paragraph(f"Cohort compliance report \u2014 run {escape(run['id'])}", styles["title"]),
        Paragraph(
            f"Model <b>{escape(run['model'])}</b> \u00b7 generated {escape(facts['generated_at'])}"
            f" \u00b7 report format {escape(facts['report_version'])}",
            styles["muted"],
        ),
        Spacer(1, 4 * mm),
        _badges(facts, styles),
    ]
    story += _section(
        "run",
        styles,
        [
            _pairs(nv.run_pairs(facts), styles),
            *_titled("Configuration", Preformatted(nv.config_text(facts), styles["code"]), styles),
        ],
    )
    story += _section("model-card", styles, [_pairs(nv.model_card_pairs(facts), styles)])
    story += _section(
        "sites",
        styles,
        [_table(nv.sites_table(facts), styles, widths=_site_widths(nv.sites_table(facts)))],
    )
    story += _section(
        "privacy", styles, [_pairs(nv.privacy_pairs(facts), styles), *_dp(facts, styles)]
    )
    chart = metrics_chart(facts["metrics"])
    story += _section(
        "metrics",
        styles,
        [
            *([_image(chart)] if chart else []),
            *(
                _table(table, styles, widths=_number_widths(table))
                for table in nv.metrics_tables(facts)
            ),
            *(
                _titled(nv.HOLDOUT_TITLE, _table(holdout, styles), styles)
                if (holdout := nv.holdout_table(facts)) is not None
                else []
            ),
        ],
    )
    story += _section("explanations", styles, _explanations(facts, styles))
    story += _section("audit-log", styles, [_pairs(nv.audit_pairs(facts), styles)])
    story += _section(
        "regulations",
        styles,
        [_table(nv.regulations_table(facts), styles, widths=[0.13, 0.13, 0.28, 0.34, 0.12])],
    )
    story.append(Spacer(1, 2 * mm))
    story.append(Paragraph(escape(DISCLAIMER), styles["muted"]))
    timings = nv.timings_table(facts)
    story += _section(
        "appendix",
        styles,
        _titled(nv.TIMINGS_TITLE, _table(timings, styles, widths=_number_widths(timings)), styles)
        if timings is not None
        else [Paragraph("No engineering timings were reported.", styles["muted"])],
    )

    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=f"Cohort compliance report {run['id']}",
        author="Cohort",
    )
    doc.build(story, onFirstPage=_footer, onLaterPages=_footer)


def _dp(facts: Mapping[str, Any], styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    """Differential privacy per site (explain.privacy_section), when the run had DP."""
    from explain.privacy_section import dp_notes, dp_table

    table = dp_table(facts)
    if not table[1]:
        return []
    notes = [Paragraph(escape(n), styles["muted"]) for n in dp_notes(facts)]
    return [*_titled("Differential privacy per site", _table(table, styles), styles), *notes]


def _explanations(facts: Mapping[str, Any], styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    attribution = facts["attribution"]
    out: list[Flowable] = [Paragraph(escape(nv.explanation_intro(facts)), styles["body"])]
    rejected = facts.get("rejected_summaries") or []
    if rejected:
        table = (
            ["Site", "Why its summary was left out"],
            [[r["site"], r["reason"]] for r in rejected],
        )
        out += _titled("Rejected audit summaries", _table(table, styles, widths=[0.3, 0.7]), styles)
    if not attribution:
        return out
    out += _titled(
        "Global feature importance", _image(importance_chart(attribution["global"])), styles
    )
    regions = region_map(attribution["global"])
    if regions:
        out.append(_image(regions))
    out.append(_table(nv.importance_table(facts), styles))
    out += _titled("Sites compared", _image(site_heatmap(attribution)), styles)
    if attribution["comparisons"]:
        flagged = [i for i, c in enumerate(attribution["comparisons"]) if c["flagged"]]
        out.append(
            _table(
                nv.comparisons_table(facts),
                styles,
                flagged_rows=flagged,
                widths=[0.14, 0.12, 0.10, 0.13, 0.11, 0.40],
            )
        )
    return out


def _section(
    anchor: str, styles: dict[str, ParagraphStyle], content: list[Flowable]
) -> list[Flowable]:
    """A section heading kept on the same page as the start of its content."""
    heading = Paragraph(escape(dict(nv.SECTIONS)[anchor]), styles["h2"])
    return [Spacer(1, 3 * mm), KeepTogether([heading, *content[:1]]), *content[1:]]


def _titled(title: str, flowable: Flowable, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    return [KeepTogether([Paragraph(escape(title), styles["h3"]), flowable])]


def _badges(facts: Mapping[str, Any], styles: dict[str, ParagraphStyle]) -> Table:
    items = nv.headline(facts)
    cells = [
        Paragraph(
            f"<font size=7 color='#5b6577'>{escape(label.upper())}</font><br/>"
            f"<b>{escape(value)}</b>",
            styles["body"],
        )
        for label, value, _ in items
    ]
    table = Table([cells], colWidths=[_PAGE_WIDTH / len(items)] * len(items))
    style: list[tuple[Any, ...]] = [("BOX", (i, 0), (i, 0), 0.5, _GRID) for i in range(len(items))]
    style += [("BACKGROUND", (i, 0), (i, 0), _TONES[tone]) for i, (_, _, tone) in enumerate(items)]
    table.setStyle(TableStyle(style))
    return table


def _pairs(pairs: nv.Pairs, styles: dict[str, ParagraphStyle]) -> Table:
    data = [[Paragraph(escape(k), styles["muted"]), _cell(v, styles)] for k, v in pairs]
    table = Table(data, colWidths=[0.3 * _PAGE_WIDTH, 0.7 * _PAGE_WIDTH])
    table.setStyle(
        TableStyle(
            [
                ("LINEBELOW", (0, 0), (-1, -1), 0.4, _GRID),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


def _table(
    table: nv.Table,
    styles: dict[str, ParagraphStyle],
    *,
    widths: list[float] | None = None,
    flagged_rows: list[int] | None = None,
) -> Flowable:
    header, rows = table
    if not rows:
        return Paragraph("None recorded.", styles["muted"])
    data = [[Paragraph(f"<b>{escape(h)}</b>", styles["cell"]) for h in header]]
    data += [[_cell(c, styles) for c in row] for row in rows]
    fractions = widths or [1.0 / len(header)] * len(header)
    result = Table(data, colWidths=[f * _PAGE_WIDTH for f in fractions], repeatRows=1)
    style = [
        ("BACKGROUND", (0, 0), (-1, 0), _HEAD),
        ("LINEBELOW", (0, 0), (-1, -1), 0.4, _GRID),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
    style += [("BACKGROUND", (0, r + 1), (-1, r + 1), _FLAG) for r in flagged_rows or []]
    result.setStyle(TableStyle(style))
    return result


def _image(png: bytes) -> Flowable:
    width, height = ImageReader(io.BytesIO(png)).getSize()
    # Print size (the charts' own dpi), shrunk to fit the page width and a third of its height.
    scale = min(72 / DPI, _PAGE_WIDTH / width, 95 * mm / height)
    return Image(io.BytesIO(png), width=width * scale, height=height * scale)


def _number_widths(table: nv.Table) -> list[float]:
    """A narrow Round column, the rest equal: at most 7 columns, so no word is split."""
    header, _ = table
    rest = (1.0 - 0.1) / max(1, len(header) - 1)
    return [0.1] + [rest] * (len(header) - 1)


def _site_widths(table: nv.Table) -> list[float]:
    """The site-name column as wide as its longest name (up to 35%), so no name is split;
    the other columns (fingerprints, which may break anywhere) share the rest."""
    header, rows = table
    rest = [0.16, 0.08, 0.18, 0.40] if len(header) == 5 else [0.13, 0.07, 0.13, 0.19, 0.19, 0.14]
    longest = max(pdfmetrics.stringWidth(row[0], _font()[0], 7.8) for row in rows) if rows else 0
    first = min(0.35, max(0.14, (longest + 14) / _PAGE_WIDTH))
    scale = (1.0 - first) / sum(rest)
    return [first, *(w * scale for w in rest)]


_HASHLIKE = re.compile(r"[0-9A-Fa-f:.\-]{25,}")


def _cell(text: str, styles: dict[str, ParagraphStyle]) -> Paragraph:
    # Hashes and fingerprints have no spaces to wrap at: those alone may break anywhere.
    # Names and numbers never do (a site name or "0.6453" split in two misreads).
    style = styles["wrap"] if _HASHLIKE.fullmatch(text) else styles["cell"]
    return Paragraph(escape(text), style)


def _footer(canvas: Any, doc: Any) -> None:
    canvas.saveState()
    canvas.setFont(_font()[0], 7.5)
    canvas.setFillColor(colors.HexColor("#5b6577"))
    canvas.drawString(18 * mm, 9 * mm, "Cohort compliance report")
    canvas.drawRightString(A4[0] - 18 * mm, 9 * mm, f"page {doc.page}")
    canvas.restoreState()


@cache
def _font() -> tuple[str, str, str]:
    """Register DejaVu (shipped with matplotlib): Helvetica lacks glyphs such as rho or arrows."""
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ("CohortSans", "CohortSans-Bold", "CohortMono")
    for name, file in zip(
        names, ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf"), strict=True
    ):
        pdfmetrics.registerFont(TTFont(name, str(ttf / file)))
    pdfmetrics.registerFontFamily(
        names[0], normal=names[0], bold=names[1], italic=names[0], boldItalic=names[1]
    )
    return names


def _styles() -> dict[str, ParagraphStyle]:
    regular, bold, mono = _font()
    base = getSampleStyleSheet()["BodyText"]
    body = ParagraphStyle("body", parent=base, fontName=regular, fontSize=9, leading=12)
    return {
        "title": ParagraphStyle("title", parent=body, fontName=bold, fontSize=17, leading=21),
        "h2": ParagraphStyle(
            "h2",
            parent=body,
            fontName=bold,
            fontSize=13,
            leading=17,
            spaceBefore=4,
            spaceAfter=4,
            keepWithNext=1,
            textColor=colors.HexColor("#1d2433"),
        ),
        "h3": ParagraphStyle(
            "h3",
            parent=body,
            fontName=bold,
            fontSize=10.5,
            leading=14,
            spaceBefore=6,
            spaceAfter=2,
            keepWithNext=1,
        ),
        "body": body,
        "muted": ParagraphStyle("muted", parent=body, textColor=colors.HexColor("#5b6577")),
        "cell": ParagraphStyle("cell", parent=body, fontSize=7.8, leading=10),
        "wrap": ParagraphStyle(
            "wrap", parent=body, fontName=mono, fontSize=7, leading=9, wordWrap="CJK"
        ),
        "code": ParagraphStyle(
            "code",
            parent=body,
            fontName=mono,
            fontSize=7,
            leading=9,
            backColor=colors.HexColor("#f6f8fa"),
        ),
    }
