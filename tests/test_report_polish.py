"""Report layout in the real Chromium and the PDF: tables fit, no word is split, timings in
the appendix, integers are JSON numbers, the model card, and operator-signed reports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_explain_report import _facts
from typer.testing import CliRunner

from cli.admin_link import run_dict
from cli.main import app
from explain.report import render_html, validate_facts, write_report
from protos import admin_pb2

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "report"
CHROMIUM = Path("/usr/bin/chromium")
LONG_SITE = "university-hospital-nord-ouest"
# What a real tabular run reports each round (see the dashboard test's run).
ROUND_METRICS = [
    "encode_seconds",
    "eval_accuracy",
    "eval_examples",
    "eval_loss",
    "eval_roc_auc",
    "examples",
    "model_seconds",
    "num_examples",
    "train_accuracy",
    "train_loss",
    "train_seconds",
]
CARD = {
    "intended_use": "Triage support for breast-lesion biopsies in adults; a clinician decides.",
    "limitations": "Not validated on patients under 18.",
}
runner = CliRunner()


def polished_facts(**changes: Any) -> dict[str, Any]:
    metrics = [
        {
            "round": r,
            "num_updates": 3,
            "total_weight": 123_456_789_012,
            "metrics": {
                name: (0.000123 * r if name.endswith("_seconds") else 0.6453 + r / 1000)
                for name in ROUND_METRICS
            },
        }
        for r in range(1, 6)
    ]
    sites = [
        {
            "name": name,
            "node_id": f"node-{i}",
            "data_fingerprint": "f" * 64,
            "row_count": 100 + i,
            "rounds_participated": [1, 2, 3, 4, 5],
        }
        for i, name in enumerate(["st-marys", LONG_SITE, "charite"])
    ]
    facts = _facts(summaries=[], metrics=metrics, sites=sites, **changes)
    return facts


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    card = _facts()["run"] | {"config": {"lr": 0.01, "model_card": CARD}}
    card.pop("config_sha256")
    return polished_facts(run=card)


def copy_artifact(path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def test_timings_go_to_the_appendix_and_integers_stay_numbers(facts):
    html = render_html(facts)
    metrics = html[html.index('id="metrics"') : html.index('id="explanations"')]
    appendix = html[html.index('id="appendix"') :]
    assert "encode" not in metrics and "model seconds" not in metrics
    assert "eval accuracy" in metrics or "eval\u00a0accuracy" in metrics
    assert "encode" in appendix and "ms" in appendix  # 0.000123 s -> 0.123 ms
    assert json.loads(json.dumps(facts))["metrics"][0]["total_weight"] == 123_456_789_012
    broken = json.loads(json.dumps(facts))
    broken["metrics"][0]["total_weight"] = "123456789012"
    with pytest.raises(ValueError, match="total_weight"):
        validate_facts(broken)
    info = admin_pb2.RunInfo(run_id="r")
    info.round_infos.add(number=1, total_weight=2**40, bytes_received=2**33)
    shown = run_dict(info)["round_infos"][0]
    assert shown["total_weight"] == 2**40 and shown["bytes_received"] == 2**33


def test_model_card_states_the_operators_words_or_says_none_were_given(facts):
    html = render_html(facts)
    card = html[html.index('id="model-card"') : html.index('id="sites"')]
    assert "Triage support for breast-lesion biopsies" in card
    assert "Not validated on patients under 18." in card
    bare = render_html(polished_facts())
    assert bare.count("not stated by the operator") == 4


WORDS_SPLIT = """() => {
  const split = [];
  const cells = '#metrics th, #metrics td, #sites td, #appendix th, #appendix td';
  for (const cell of document.querySelectorAll(cells)) {
    const text = cell.textContent;
    const node = [...cell.childNodes].find((n) => n.nodeType === 3);
    if (!node) continue;
    let at = 0;
    for (const word of text.split(/\\s+/)) {
      if (!word) continue;
      const start = text.indexOf(word, at);
      at = start + word.length;
      const range = document.createRange();
      range.setStart(node, start);
      range.setEnd(node, start + word.length);
      const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
      if (lines.size > 1) split.push(word);
    }
  }
  return split;
}"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no system chromium")
def test_html_fits_1280_px_without_splitting_a_word(facts, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_file = write_report(facts, "html", tmp_path / "report.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(page_file.as_uri())
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 1280
        overflowing = page.evaluate(
            "() => [...document.querySelectorAll('#metrics .scroll, #appendix .scroll')]"
            ".filter((d) => d.scrollWidth > d.clientWidth).length"
        )
        assert overflowing == 0, "a metrics table scrolls sideways at 1280 px"
        assert page.evaluate(WORDS_SPLIT) == []
        page.locator("#metrics").screenshot(path=str(tmp_path / "metrics-1280.png"))
        page.locator("#sites").screenshot(path=str(tmp_path / "sites-1280.png"))
        browser.close()
    for name in ("metrics-1280.png", "sites-1280.png"):
        copy_artifact(tmp_path / name)


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_pdf_tables_keep_words_and_numbers_whole(facts, tmp_path):
    pdf = write_report(facts, "pdf", tmp_path / "report.pdf")
    text = subprocess.run(
        ["pdftotext", "-raw", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    tokens = set(text.split())
    for word in ("Round", "Updates", "accuracy", "Intended", "Appendix", LONG_SITE):
        assert word in tokens, f"{word!r} is split or missing in the PDF"
    for r in range(1, 6):
        assert f"{0.6453 + r / 1000:.4g}" in tokens
    assert "123456789012" in tokens
    subprocess.run(["pdftoppm", "-png", "-r", "70", str(pdf), str(tmp_path / "page")], check=True)
    for page in sorted(tmp_path.glob("page-*.png")):
        copy_artifact(page)


def test_operator_signed_report_checks_offline_and_catches_changes(facts, tmp_path):
    report = write_report(facts, "pdf", tmp_path / "report.pdf")
    keys, other = tmp_path / "keys", tmp_path / "other"

    def cohort(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, ["audit", *args], catch_exceptions=False)

    assert cohort("keygen", "--out", str(keys)).exit_code == 0
    assert cohort("keygen", "--out", str(other)).exit_code == 0
    assert (keys / "report-signing.key").stat().st_mode & 0o077 == 0
    assert cohort("keygen", "--out", str(keys)).exit_code == 2  # never overwritten
    signed = cohort(
        "sign-report",
        str(report),
        "--key",
        str(keys / "report-signing.key"),
        "--signer",
        "Dr. Ops, Cohort operator",
    )
    assert signed.exit_code == 0, signed.output
    pub = str(keys / "report-signing.pub")
    ok = cohort("check-report", str(report), "--key", pub)
    assert ok.exit_code == 0 and "Dr. Ops" in ok.output

    # Someone else's key: refused, even though the file carries a matching public key.
    wrong = cohort("check-report", str(report), "--key", str(other / "report-signing.pub"))
    assert wrong.exit_code == 1 and "not the key you trust" in wrong.output
    # A rewritten signer name, or one changed byte in the report: refused.
    sig = report.with_name(report.name + ".sig.json")
    document = json.loads(sig.read_text())
    sig.write_text(json.dumps(document | {"signer": "Chief Medical Officer"}))
    forged = cohort("check-report", str(report), "--key", pub)
    assert forged.exit_code == 1 and "does not verify" in forged.output
    sig.write_text(json.dumps(document))
    data = bytearray(report.read_bytes())
    data[len(data) // 2] ^= 1
    report.write_bytes(bytes(data))
    changed = cohort("check-report", str(report), "--key", pub)
    assert changed.exit_code == 1 and "has changed since it was signed" in changed.output
    # An attacker who re-signs with their own key and swaps in their public key: refused.
    cohort(
        "sign-report",
        str(report),
        "--key",
        str(other / "report-signing.key"),
        "--signer",
        "Dr. Ops, Cohort operator",
    )
    swapped = cohort("check-report", str(report), "--key", pub)
    assert swapped.exit_code == 1 and "not the key you trust" in swapped.output
    missing = cohort("check-report", str(tmp_path / "nope.pdf"), "--key", pub)
    assert missing.exit_code == 2


def test_runs_start_puts_the_model_card_in_the_run_config(coordinator):
    result = runner.invoke(
        app,
        [
            "admin",
            "runs",
            "start",
            "--rounds",
            "1",
            "--coordinator",
            coordinator.address,
            "--insecure",
            "--json",
            "--intended-use",
            CARD["intended_use"],
            "--limitations",
            CARD["limitations"],
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["model_card"] == CARD
    too_long = runner.invoke(
        app,
        [
            "admin",
            "runs",
            "start",
            "--coordinator",
            coordinator.address,
            "--insecure",
            "--limitations",
            "x" * 2001,
        ],
        catch_exceptions=False,
    )
    assert too_long.exit_code == 2
