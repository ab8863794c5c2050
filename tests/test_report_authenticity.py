"""Reports from authenticated facts: a summary is its sender's; bad ones are listed, not fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from test_federation_errors import WEIGHTS, FakeSite

from coordinator.schema import SiteAudit
from explain.plots import importance_chart, literal, site_heatmap
from explain.summary import AttributionSummary
from protos import admin_pb2, federation_pb2, wire

HOSTILE = "$\\foo{$"
FEATURES = [HOSTILE, "age", "bmi", "$x$ and $y$"]


def summary(site: str, features: list[str] = FEATURES, rows: int = 50) -> str:
    values = np.linspace(0.3, 0.05, len(features))
    return AttributionSummary(
        site=site,
        kind="tabular",
        feature_names=features,
        class_names=["no", "yes"],
        mean_abs=values.tolist(),
        mean_signed={"no": (-values / 2).tolist(), "yes": (values / 2).tolist()},
        row_count=rows,
        base_value=[0.5, 0.5],
        explainer="shap PermutationExplainer",
    ).to_json()


def first_task(sites: list[FakeSite], kind: int) -> tuple[FakeSite, federation_pb2.Task]:
    for _ in range(100):
        for site in sites:
            task = site.stub.PullTask(
                federation_pb2.PullTaskRequest(wait_seconds=0.05), metadata=site.metadata
            )
            if task.kind == kind:
                return site, task
    raise AssertionError(f"no site got a task of kind {kind}")


@pytest.fixture
def audited_run(coordinator):
    """A finished one-round run of four hand-driven sites, each holding its audit task."""
    names = ["alpha", "beta", "gamma", "delta"]
    sites = [FakeSite(coordinator.federation(), name=n) for n in names]
    run = coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp", rounds=1, min_clients=4, round_deadline_seconds=60
        )
    )
    site, init = first_task(sites, federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    for site in sites:
        site.submit(site.pull(federation_pb2.TASK_KIND_TRAIN), wire.encode_tensors(WEIGHTS))
    audits = {n: s.pull(federation_pb2.TASK_KIND_AUDIT) for n, s in zip(names, sites, strict=True)}
    return coordinator, dict(zip(names, sites, strict=True)), audits, run.run_id


def send_audit(site: FakeSite, task: federation_pb2.Task, text: str) -> None:
    site.stub.SubmitAudit(
        federation_pb2.AuditSubmission(task_id=task.task_id, run_id=task.run_id, summary_json=text),
        metadata=site.metadata,
    )


def export(coordinator, run_id: str, fmt: str) -> bytes:
    chunks = coordinator.admin().ExportReport(
        admin_pb2.ExportReportRequest(run_id=run_id, format=fmt)
    )
    return wire.join_chunks(chunks)


def test_report_attributes_summaries_to_their_senders_and_lists_bad_ones(audited_run):
    coordinator, sites, audits, run_id = audited_run
    # alpha claims to be beta; gamma reports other features; delta's stored summary rots.
    send_audit(sites["alpha"], audits["alpha"], summary("beta", rows=70))
    send_audit(sites["beta"], audits["beta"], summary("beta", rows=30))
    send_audit(sites["gamma"], audits["gamma"], summary("gamma", ["a", "b", "c", "d"]))
    send_audit(sites["delta"], audits["delta"], summary("delta"))
    with coordinator.hub.db.transaction() as session:
        stored = session.scalar(
            select(SiteAudit).where(SiteAudit.node_id == sites["delta"].node_id)
        )
        stored.summary = {"site": "delta", "mean_abs": "not a list"}

    facts = json.loads(export(coordinator, run_id, "json"))
    html = export(coordinator, run_id, "html").decode()
    pdf = export(coordinator, run_id, "pdf")

    attributed = {s["site"]: s["row_count"] for s in facts["attribution"]["sites"]}
    assert attributed == {"alpha": 70, "beta": 30}
    rejected = {r["site"]: r["reason"] for r in facts["rejected_summaries"]}
    assert set(rejected) == {"gamma", "delta"}
    assert "features" in rejected["gamma"]
    assert rejected["delta"].startswith("malformed summary")
    assert "$\\foo{$" in html and "Rejected audit summaries" in html
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000


def test_a_site_sending_no_usable_summary_still_gets_a_report(audited_run):
    coordinator, sites, audits, run_id = audited_run
    send_audit(sites["alpha"], audits["alpha"], summary("alpha"))
    with coordinator.hub.db.transaction() as session:
        session.scalar(select(SiteAudit)).summary = {"junk": True}

    facts = json.loads(export(coordinator, run_id, "json"))
    html = export(coordinator, run_id, "html").decode()

    assert facts["attribution"] is None
    assert facts["rejected_summaries"][0]["site"] == "alpha"
    assert "Rejected audit summaries" in html


@pytest.mark.parametrize("name", [HOSTILE, "$", "$$", "a$b$c", "\\$\\", "$\\frac{1}{0}$"])
def test_names_are_drawn_literally(name):
    attribution = {
        "kind": "tabular",
        "feature_names": [name, "b"],
        "mean_abs": [0.2, 0.1],
        "row_count": 10,
        "sites": [name],
    }
    chart = importance_chart(attribution)
    heat = site_heatmap(
        {
            "global": attribution,
            "sites": [{"site": name, "mean_abs": [0.2, 0.1]}],
            "comparisons": [],
        }
    )

    assert chart.startswith(b"\x89PNG") and heat.startswith(b"\x89PNG")
    assert literal("$a$") == "\\$a\\$"
