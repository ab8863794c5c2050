"""Hostile admin requests: run creation and lookups, operator tokens, roles, enrolment.

See tests/fuzzing.py for what every property asserts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from conftest import (
    RunningCoordinator,
)
from fuzzing import (
    FUZZ,
    SITE_NAME_RULE,
    TIMEOUT,
    Server,
    answered,
    any_text,
    ids,
    json_values,
    metadata_text,
    refused,
    site_names,
    uint32,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from coordinator.access import ROLES
from coordinator.aggregation import STRATEGIES
from coordinator.schema import (
    AuditEvent,
    Operator,
)
from coordinator.server import CoordinatorServer
from explain.report import FORMATS
from protos import admin_pb2, common_pb2, federation_pb2, wire

# -- Admin --------------------------------------------------------------------------------

# Known defect: quorum, encoding and update_quantisation values that are null, lists,
# objects, infinite or past float range crash the run spec's validation (see
# test_create_run_with_a_malformed_config_is_invalid_argument); these stay clear of them.
checked_numbers = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=8),
)
CHECKED_CONFIG_KEYS = ("quorum", "encoding", "update_quantisation")


@st.composite
def run_configs(draw) -> str:
    kind = draw(st.sampled_from(["text", "json", "object"]))
    if kind == "text":
        return draw(any_text)
    if kind == "json":
        value = draw(json_values)
        assume(not (isinstance(value, dict) and set(value) & set(CHECKED_CONFIG_KEYS)))
        return json.dumps(value)
    config = draw(
        st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in CHECKED_CONFIG_KEYS),
            json_values,
            max_size=4,
        )
    )
    if draw(st.booleans()):
        config["quorum"] = draw(checked_numbers)
    if draw(st.booleans()):
        config["encoding"] = draw(
            st.one_of(
                st.dictionaries(
                    st.sampled_from(["clip", "bits", "max_weight", "key_bits", "other"]),
                    checked_numbers,
                ),
                st.text(max_size=5),
                st.lists(st.integers(), max_size=2),
            )
        )
    if draw(st.booleans()):
        config["update_quantisation"] = draw(
            st.one_of(
                st.dictionaries(st.sampled_from(["bits", "clip"]), checked_numbers),
                st.text(max_size=5),
                st.lists(st.integers(), max_size=2),
            )
        )
    return json.dumps(config)


create_run_requests = st.builds(
    admin_pb2.CreateRunRequest,
    model=st.one_of(
        st.sampled_from(["tabular_mlp", "site:lab.nets:build", "xgboost", "os:system", "", "  "]),
        any_text,
    ),
    rounds=st.one_of(st.integers(0, 12), uint32),
    min_clients=st.one_of(st.integers(0, 4), uint32),
    max_clients=st.one_of(st.integers(0, 4), uint32),
    fraction=st.one_of(st.floats(0, 1), st.floats()),
    round_deadline_seconds=st.one_of(st.floats(0, 1000), st.floats()),
    local_epochs=st.one_of(st.integers(0, 3), uint32),
    lr=st.one_of(st.floats(0, 1), st.floats()),
    secure=st.one_of(st.sampled_from([0, 1, 2]), st.integers(-(2**31), 2**31 - 1)),
    custodian=st.one_of(st.just(""), site_names, any_text),
    strategy=st.one_of(st.sampled_from(STRATEGIES), any_text),
    config_json=run_configs(),
    name=any_text,
)


@settings(FUZZ, max_examples=60)
@given(request=create_run_requests, user=metadata_text)
def test_random_create_run_requests_create_a_pending_run_or_store_nothing(
    admin_only, request, user
):
    server, _ = admin_only
    before, rows = server.footprint(), server.audit_rows()

    reply = answered(
        lambda: server.admin.CreateRun(
            request, metadata=(("x-cohort-user", user),), timeout=TIMEOUT
        )
    )

    if isinstance(reply, admin_pb2.RunInfo):
        assert reply.state == common_pb2.RUN_STATE_PENDING
        assert 1 <= reply.rounds <= 10_000 and reply.min_clients >= 1
        assert reply.model.strip() and reply.strategy in STRATEGIES
        assert server.admin.GetRun(admin_pb2.GetRunRequest(run_id=reply.run_id)).run_id
        assert server.footprint()["runs"] == before["runs"] + 1
        assert server.audit_rows() == rows + 1
    else:
        assert reply == grpc.StatusCode.INVALID_ARGUMENT
        assert server.footprint() == before
        assert server.audit_rows() == rows
    server.assert_serving()


@pytest.mark.parametrize(
    "config, secure",
    [
        ({"quorum": None}, False),
        ({"quorum": [1]}, False),
        ('{"quorum": 1e400}', False),
        ({"encoding": {"key_bits": None}}, True),
        ('{"encoding": {"bits": Infinity}}', True),
        ({"encoding": {"clip": 10**400}}, True),
        ({"encoding": {"clip": float("nan")}}, True),
        ({"encoding": {"clip": "inf"}}, True),
        ({"update_quantisation": {"bits": None}}, False),
        ("[" * 100_000 + "]" * 100_000, False),
    ],
    ids=[
        "quorum-null",
        "quorum-list",
        "quorum-infinite",
        "key-bits-null",
        "bits-infinite",
        "clip-past-float-range",
        "clip-nan",
        "clip-infinite",
        "quantisation-bits-null",
        "nested-100000-deep",
    ],
)
def test_create_run_with_a_malformed_config_is_invalid_argument(admin_only, config, secure):
    server, _ = admin_only
    request = admin_pb2.CreateRunRequest(
        model="tabular_mlp",
        rounds=1,
        min_clients=1,
        secure=common_pb2.SECURE_SCHEME_PAILLIER if secure else common_pb2.SECURE_SCHEME_NONE,
        config_json=config if isinstance(config, str) else json.dumps(config),
    )
    before = server.footprint()

    code = refused(lambda: server.admin.CreateRun(request, timeout=TIMEOUT))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert server.footprint() == before


def run_lookups(
    admin, run_id: str, round_number: int, fmt: str, metadata=None
) -> dict[str, Callable[[], object]]:
    """The admin RPCs that name a run, each under ``metadata``."""
    options = {"metadata": metadata, "timeout": TIMEOUT}
    return {
        "GetRun": lambda: admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id), **options),
        "StopRun": lambda: admin.StopRun(
            admin_pb2.StopRunRequest(run_id=run_id, reason=fmt), **options
        ),
        "WatchRun": lambda: list(admin.WatchRun(admin_pb2.GetRunRequest(run_id=run_id), **options)),
        "DownloadModel": lambda: list(
            admin.DownloadModel(
                admin_pb2.DownloadModelRequest(run_id=run_id, round=round_number), **options
            )
        ),
        "ExportReport": lambda: list(
            admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run_id, format=fmt), **options)
        ),
    }


@settings(FUZZ, max_examples=50)
@given(
    run_id=ids,
    round_number=uint32,
    fmt=st.one_of(
        st.sampled_from(FORMATS), st.sampled_from(["HTML", " json", "pdf\x00"]), any_text
    ),
)
def test_lookups_of_unknown_runs_are_refused_and_log_nothing(admin_only, run_id, round_number, fmt):
    server, real = admin_only
    assume(run_id != real)
    rows = server.audit_rows()

    codes = {
        name: refused(call)
        for name, call in run_lookups(server.admin, run_id, round_number, fmt).items()
    }

    report = grpc.StatusCode.NOT_FOUND if fmt in FORMATS else grpc.StatusCode.INVALID_ARGUMENT
    assert codes == {
        "GetRun": grpc.StatusCode.NOT_FOUND,
        "StopRun": grpc.StatusCode.NOT_FOUND,
        "WatchRun": grpc.StatusCode.NOT_FOUND,
        "DownloadModel": grpc.StatusCode.NOT_FOUND,
        "ExportReport": report,
    }
    assert server.audit_rows() == rows
    server.assert_serving()


@settings(FUZZ, max_examples=30)
@given(round_number=uint32, fmt=any_text.filter(lambda f: f not in FORMATS))
def test_model_and_report_of_a_pending_run_are_refused_for_any_round_or_format(
    admin_only, round_number, fmt
):
    server, real = admin_only
    rows = server.audit_rows()
    calls = run_lookups(server.admin, real, round_number, fmt)

    download = refused(calls["DownloadModel"])
    report = refused(calls["ExportReport"])

    assert download == (
        grpc.StatusCode.FAILED_PRECONDITION if round_number == 0 else grpc.StatusCode.NOT_FOUND
    )
    assert report == grpc.StatusCode.INVALID_ARGUMENT
    assert server.audit_rows() == rows
    assert server.admin.GetRun(admin_pb2.GetRunRequest(run_id=real)).state == (
        common_pb2.RUN_STATE_PENDING
    )


# -- operators and enrolment (access control on) -----------------------------------------


@dataclass
class Guarded:
    """A coordinator that checks operator tokens and site enrolment."""

    server: Server
    admin_token: str
    auditor_token: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    directory = tmp_path_factory.mktemp("guarded")
    coordinator = CoordinatorServer(
        f"sqlite:///{directory / 'coordinator.db'}", directory / "data", auth=True
    )
    running = RunningCoordinator(coordinator, coordinator.start(), directory / "data")
    try:
        server = Server.of(running)
        admin_token = "an-admin-token-for-the-fuzz-tests"
        coordinator.access.bootstrap_admin(admin_token)
        auditor = server.admin.AddOperator(
            admin_pb2.AddOperatorRequest(name="auditor", role="auditor"),
            metadata=bearer(admin_token),
            timeout=TIMEOUT,
        )
        yield Guarded(server, admin_token, auditor.token)
    finally:
        for channel in running.channels:
            channel.close()
        coordinator.stop(grace=0.5)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((wire.NODE_TOKEN_HEADER, f"Bearer {token}"),)


AUDITOR_MAY_NOT = frozenset({"CreateRun", "StopRun", "DownloadModel", "EnrolSite", "AddOperator"})


def admin_calls(admin, metadata) -> dict[str, Callable[[], object]]:
    """One well-formed call of every admin RPC, under ``metadata``."""
    calls = run_lookups(admin, "no-such-run", 1, "json", metadata)
    calls.update(
        {
            "CreateRun": lambda: admin.CreateRun(
                admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=9),
                metadata=metadata,
                timeout=TIMEOUT,
            ),
            "ListRuns": lambda: admin.ListRuns(
                admin_pb2.ListRunsRequest(), metadata=metadata, timeout=TIMEOUT
            ),
            "ListNodes": lambda: admin.ListNodes(
                admin_pb2.ListNodesRequest(), metadata=metadata, timeout=TIMEOUT
            ),
            "GetAuditLog": lambda: admin.GetAuditLog(
                admin_pb2.GetAuditLogRequest(), metadata=metadata, timeout=TIMEOUT
            ),
            "GetMetrics": lambda: admin.GetMetrics(
                admin_pb2.GetMetricsRequest(), metadata=metadata, timeout=TIMEOUT
            ),
            "DashboardWhoAmI": lambda: admin.DashboardWhoAmI(
                admin_pb2.DashboardWhoAmIRequest(), metadata=metadata, timeout=TIMEOUT
            ),
            "EnrolSite": lambda: admin.EnrolSite(
                admin_pb2.EnrolSiteRequest(site_name="site-x", ttl_seconds=3600),
                metadata=metadata,
                timeout=TIMEOUT,
            ),
            "AddOperator": lambda: admin.AddOperator(
                admin_pb2.AddOperatorRequest(name="mallory", role="admin"),
                metadata=metadata,
                timeout=TIMEOUT,
            ),
        }
    )
    return calls


operator_metadata = st.one_of(
    st.none(),
    metadata_text.map(bearer),
    metadata_text.map(lambda value: ((wire.NODE_TOKEN_HEADER, value),)),
)


@settings(FUZZ, max_examples=20)
@given(metadata=operator_metadata)
def test_admin_calls_with_a_random_operator_token_are_unauthenticated_logged_and_change_nothing(
    guarded, metadata
):
    server = guarded.server
    before, rows = server.footprint(), server.audit_rows()
    calls = admin_calls(server.admin, metadata)
    started = time.monotonic()

    codes = {name: refused(call) for name, call in calls.items()}

    elapsed = time.monotonic() - started
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    assert server.footprint() == before
    # Logged, but at most one row a second per caller: a loop of bad tokens cannot grow
    # the log at its own pace (coordinator.auditlog.RowThrottle).
    assert server.audit_rows() - rows <= int(elapsed) + 1
    with server.running.hub.db.transaction() as session:
        logged = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.kind == "auth.unauthenticated")
        )
    assert logged >= 1


@settings(FUZZ, max_examples=40)
@given(data=st.data(), rpc=st.sampled_from(sorted(AUDITOR_MAY_NOT)))
def test_auditor_writes_are_permission_denied_whatever_the_request(guarded, data, rpc):
    admin, metadata = guarded.server.admin, bearer(guarded.auditor_token)
    request = data.draw(
        {
            "CreateRun": create_run_requests,
            "StopRun": st.builds(admin_pb2.StopRunRequest, run_id=ids, reason=any_text),
            "DownloadModel": st.builds(admin_pb2.DownloadModelRequest, run_id=ids, round=uint32),
            "EnrolSite": st.builds(
                admin_pb2.EnrolSiteRequest, site_name=site_names, ttl_seconds=st.floats()
            ),
            "AddOperator": st.builds(
                admin_pb2.AddOperatorRequest,
                name=any_text,
                role=st.one_of(st.sampled_from(ROLES), any_text),
            ),
        }[rpc],
        label="request",
    )
    before = guarded.server.footprint()

    def call() -> object:
        reply = getattr(admin, rpc)(request, metadata=metadata, timeout=TIMEOUT)
        return list(reply) if rpc == "DownloadModel" else reply

    code = refused(call)

    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert guarded.server.footprint() == before


@settings(FUZZ, max_examples=30)
@given(name=st.from_regex(SITE_NAME_RULE, fullmatch=True), token=any_text)
def test_join_with_a_random_enrolment_token_is_unauthenticated_and_adds_no_node(
    guarded, name, token
):
    before = guarded.server.footprint()

    code = refused(
        lambda: guarded.server.federation.Join(
            federation_pb2.JoinRequest(site_name=name, enrolment_token=token), timeout=TIMEOUT
        )
    )

    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert guarded.server.footprint() == before


no_nul_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=140
)


@settings(FUZZ, max_examples=40)
@given(name=no_nul_text, role=st.one_of(st.sampled_from(ROLES), any_text))
def test_add_operator_with_random_fields_grants_a_working_token_or_is_refused(guarded, name, role):
    admin = guarded.server.admin
    with guarded.server.running.hub.db.transaction() as session:
        taken = session.scalar(select(Operator.id).where(Operator.name == name)) is not None
    valid = role in ROLES and name.strip() and len(name) <= 128 and not taken
    before = guarded.server.footprint()

    reply = answered(
        lambda: admin.AddOperator(
            admin_pb2.AddOperatorRequest(name=name, role=role),
            metadata=bearer(guarded.admin_token),
            timeout=TIMEOUT,
        )
    )

    if valid:
        assert isinstance(reply, admin_pb2.AddOperatorReply), reply
        admin.ListRuns(admin_pb2.ListRunsRequest(), metadata=bearer(reply.token), timeout=TIMEOUT)
        assert guarded.server.footprint()["operators"] == before["operators"] + 1
    else:
        assert reply in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS)
        assert guarded.server.footprint() == before


@settings(FUZZ, max_examples=30)
@given(
    name=st.from_regex(SITE_NAME_RULE, fullmatch=True),
    ttl=st.one_of(st.floats(), st.floats(0, 40 * 86400)),
)
def test_enrolment_with_any_ttl_is_granted_once_or_invalid_argument(guarded, name, ttl):
    server = guarded.server
    before = server.footprint()

    reply = answered(
        lambda: server.admin.EnrolSite(
            admin_pb2.EnrolSiteRequest(site_name=name, ttl_seconds=ttl),
            metadata=bearer(guarded.admin_token),
            timeout=TIMEOUT,
        )
    )

    if ttl == 0 or 60 <= ttl <= 30 * 86400:
        assert isinstance(reply, admin_pb2.EnrolSiteReply), reply
        join = federation_pb2.JoinRequest(site_name=name, enrolment_token=reply.token)
        server.federation.Join(join, timeout=TIMEOUT)
        assert refused(lambda: server.federation.Join(join, timeout=TIMEOUT)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    else:
        assert reply == grpc.StatusCode.INVALID_ARGUMENT
        assert server.footprint() == before


@pytest.mark.parametrize("site_name", ["", "../etc", "a" * 129, "two words"])
def test_enrolment_for_a_name_no_site_may_have_is_invalid_argument(guarded, site_name):
    before = guarded.server.footprint()

    code = refused(
        lambda: guarded.server.admin.EnrolSite(
            admin_pb2.EnrolSiteRequest(site_name=site_name, ttl_seconds=3600),
            metadata=bearer(guarded.admin_token),
            timeout=TIMEOUT,
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert guarded.server.footprint() == before
