"""Compliance report: facts validate against the schema, and every rendering shows every section."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explain.narrative import SECTIONS
from explain.report import (
    build_facts,
    render_html,
    render_json,
    validate_facts,
    write_report,
)
from explain.summary import AttributionSummary

FEATURES = [f"feature_{i}" for i in range(8)]
SITES = [("st-marys", 120), ("charite", 200), ("karolinska", 90), ("ramsay", 110)]


def _summaries() -> list[AttributionSummary]:
    profile = np.linspace(0.2, 0.02, len(FEATURES))
    out = []
    for name, rows in SITES:
        values = profile[::-1] if name == "ramsay" else profile
        out.append(
            AttributionSummary(
                site=name,
                kind="tabular",
                feature_names=FEATURES,
                class_names=["benign", "malignant"],
                mean_abs=values.tolist(),
                mean_signed={"benign": (-values / 2).tolist(), "malignant": (values / 2).tolist()},
                row_count=rows,
                base_value=[0.4, 0.6],
                explainer="shap PermutationExplainer",
            )
        )
    return out


def _facts(summaries: list[AttributionSummary] | None = None, **changes: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "run": {
            "id": "run-42",
            "model": "tabular_mlp",
            "state": "completed",
            "rounds_planned": 5,
            "rounds_completed": 5,
            "config": {"rounds": 5, "secure": "paillier", "lr": 0.01},
            "model_sha256": "ab" * 32,
            "code_version": "0.1.0",
            "created_at": 1764450000.0,
            "started_at": 1764450010.0,
            "ended_at": 1764450300.0,
            "started_by": "operator",
        },
        "sites": [
            {
                "name": name,
                "node_id": f"node-{i}",
                "data_fingerprint": "f" * 64,
                "row_count": rows * 4,
                "rounds_participated": [1, 2, 3, 4, 5],
            }
            for i, (name, rows) in enumerate(SITES)
        ],
        "privacy": {
            "secure_aggregation": "paillier",
            "key_bits": 2048,
            "key_custodian": "st-marys",
            "key_fingerprints": ["ab12:cd34:ef56:7890"],
            "coordinator_visibility": "ciphertexts, example counts and metrics only",
            "update_quantisation": {"clip": 1.0, "bits": 16},
            "differential_privacy": None,
        },
        "metrics": [
            {
                "round": r,
                "num_updates": 4,
                "total_weight": 2080.0,
                "metrics": {"loss": 0.7 / r, "accuracy": 0.7 + 0.05 * r},
            }
            for r in range(1, 6)
        ],
        "summaries": _summaries() if summaries is None else summaries,
        "audit_log": {
            "verified": True,
            "rows": 31,
            "first_bad_row": None,
            "reason": None,
            "head_hash": "c" * 64,
        },
    }
    inputs.update(changes)
    return dict(build_facts(**inputs))


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    return _facts()


def test_built_facts_validate_and_carry_the_derived_sections(facts: dict[str, Any]) -> None:
    validate_facts(facts)

    assert set(facts) == {
        "report_version",
        "generated_at",
        "run",
        "sites",
        "privacy",
        "metrics",
        "attribution",
        "audit_log",
        "regulations",
    }
    assert re.fullmatch(r"[0-9a-f]{64}", facts["run"]["config_sha256"])
    assert facts["run"]["created_at"] == "2025-11-29T21:00:00Z"
    flagged = [c["site"] for c in facts["attribution"]["comparisons"] if c["flagged"]]
    assert flagged == ["ramsay"]
    assert facts["attribution"]["global"]["row_count"] == 520
    articles = {(r["regulation"], r["article"]) for r in facts["regulations"]}
    assert {("GDPR", "Art. 22"), ("GDPR", "Art. 35"), ("EU AI Act", "Art. 12")} <= articles
    # SR 11-7 was rescinded in April 2026; its successor is mapped, citing its source.
    assert not any(r["regulation"] == "SR 11-7" for r in facts["regulations"])
    mrm = [r for r in facts["regulations"] if r["regulation"] == "SR 26-2 / OCC 2026-13"]
    assert mrm and all("OCC Bulletin 2026-13" in r["requirement"] for r in mrm)
    assert {
        ("EU AI Act", "Art. 10"),
        ("EU AI Act", "Art. 11, Annex IV"),
        ("EU AI Act", "Art. 19"),
    } <= articles
    # What the report cannot evidence (intended purpose, retention) is a gap, said plainly.
    gaps = {(r["regulation"], r["article"]) for r in facts["regulations"] if r["status"] == "gap"}
    assert gaps == {("EU AI Act", "Art. 11, Annex IV"), ("EU AI Act", "Art. 19")}


def test_json_rendering_round_trips_and_validates(facts: dict[str, Any]) -> None:
    restored = json.loads(render_json(facts))

    validate_facts(restored)
    assert restored == facts


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("run", "state"), "exploded", "run.state"),
        (("run", "config_sha256"), "not-a-hash", "run.config_sha256"),
        (("audit_log", "rows"), -1, "audit_log.rows"),
        (("privacy", "secure_aggregation"), "rot13", "privacy.secure_aggregation"),
        (("run", "rounds_completed"), 9, "run.rounds_completed"),
    ],
    ids=["state", "hash", "rows", "secure", "rounds"],
)
def test_invalid_facts_fail_validation(
    facts: dict[str, Any], path: tuple[str, str], value: object, where: str
) -> None:
    broken = copy.deepcopy(facts)
    broken[path[0]][path[1]] = value

    with pytest.raises(ValueError, match=re.escape(where)):
        validate_facts(broken)


def test_missing_section_fails_validation(facts: dict[str, Any]) -> None:
    broken = copy.deepcopy(facts)
    del broken["audit_log"]

    with pytest.raises(ValueError, match="audit_log"):
        validate_facts(broken)


def test_attribution_from_an_unknown_site_fails_validation(facts: dict[str, Any]) -> None:
    broken = copy.deepcopy(facts)
    broken["attribution"]["sites"][0]["site"] = "mallory"

    with pytest.raises(ValueError, match="mallory"):
        validate_facts(broken)


def test_report_without_audit_or_with_broken_log_states_the_gaps() -> None:
    facts = _facts(
        summaries=[],
        audit_log={
            "verified": False,
            "rows": 31,
            "first_bad_row": 17,
            "reason": "row content does not match its hash",
            "head_hash": "c" * 64,
        },
    )

    status = {(r["regulation"], r["article"]): r["status"] for r in facts["regulations"]}
    assert facts["attribution"] is None
    assert status[("GDPR", "Art. 22")] == "gap"
    assert status[("EU AI Act", "Art. 12")] == "gap"
    html = render_html(facts)
    assert "BROKEN" in html and "row 17" in html


def test_html_is_self_contained_and_has_every_section(facts: dict[str, Any]) -> None:
    html = render_html(facts)

    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert html.count("data:image/png;base64,") == 3
    assert "<link" not in html and "<script" not in html and "http://" not in html
    assert "FLAGGED" in html


def test_pdf_has_several_pages(facts: dict[str, Any], tmp_path: Path) -> None:
    path = write_report(facts, "pdf", tmp_path)

    data = path.read_bytes()
    assert path.name == "cohort-report-run-42.pdf"
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type /Page\b", data)) > 1


@pytest.mark.parametrize("fmt", ["html", "json"])
def test_write_report_writes_the_named_file(
    facts: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    target = tmp_path / "nested" / f"report.{fmt}"

    written = write_report(facts, fmt, target)

    assert written == target
    assert target.stat().st_size > 1000


def test_write_report_rejects_unknown_format(facts: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="html, pdf, json"):
        write_report(facts, "docx", tmp_path)


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install chromium); CI installs it",
)
def test_html_report_renders_in_headless_chromium(facts: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    page = write_report(facts, "html", tmp_path / "report.html")
    shot = tmp_path / "report.png"

    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )

    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50


@pytest.mark.skipif(
    shutil.which("pdftoppm") is None,
    reason="pdftoppm is not installed (apt-get install poppler-utils); CI installs it",
)
def test_pdf_report_renders_to_png_pages(facts: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    pdf = write_report(facts, "pdf", tmp_path / "report.pdf")

    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", str(pdf), str(tmp_path / "page")],
        check=True,
        capture_output=True,
        timeout=120,
    )

    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2
    with Image.open(pages[0]) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 20  # text and plots, not a blank page
