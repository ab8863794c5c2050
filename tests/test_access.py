"""TLS, operator roles and site enrolment: the auth matrix over a real TLS coordinator."""

from __future__ import annotations

import stat
import time

import grpc
import pytest
from helpers import breast_cancer_sites, create_run, wait_for_state
from sqlalchemy import select, update
from typer.testing import CliRunner

from cli.main import app
from coordinator.pki import FederationPki, create_federation
from coordinator.schema import AuditEvent, Enrolment
from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc
from protos.transport import open_channel

runner = CliRunner()


@pytest.fixture
def tls_coordinator(tmp_path):
    pki = create_federation(tmp_path / "pki", ["localhost", "127.0.0.1"])
    server = CoordinatorServer(
        f"sqlite:///{tmp_path / 'c.db'}",
        tmp_path / "data",
        port=0,
        tls=pki,
        auth=True,
        tick_seconds=0.05,
    )
    port = server.start()
    channels: list[grpc.Channel] = []

    def channel() -> grpc.Channel:
        channels.append(open_channel(f"localhost:{port}", ca_file=pki.ca_cert))
        return channels[-1]

    yield server, pki, port, channel
    for item in channels:
        item.close()
    server.stop(grace=0.5)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def admin_token(pki: FederationPki) -> str:
    return pki.admin_token.read_text().strip()


def audit_kinds(server: CoordinatorServer) -> list[str]:
    with server.hub.db.transaction() as session:
        return list(session.scalars(select(AuditEvent.kind)))


def test_init_writes_private_files_with_mode_0600(tmp_path):
    result = runner.invoke(app, ["admin", "init", "--dir", str(tmp_path / "pki")])

    assert result.exit_code == 0, result.output
    for name in ("ca.key", "server.key", "admin.token"):
        assert stat.S_IMODE((tmp_path / "pki" / name).stat().st_mode) == 0o600
    again = runner.invoke(app, ["admin", "init", "--dir", str(tmp_path / "pki")])
    assert again.exit_code == 2 and "--force" in again.output


def test_plaintext_client_cannot_talk_to_a_tls_coordinator(tls_coordinator):
    _, _, port, _ = tls_coordinator
    stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    with pytest.raises(grpc.RpcError) as info:
        stub.ListRuns(admin_pb2.ListRunsRequest(), timeout=5)

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("metadata", [(), bearer("not-a-token")], ids=["missing", "unknown"])
def test_admin_call_without_a_valid_token_is_unauthenticated_and_logged(tls_coordinator, metadata):
    server, _, _, channel = tls_coordinator
    stub = admin_pb2_grpc.AdminStub(channel())

    with pytest.raises(grpc.RpcError) as info:
        stub.ListRuns(admin_pb2.ListRunsRequest(), metadata=metadata)

    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "auth.unauthenticated" in audit_kinds(server)


READS = {
    "ListRuns": admin_pb2.ListRunsRequest(),
    "GetRun": admin_pb2.GetRunRequest(run_id="x"),
    "ListNodes": admin_pb2.ListNodesRequest(),
    "GetAuditLog": admin_pb2.GetAuditLogRequest(),
    "GetMetrics": admin_pb2.GetMetricsRequest(),
    "DashboardWhoAmI": admin_pb2.DashboardWhoAmIRequest(),
}
WRITES = {
    "CreateRun": admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=9),
    "StopRun": admin_pb2.StopRunRequest(run_id="x"),
    "EnrolSite": admin_pb2.EnrolSiteRequest(site_name="a", ttl_seconds=3600),
    "AddOperator": admin_pb2.AddOperatorRequest(name="eve", role="admin"),
}
STREAMS = {
    "DownloadModel": (admin_pb2.DownloadModelRequest(run_id="x"), "write"),
    "ExportReport": (admin_pb2.ExportReportRequest(run_id="x", format="json"), "read"),
    "WatchRun": (admin_pb2.GetRunRequest(run_id="x"), "read"),
}


def call(stub, rpc: str, request, token: str) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        result = getattr(stub, rpc)(request, metadata=bearer(token), timeout=10)
        if rpc in STREAMS:
            list(result)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_role_matrix(tls_coordinator, role):
    server, pki, _, channel = tls_coordinator
    stub = admin_pb2_grpc.AdminStub(channel())
    token = admin_token(pki)
    if role == "auditor":
        token = stub.AddOperator(
            admin_pb2.AddOperatorRequest(name="aud", role="auditor"),
            metadata=bearer(admin_token(pki)),
        ).token
    denied = grpc.StatusCode.PERMISSION_DENIED

    reads = {rpc: call(stub, rpc, request, token) for rpc, request in READS.items()}
    writes = {rpc: call(stub, rpc, request, token) for rpc, request in WRITES.items()}
    streams = {
        rpc: (call(stub, rpc, request, token), kind) for rpc, (request, kind) in STREAMS.items()
    }

    assert denied not in reads.values()
    if role == "admin":
        assert denied not in writes.values()
        assert all(code != denied for code, _ in streams.values())
    else:
        assert set(writes.values()) == {denied}
        assert all((code == denied) == (kind == "write") for code, kind in streams.values())
        assert "auth.denied" in audit_kinds(server)


def test_site_must_enrol_and_a_token_works_once(tls_coordinator):
    server, pki, _, channel = tls_coordinator
    admin = admin_pb2_grpc.AdminStub(channel())
    sites = federation_pb2_grpc.FederationStub(channel())
    token = admin.EnrolSite(
        admin_pb2.EnrolSiteRequest(site_name="hospital-a", ttl_seconds=600),
        metadata=bearer(admin_token(pki)),
    ).token

    def join(name: str, enrolment: str) -> grpc.StatusCode:
        try:
            sites.Join(federation_pb2.JoinRequest(site_name=name, enrolment_token=enrolment))
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    assert join("hospital-a", "") == grpc.StatusCode.UNAUTHENTICATED
    assert join("hospital-b", token) == grpc.StatusCode.UNAUTHENTICATED
    assert join("hospital-a", token) == grpc.StatusCode.OK
    assert join("hospital-a", token) == grpc.StatusCode.UNAUTHENTICATED


def test_expired_enrolment_token_is_refused(tls_coordinator):
    server, pki, _, channel = tls_coordinator
    admin = admin_pb2_grpc.AdminStub(channel())
    token = admin.EnrolSite(
        admin_pb2.EnrolSiteRequest(site_name="a", ttl_seconds=600),
        metadata=bearer(admin_token(pki)),
    ).token
    with server.hub.db.transaction() as session:
        session.execute(update(Enrolment).values(expires_at=time.time() - 1))

    with pytest.raises(grpc.RpcError) as info:
        federation_pb2_grpc.FederationStub(channel()).Join(
            federation_pb2.JoinRequest(site_name="a", enrolment_token=token)
        )

    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in info.value.details()


def test_enrolled_sites_train_over_tls(tls_coordinator, agents, tmp_path):
    server, pki, port, channel = tls_coordinator
    admin = admin_pb2_grpc.AdminStub(channel())
    names = ["hospital-a", "hospital-b"]
    trainers = breast_cancer_sites(2)
    for name, trainer in zip(names, trainers, strict=True):
        token = admin.EnrolSite(
            admin_pb2.EnrolSiteRequest(site_name=name, ttl_seconds=600),
            metadata=bearer(admin_token(pki)),
        ).token
        agents.start(
            f"localhost:{port}",
            [trainer],
            tmp_path,
            names=[name],
            ca_file=pki.ca_cert,
            insecure=False,
            enrolment_token=token,
        )

    class Authorised:
        def __getattr__(self, rpc):  # type: ignore[no-untyped-def]
            method = getattr(admin, rpc)
            return lambda request, **kw: method(request, metadata=bearer(admin_token(pki)), **kw)

    run = create_run(Authorised(), rounds=1, min_clients=2)
    info = wait_for_state(
        Authorised(), run.run_id, (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)
    )

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason


@pytest.mark.parametrize(
    "args",
    [
        ["coordinator", "serve", "--port", "0"],
        ["client", "run", "--name", "a", "--data", "sklearn:iris"],
        ["admin", "runs", "list"],
    ],
    ids=["serve", "client", "admin"],
)
def test_plaintext_needs_an_explicit_insecure(args):
    result = runner.invoke(app, args)

    assert result.exit_code == 2
    assert "--insecure" in result.output
