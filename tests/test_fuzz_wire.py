"""Random request bytes, and text the database cannot hold.

See tests/fuzzing.py for what every property asserts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import (
    _drop_postgres_database,
    _fresh_postgres_database,
    start_coordinator,
)
from fuzzing import (
    FRAMEWORK_DECODE_FAILURE,
    FUZZ,
    REFUSALS,
    TIMEOUT,
    Server,
    coordinator_in,
    refused,
    submit,
    update_messages,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_federation_errors import FakeSite

from protos import admin_pb2, federation_pb2

# -- undecodable and random request bytes -------------------------------------------------

RAW_METHODS = {
    "/cohort.v1.Federation/Join": "unary",
    "/cohort.v1.Federation/Heartbeat": "unary",
    # Sent without a token: with one, a random wait could decode to NaN (a known defect).
    "/cohort.v1.Federation/PullTask": "anonymous",
    "/cohort.v1.Federation/FetchModel": "stream",
    "/cohort.v1.Federation/SubmitUpdate": "client_stream",
    "/cohort.v1.Federation/SubmitKeys": "unary",
    "/cohort.v1.Federation/SubmitAudit": "unary",
    "/cohort.v1.Federation/GetFinalModel": "unary",
    "/cohort.v1.Federation/SubmitPartials": "unary",
    "/cohort.v1.Federation/FetchPartials": "unary",
    "/cohort.v1.Federation/ReportPartial": "unary",
    "/cohort.v1.Federation/LedgerSubmit": "unary",
    "/cohort.v1.Federation/SubmitEcho": "unary",
    "/cohort.v1.Federation/FetchEchoes": "unary",
    "/cohort.v1.Admin/CreateRun": "unary",
    "/cohort.v1.Admin/ListRuns": "unary",
    "/cohort.v1.Admin/GetRun": "unary",
    "/cohort.v1.Admin/StopRun": "unary",
    "/cohort.v1.Admin/WatchRun": "stream",
    "/cohort.v1.Admin/DownloadModel": "stream",
    "/cohort.v1.Admin/ListNodes": "unary",
    "/cohort.v1.Admin/GetAuditLog": "unary",
    "/cohort.v1.Admin/ExportReport": "stream",
    "/cohort.v1.Admin/GetMetrics": "unary",
    "/cohort.v1.Admin/DashboardWhoAmI": "unary",
    "/cohort.v1.Admin/EnrolSite": "unary",
    "/cohort.v1.Admin/AddOperator": "unary",
}


def raw_call(channel: grpc.Channel, method: str, payloads: list[bytes], metadata):
    """Call ``method`` with request bytes as they are, past any serializer."""
    shape = RAW_METHODS[method]
    if shape == "client_stream":
        return channel.stream_unary(method)(iter(payloads), metadata=metadata, timeout=TIMEOUT)
    if shape == "stream":
        return list(channel.unary_stream(method)(payloads[0], metadata=metadata, timeout=TIMEOUT))
    if shape == "anonymous":
        metadata = None
    return channel.unary_unary(method)(payloads[0], metadata=metadata, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, FakeSite]]:
    with coordinator_in(tmp_path_factory.mktemp("raw")) as server:
        yield server, FakeSite(server.federation, "site-raw")


@settings(FUZZ, max_examples=60)
@given(
    method=st.sampled_from(sorted(RAW_METHODS)),
    payloads=st.lists(st.binary(max_size=120), min_size=1, max_size=3),
)
def test_random_request_bytes_are_answered_with_a_proper_status(raw, method, payloads):
    server, site = raw

    try:
        raw_call(server.channel, method, payloads, site.metadata)
    except grpc.RpcError as exc:
        framework = (
            exc.code() == grpc.StatusCode.INTERNAL and exc.details() == FRAMEWORK_DECODE_FAILURE
        )
        assert exc.code() in REFUSALS or framework, f"{exc.code().name}: {exc.details()}"

    server.assert_serving(site)


@pytest.mark.parametrize(
    "method", ["/cohort.v1.Federation/Join", "/cohort.v1.Admin/CreateRun"], ids=["join", "create"]
)
def test_undecodable_request_is_invalid_argument(raw, method):
    server, site = raw

    code = refused(lambda: raw_call(server.channel, method, [b"\xff\xff\xff\xff"], site.metadata))

    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- text the database cannot hold --------------------------------------------------------

BOTH = frozenset({"sqlite", "postgresql"})
TEXT_CASES = {
    "agent-version-65": BOTH,
    "run-name-129": BOTH,
    "model-257": BOTH,
    "custodian-129": BOTH,
    "model-with-nul": BOTH,
    "run-id-with-nul": frozenset({"postgresql"}),
    "rejected-update-long-run-id": frozenset({"postgresql"}),
    "operator-name-with-nul": BOTH,
}
"""Each case, and the databases where it used to fail (SQLite stored what PostgreSQL refused)."""


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def any_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Server, FakeSite]]:
    """A coordinator on each kind of database, with one joined site."""
    directory = tmp_path_factory.mktemp(request.param)
    admin_url, database = "", ""
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'coordinator.db'}"
    else:
        admin_url = request.getfixturevalue("postgres_server")
        url, database = _fresh_postgres_database(admin_url)
    running = start_coordinator(url, directory / "data")
    try:
        server = Server.of(running)
        yield request.param, server, FakeSite(server.federation, "site-db")
    finally:
        for channel in running.channels:
            channel.close()
        running.server.stop(grace=0.5)
        if database:
            _drop_postgres_database(admin_url, database)


def text_cases(server: Server, site: FakeSite) -> dict[str, Callable[[], object]]:
    fed, admin = server.federation, server.admin

    def create(**fields: object) -> Callable[[], object]:
        request = admin_pb2.CreateRunRequest(
            **{"model": "tabular_mlp", "rounds": 1, "min_clients": 9, **fields}
        )
        return lambda: admin.CreateRun(request, timeout=TIMEOUT)

    header = federation_pb2.UpdateHeader(task_id="no-such-task", run_id="r" * 80, round=1)
    return {
        "agent-version-65": lambda: fed.Join(
            federation_pb2.JoinRequest(site_name="site-db2", agent_version="v" * 65),
            timeout=TIMEOUT,
        ),
        "run-name-129": create(name="n" * 129),
        "model-257": create(model="m" * 257),
        "custodian-129": create(custodian="c" * 129),
        "model-with-nul": create(model="tabular\x00mlp"),
        "run-id-with-nul": lambda: admin.GetRun(
            admin_pb2.GetRunRequest(run_id="run\x00"), timeout=TIMEOUT
        ),
        "rejected-update-long-run-id": lambda: submit(site, update_messages(header)),
        "operator-name-with-nul": lambda: admin.AddOperator(
            admin_pb2.AddOperatorRequest(name="eve\x00", role="auditor"), timeout=TIMEOUT
        ),
    }


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_a_column_cannot_hold_is_refused_on_every_database(any_database, case):
    database, server, site = any_database
    before = server.footprint()

    refused(text_cases(server, site)[case])

    assert server.footprint() == before
    server.assert_serving(site)
