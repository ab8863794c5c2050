"""Runs that say what is true: the run's model, one data schema, provenance that stays put."""

from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest
from conftest import start_coordinator
from helpers import create_run, wait_for, wait_for_state
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from client.agent import AgentConfig, SiteAgent
from client.data import TabularData, dirichlet_split, load_sklearn
from client.data_schema import schema_of
from client.policy import TaskRefused
from client.trainer import TabularTrainer
from coordinator.schema import AuditEvent, Node, Run, RunSite, SiteRefusal, Task
from protos import admin_pb2, common_pb2, data_schema, wire

DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_STOPPED)


def site_tables(count: int = 3) -> list[TabularData]:
    data = load_sklearn("breast_cancer")
    return [data.subset(index) for index in dirichlet_split(data.y, count, 1.0, 0, min_rows=40)]


def reversed_columns(data: TabularData) -> TabularData:
    order = list(range(len(data.feature_names)))[::-1]
    return data.columns(order)


def without(data: TabularData, names: list[str]) -> TabularData:
    return data.columns([i for i, n in enumerate(data.feature_names) if n not in names])


def start_in_order(agents, coordinator, trainers, names, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Start the sites one at a time, each joined before the next: the first pins the schema."""
    admin = coordinator.admin()
    for count, (trainer, name) in enumerate(zip(trainers, names, strict=True), start=1):
        agents.start(coordinator.address, [trainer], tmp_path, names=[name])
        wait_for(
            lambda count=count: len(admin.ListNodes(admin_pb2.ListNodesRequest()).nodes) >= count,
            30,
            f"{name} to join",
        )


def final_weights(admin, run_id: str) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return wire.decode_tensors(
        wire.join_chunks(admin.DownloadModel(admin_pb2.DownloadModelRequest(run_id=run_id)))
    )


def trained_model(coordinator, agents, tables, tmp_path) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    trainers = [TabularTrainer(table, seed=0) for table in tables]
    start_in_order(agents, coordinator, trainers, ["bank-a", "bank-b", "bank-c"], tmp_path)
    admin = coordinator.admin()
    run = create_run(admin, rounds=2)
    info = wait_for_state(admin, run.run_id, DONE)
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    return final_weights(admin, run.run_id)


def test_site_with_its_columns_in_reverse_order_trains_the_same_model(
    coordinator, agents, tmp_path
):
    tables = site_tables()
    in_order = trained_model(coordinator, agents, tables, tmp_path / "first")
    other = start_coordinator(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other-data")
    try:
        flipped = [tables[0], tables[1], reversed_columns(tables[2])]
        assert flipped[2].feature_names[0] == tables[2].feature_names[-1]

        reordered = trained_model(other, agents, flipped, tmp_path / "second")
    finally:
        for channel in other.channels:
            channel.close()
        agents.stop.set()
        other.server.stop(grace=0.5)

    assert len(reordered) == len(in_order)
    for mine, theirs in zip(reordered, in_order, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-4)


def test_site_with_missing_columns_is_left_out_by_name_before_round_1(
    coordinator, agents, tmp_path
):
    tables = site_tables(4)
    dropped = tables[3].feature_names[-2:]
    tables[3] = without(tables[3], dropped)
    trainers = [TabularTrainer(table, seed=i) for i, table in enumerate(tables)]
    names = ["bank-a", "bank-b", "bank-c", "bank-d"]
    start_in_order(agents, coordinator, trainers, names, tmp_path)
    admin = coordinator.admin()

    run = create_run(admin, rounds=1, min_clients=3)
    info = wait_for_state(admin, run.run_id, DONE)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert [r.selected for r in info.round_infos] == [3]
    refusal = next(r for r in info.refusals if r.code == "schema")
    assert refusal.site_name == "bank-d"
    assert f"missing columns {dropped[0]}, {dropped[1]}" in refusal.reason
    bank_d = agents.agents[3].node_id
    with coordinator.hub.db.transaction() as session:
        assert not session.scalars(select(Task).where(Task.node_id == bank_d)).all()
        excluded = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "site.excluded")
        ).all()
    assert [json.loads(e.details)["site"] for e in excluded] == ["bank-d"]


def test_site_refuses_data_that_differs_from_the_pinned_schema_naming_columns():
    table = site_tables()[0]
    pinned = schema_of(table).to_dict()
    short = TabularTrainer(without(table, ["mean area"]), seed=0)
    flipped = TabularTrainer(reversed_columns(table), seed=0)

    with pytest.raises(TaskRefused) as refused:
        short.accept_task({"model": "tabular_mlp", "schema": pinned})
    flipped.accept_task({"model": "tabular_mlp", "schema": pinned})

    assert refused.value.code == "schema"
    assert "missing columns mean area" in refused.value.reason
    assert flipped.feature_names == table.feature_names
    assert flipped.model_config["in_features"] == len(table.feature_names)


def test_operator_schema_is_checked_when_the_run_is_created(coordinator):
    admin = coordinator.admin()

    with pytest.raises(grpc.RpcError) as bad:
        create_run(admin, schema={"columns": [{"name": "x", "type": "text"}]})
    good = create_run(admin, schema={"columns": ["b", "a"], "classes": ["no", "yes"]})

    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "type 'text'" in bad.value.details()
    with coordinator.hub.db.transaction() as session:
        pinned = data_schema.from_json(session.get(Run, good.run_id).data_schema)
    assert pinned.names == ["b", "a"]


def test_model_a_table_cannot_train_is_refused_with_a_reason(coordinator, agents, tmp_path):
    trainers = [TabularTrainer(table, seed=0) for table in site_tables()]
    agents.start(coordinator.address, trainers, tmp_path)
    admin = coordinator.admin()
    wait_for(lambda: len(admin.ListNodes(admin_pb2.ListNodesRequest()).nodes) == 3, 30, "joins")

    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="image_cnn", rounds=1, min_clients=3, config_json=json.dumps({"audit": False})
        )
    )
    info = wait_for_state(admin, run.run_id, DONE, timeout=60)

    assert info.state == common_pb2.RUN_STATE_FAILED
    assert "image_cnn" in info.failure_reason
    refusal = next(r for r in info.refusals if r.code == "model")
    assert "cannot build model 'image_cnn'" in refusal.reason
    assert not [r for r in info.round_infos if r.submitted]


def test_report_of_a_finished_run_stays_the_same_after_a_site_rejoins_with_other_data(
    coordinator, agents, tmp_path
):
    tables = site_tables()
    trainers = [TabularTrainer(table, seed=i) for i, table in enumerate(tables)]
    names = ["bank-a", "bank-b", "bank-c"]
    agents.start(coordinator.address, trainers, tmp_path, names=names)
    admin = coordinator.admin()
    run = create_run(admin, rounds=1)
    assert wait_for_state(admin, run.run_id, DONE).state == common_pb2.RUN_STATE_COMPLETED

    def report(fmt: str) -> bytes:
        return wire.join_chunks(
            admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run.run_id, format=fmt))
        )

    before_json, before_html = report("json"), report("html")
    # bank-a comes back on another file: same identity, other rows and fingerprint.
    other = TabularTrainer(site_tables(2)[1], seed=9)
    rejoined = SiteAgent(
        AgentConfig(coordinator.address, "bank-a", tmp_path / "bank-a", poll_seconds=1.0), other
    )
    try:
        rejoined.join()
    finally:
        rejoined.close()
    after_json, after_html = report("json"), report("html")

    first, second = json.loads(before_json), json.loads(after_json)
    for text in (before_json, after_json, before_html, after_html):
        assert text  # both formats were built

    def stamp(data: bytes, facts: dict) -> bytes:  # type: ignore[type-arg]
        return data.replace(facts["generated_at"].encode(), b"<generated>")

    def stamp_html(data: bytes) -> bytes:
        return re.sub(rb"generated \d{4}-\d\d-\d\dT[\d:.]+Z", b"generated <when>", data)

    assert stamp(before_json, first) == stamp(after_json, second)
    assert stamp_html(before_html) == stamp_html(after_html)
    assert stamp_html(before_html) != before_html  # the stamp was found and blanked
    site_a = next(s for s in second["sites"] if s["name"] == "bank-a")
    assert site_a["row_count"] == len(tables[0].y)
    assert site_a["data_fingerprint"] == tables[0].fingerprint()
    assert site_a["schema_fingerprint"] == schema_of(tables[0]).fingerprint()
    with coordinator.hub.db.transaction() as session:
        frozen = session.scalars(select(RunSite).where(RunSite.run_id == run.run_id)).all()
        produced = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "report.produced")
        ).all()
        provenance = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "site.provenance")
        ).all()
        now_reported = session.get(Node, site_a["node_id"]).capabilities
    assert now_reported["data_fingerprint"] != site_a["data_fingerprint"]  # it did change
    assert sorted(r.site_name for r in frozen) == names
    assert len(provenance) == 3
    hashes: dict[str, list[str]] = {}
    for row in produced:
        details = json.loads(row.details)
        hashes.setdefault(details["format"], []).append(details["facts_sha256"])
    assert set(hashes) == {"json", "html"}
    assert all(len(v) == 2 and len(set(v)) == 1 for v in hashes.values())


def test_export_at_a_site_with_reversed_columns_reads_the_runs_column_order(tmp_path):
    from cli.model import export_site_model

    table = site_tables()[0]
    trainer = TabularTrainer(table, seed=0)
    pinned = schema_of(table).to_dict()
    config = {"model": "tabular_mlp", "schema": pinned, "run_id": "r1"}
    weights = trainer.get_parameters({})

    report = export_site_model(
        weights, config, reversed_columns(table), tmp_path / "out", int8=False, measure=False
    )
    manifest = json.loads((tmp_path / "out" / "model.json").read_text())

    assert report["export"]["files"]
    assert manifest["inputs"]["features"] == table.feature_names


def test_site_refuses_a_run_whose_schema_changes_after_it_pinned_it(tmp_path):
    from client.pins import Observed, RunPins

    pins = RunPins.load(tmp_path, "bank-a")

    def seen(schema: str) -> Observed:
        return Observed("r1", "none", "tabular_mlp", {}, "", {}, "", "", schema)

    pins.check(seen("a" * 64))
    pins.check(seen("a" * 64))
    with pytest.raises(TaskRefused) as refused:
        pins.check(seen("b" * 64))

    assert refused.value.code == "pin"
    assert "schema was pinned" in refused.value.reason
    assert RunPins.load(tmp_path, "bank-a").get("r1").schema == "a" * 64  # kept on disk


def test_named_input_site_refuses_a_model_that_does_not_build_with_the_runs_settings():
    import torch

    from client.model_trainer import ModelTrainer
    from models.datasets import DictDataset

    rng = np.random.default_rng(0)
    images = DictDataset(
        {"image": torch.from_numpy(rng.normal(size=(40, 1, 16, 16)).astype(np.float32))},
        np.array([0, 1] * 20),
    )
    site = ModelTrainer(images, site_name="clinic-a", device=torch.device("cpu"))

    with pytest.raises(TaskRefused) as refused:
        site.accept_task({"model": "image_cnn", "model_config": {"in_features": 4}})
    site.accept_task({"model": "image_cnn"})

    assert refused.value.code == "model"
    assert "'image_cnn' does not build on this site's data" in refused.value.reason
    assert "in_features" in refused.value.reason


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        JSONISH.map(json.dumps),
        st.fixed_dictionaries(
            {"columns": st.lists(st.dictionaries(st.sampled_from(["name", "type"]), JSONISH))},
            optional={"classes": JSONISH},
        ).map(json.dumps),
    )
)
def test_any_reported_schema_reads_or_is_refused_with_a_value_error(text):
    try:
        schema = data_schema.from_json(text)
    except ValueError:
        return
    assert data_schema.from_json(schema.canonical()) == schema  # canonical form round-trips


def test_a_site_reporting_garbage_is_left_out_and_recorded_without_claims(coordinator):
    from coordinator import provenance
    from coordinator.schema import Institution

    with coordinator.hub.db.transaction() as session:
        session.add(Institution(id=7, name="mallory"))
        session.add(
            Node(
                id="n-mallory",
                institution_id=7,
                token_hash="t" * 64,
                capabilities={"schema": "{not json", "rows": "lots", "data_fingerprint": "x" * 500},
            )
        )
        run = Run(id="r-1", model="tabular_mlp", rounds=1, min_clients=1, round_deadline=5.0)
        run.data_schema = data_schema.DataSchema((("a", "float"),)).canonical()
        session.add(run)
        session.flush()
        node = session.get(Node, "n-mallory")

        kept = provenance.admissible(session, run, [node], 0.0)
        provenance.record(session, run, node.id)
        frozen = provenance.frozen_sites(session, run.id)[node.id]
        [row] = session.scalars(select(SiteRefusal)).all()

    assert kept == []
    assert row.code == "schema" and "mallory" in row.reason and "does not read" in row.reason
    assert frozen.rows == 0 and len(frozen.data_fingerprint) == 64
    assert frozen.schema_fingerprint == ""


def test_label_classes_may_be_missing_at_a_site_but_never_renamed_or_out_of_range():
    pinned = data_schema.DataSchema((("a", "float"),), (("0", "repaid"), ("1", "default")))
    lacking = data_schema.DataSchema((("a", "float"),), (("1", "default"),))
    renamed = data_schema.DataSchema((("a", "float"),), (("0", "default"), ("1", "repaid")))
    table = TabularData(
        np.ones((20, 1), np.float32), np.array([0, 1, 2, 1] * 5), ["a"], column_types=["float"]
    )

    assert data_schema.differences(pinned, lacking) == []
    assert data_schema.differences(pinned, renamed) == [
        "label classes differ (label 0 is 'default', not 'repaid', "
        "label 1 is 'repaid', not 'default')"
    ]
    with pytest.raises(TaskRefused, match="model has 2 classes"):
        TabularTrainer(table, seed=0).accept_task({"model": "tabular_mlp"})
    TabularTrainer(table, seed=0).accept_task(
        {"model": "tabular_mlp", "model_config": {"num_classes": 3}}
    )
