"""Prometheus /metrics of the coordinator: scraped during a real run, the counters move."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_federation_errors import WEIGHTS, FakeSite

from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc, wire


def scrape(port: int, token: str = "") -> dict[str, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@pytest.fixture
def served(tmp_path):
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}",
        tmp_path / "data",
        port=0,
        tick_seconds=0.05,
        metrics_port=0,
        metrics_token="scrape-secret",
    )
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, admin_pb2_grpc.AdminStub(channel), federation_pb2_grpc.FederationStub(channel)
    channel.close()
    server.stop(grace=0.5)


def test_counters_move_during_a_run(served):
    server, admin, federation = served
    port = server.metrics_port
    before = scrape(port, "scrape-secret")
    assert before["cohort_updates_accepted_total"] == 0

    sites = [FakeSite(federation, name=n) for n in ("alpha", "beta", "gamma")]
    admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp", rounds=2, min_clients=2, max_clients=2, round_deadline_seconds=60
        )
    )
    started = scrape(port, "scrape-secret")
    assert (
        started['cohort_runs{state="pending"}'] + started.get('cohort_runs{state="running"}', 0)
        == 1
    )
    assert started["cohort_sites_online"] == 3

    # Round 1: the INIT, then both selected sites train; a third update is refused.
    init_site = None
    for site in sites:
        task = site.stub.PullTask(
            federation_pb2.PullTaskRequest(wait_seconds=0.5), metadata=site.metadata
        )
        if task.kind == federation_pb2.TASK_KIND_INIT:
            init_site = site
            site.submit(task, wire.encode_tensors(WEIGHTS))
            break
    assert init_site is not None
    trained = []
    for site in sites:
        task = site.stub.PullTask(
            federation_pb2.PullTaskRequest(wait_seconds=0.5), metadata=site.metadata
        )
        if task.kind == federation_pb2.TASK_KIND_TRAIN:
            trained.append((site, task))
    first_site, first_task = trained[0]
    payload = wire.encode_tensors(WEIGHTS)
    with pytest.raises(grpc.RpcError) as bad:
        first_site.submit(first_task, payload, sha="0" * 64)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    mid = scrape(port, "scrape-secret")
    assert mid['cohort_updates_rejected_total{reason="invalid_argument"}'] == 1
    assert mid['cohort_rpc_seconds_count{code="INVALID_ARGUMENT",method="SubmitUpdate"}'] == 1

    first_site.submit(first_task, payload)
    after_one = scrape(port, "scrape-secret")
    assert after_one["cohort_updates_accepted_total"] == before["cohort_updates_accepted_total"] + 1
    assert after_one["cohort_update_bytes_received_total"] >= len(payload)
    # The second selected site refuses its task instead: the refusal is counted by code.
    second_site, second_task = trained[1]
    second_site.stub.RefuseTask(
        federation_pb2.TaskRefusal(
            task_id=second_task.task_id,
            run_id=second_task.run_id,
            code="policy",
            reason="our ethics board said no",
        ),
        metadata=second_site.metadata,
    )
    refused = scrape(port, "scrape-secret")
    assert refused['cohort_site_refusals_total{code="policy"}'] == 1
    assert refused['cohort_rpc_seconds_count{code="OK",method="RefuseTask"}'] == 1

    # GetMetrics reads the same registry: the same numbers, and the legacy names.
    reply = dict(admin.GetMetrics(admin_pb2.GetMetricsRequest()).values)
    again = scrape(port, "scrape-secret")
    for key in (
        "cohort_updates_accepted_total",
        'cohort_site_refusals_total{code="policy"}',
        'cohort_updates_rejected_total{reason="invalid_argument"}',
    ):
        assert reply[key] == again[key]
    assert reply["updates_accepted"] == again["cohort_updates_accepted_total"]
    assert json.dumps(reply)  # plain numbers all


def test_metrics_need_the_token_and_are_off_by_default(served, tmp_path):
    server, _, _ = served
    for header in ("", "Bearer wrong", "Basic scrape-secret"):
        request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics")
        if header:
            request.add_header("Authorization", header)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    plain = CoordinatorServer(f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "p", port=0)
    assert plain.metrics_endpoint is None


def test_metrics_off_loopback_need_tls_not_only_a_token(tmp_path):
    """A scrape token sent over plaintext HTTP is readable by anyone on the path."""
    from typer.testing import CliRunner

    from cli.main import app

    token = tmp_path / "metrics.token"
    token.write_text("scrape-secret\n")
    result = CliRunner().invoke(
        app,
        ["coordinator", "serve", "--insecure", "--port", "0", "--data-dir", str(tmp_path / "d"),
         "--metrics-port", "0", "--metrics-host", "0.0.0.0", "--metrics-token-file", str(token)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "needs TLS" in result.output and "--tls-dir" in result.output
    assert not (tmp_path / "d").exists()
