"""The coordinator's side of sovereign sites, and the sites' own pins and policy (fast).

Signed updates are checked against the node's registered identity; aggregates carry the
signed manifest; a site's refusal is recorded, bounded, rate-limited in the log and fails
the run when the site found the aggregate bad; secure runs need three sites.
"""

from __future__ import annotations

import hashlib
import json
import time

import grpc
import pytest
import test_secure_rounds
from helpers import TEST_ENCODING
from sqlalchemy import func, select
from test_federation_errors import WEIGHTS, FakeSite, expect_status
from test_secure_rounds import SecureFakeSite

from client.pins import Observed, RunPins
from client.policy import SitePolicy, TaskRefused, check_model, policy_from_options
from coordinator import refusals
from coordinator.schema import AuditEvent, Run, SiteRefusal, Task, TaskKind, TaskState, Update
from coordinator.selection import new_task
from crypto import identity
from protos import admin_pb2, common_pb2, federation_pb2, wire


def secure_run(coordinator, **request):
    fields = {
        "model": "tabular_mlp",
        "rounds": 2,
        "min_clients": 1,
        "round_deadline_seconds": 60,
        "secure": common_pb2.SECURE_SCHEME_PAILLIER,
        "config_json": json.dumps({"encoding": TEST_ENCODING}),
        "allow_two_site_secure": True,
    }
    return coordinator.admin().CreateRun(admin_pb2.CreateRunRequest(**{**fields, **request}))


@pytest.fixture
def secure_round(coordinator):
    site = SecureFakeSite(coordinator.federation())
    run = secure_run(coordinator)
    site.make_keys()
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    task = site.pull(federation_pb2.TASK_KIND_TRAIN)
    return coordinator, site, run, task


def stored(coordinator, table=Update) -> int:
    with coordinator.hub.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(table)))


# -- signed updates --------------------------------------------------------------------


@pytest.mark.parametrize("forgery", ["unsigned", "zeros", "another identity"])
def test_an_update_whose_signature_does_not_verify_is_invalid_argument(
    secure_round, forgery, monkeypatch
):
    coordinator, site, _, task = secure_round
    if forgery == "another identity":
        site.ed25519_private, _ = identity.generate_ed25519()
    else:
        forged = b"" if forgery == "unsigned" else bytes(64)
        monkeypatch.setattr(test_secure_rounds.identity, "sign", lambda *_: forged)

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, site.ciphertexts())
    )

    assert "sign" in detail
    assert stored(coordinator) == 0


def test_a_signed_update_is_stored_with_its_signature(secure_round):
    coordinator, site, _, task = secure_round

    site.send(task, site.ciphertexts())

    with coordinator.hub.db.transaction() as session:
        update = session.scalars(select(Update)).one()
        assert len(update.signature) == 64


def test_a_secure_run_refuses_updates_from_a_node_without_an_identity(coordinator):
    site = SecureFakeSite(coordinator.federation())
    secure_run(coordinator)
    site.make_keys()
    site.submit(site.pull(federation_pb2.TASK_KIND_INIT), wire.encode_tensors(WEIGHTS))
    task = site.pull(federation_pb2.TASK_KIND_TRAIN)
    with coordinator.hub.db.transaction() as session:
        from coordinator.schema import Node

        session.get(Node, site.node_id).ed25519_public_key = b""

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, site.ciphertexts())
    )

    assert "registered identity" in detail


def test_the_next_task_carries_the_signed_manifest_and_its_updates_become_fetchable(
    secure_round,
):
    coordinator, site, run, task = secure_round
    cts = site.ciphertexts()
    payload = crypto_bytes(site, cts)
    sha = wire.sha256_hex(payload)
    fetch = federation_pb2.FetchModelRequest(run_id=run.run_id, sha256=sha)

    site.send(task, cts)
    nxt = site.pull(federation_pb2.TASK_KIND_TRAIN)

    [aggregate] = nxt.aggregates
    [entry] = aggregate.contributions
    assert (entry.site_name, entry.payload_sha256, entry.weight) == ("custodian", sha, 10)
    assert entry.payload_size == len(payload)
    identity.verify(
        bytes(next(p.ed25519_public_key for p in nxt.participants)),
        identity.update_statement(
            run_id=run.run_id,
            round_number=1,
            site_name="custodian",
            payload_sha256=sha,
            weight=10,
            key_id=task.encoding.key_id,
            encoding=wire.PAILLIER_PACKED,
            proof_sha256=hashlib.sha256(entry.plaintext_proof).hexdigest(),
        ),
        entry.signature,
    )
    fetched = b"".join(c.data for c in site.stub.FetchModel(fetch, metadata=site.metadata))
    assert fetched == payload
    # Nothing else is served: not a blob the run never aggregated.
    stray = federation_pb2.FetchModelRequest(run_id=run.run_id, sha256=wire.sha256_hex(b"x"))
    expect_status(
        grpc.StatusCode.NOT_FOUND,
        lambda: list(site.stub.FetchModel(stray, metadata=site.metadata)),
    )


def crypto_bytes(site, cts) -> bytes:
    import crypto

    return crypto.ciphertexts_to_bytes(cts, crypto.ciphertext_width(site.public_key))


# -- refusals ------------------------------------------------------------------------------


def refuse(site, task, code: str = "verify", reason: str = "the product did not check"):
    return site.stub.RefuseTask(
        federation_pb2.TaskRefusal(
            task_id=task.task_id, run_id=task.run_id, code=code, reason=reason
        ),
        metadata=site.metadata,
    )


@pytest.mark.parametrize("code", ["verify", "decode"])
def test_a_site_that_finds_the_aggregate_bad_fails_the_run_naming_it(secure_round, code):
    coordinator, site, run, task = secure_round

    refuse(site, task, code, "line one\nline two\x00" + "x" * 5000)

    info = coordinator.admin().GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
    assert info.state == common_pb2.RUN_STATE_FAILED
    assert f"site custodian refused round 1 ({code})" in info.failure_reason
    [shown] = info.refusals
    assert (shown.site_name, shown.round, shown.code) == ("custodian", 1, code)
    assert len(shown.reason) <= refusals.MAX_REASON and "\n" not in shown.reason
    with coordinator.hub.db.transaction() as session:
        assert session.get(Task, task.task_id).state == TaskState.REFUSED
        kinds = session.scalars(select(AuditEvent.kind)).all()
    assert "task.refused" in kinds and "run.failed" in kinds


def test_a_policy_refusal_is_recorded_without_failing_the_run(secure_round):
    coordinator, site, run, task = secure_round

    refuse(site, task, "policy", "this site builds image_cnn only")

    info = coordinator.admin().GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
    assert info.state == common_pb2.RUN_STATE_RUNNING
    assert [r.reason for r in info.refusals] == ["this site builds image_cnn only"]
    expect_status(grpc.StatusCode.FAILED_PRECONDITION, lambda: refuse(site, task, "policy"))


@pytest.mark.parametrize(
    "field, value",
    [("task_id", "t" * (3 << 20)), ("task_id", ""), ("code", "bogus"), ("code", "v" * 100)],
)
def test_a_malformed_refusal_is_invalid_argument_and_writes_nothing(secure_round, field, value):
    coordinator, site, _, task = secure_round
    before = stored(coordinator, AuditEvent)
    message = federation_pb2.TaskRefusal(task_id=task.task_id, run_id=task.run_id, code="pin")
    setattr(message, field, value)

    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: site.stub.RefuseTask(message, metadata=site.metadata),
    )

    assert stored(coordinator, AuditEvent) == before
    assert stored(coordinator, SiteRefusal) == 0


def test_refusing_another_nodes_task_is_failed_precondition(secure_round):
    coordinator, site, _, task = secure_round
    other = FakeSite(coordinator.federation(), name="intruder")

    expect_status(grpc.StatusCode.FAILED_PRECONDITION, lambda: refuse(other, task, "policy"))


def test_refusal_audit_rows_are_rate_limited_per_node(secure_round):
    coordinator, site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        stored_run = session.get(Run, run.run_id)
        tasks = [
            new_task(stored_run, site.node_id, TaskKind.TRAIN, 1, time.time() + 600)
            for _ in range(refusals.AUDIT_RATE + 5)
        ]
        session.add_all(tasks)
        ids = [t.id for t in tasks]

    for task_id in ids:
        refuse(site, federation_pb2.Task(task_id=task_id, run_id=run.run_id), "policy")

    with coordinator.hub.db.transaction() as session:
        rows = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "task.refused")
        )
    assert rows == refusals.AUDIT_RATE
    assert stored(coordinator, SiteRefusal) == refusals.AUDIT_RATE + 5


# -- secure runs need three sites --------------------------------------------------------


@pytest.mark.parametrize("request_fields", [{"min_clients": 2}, {"min_clients": 3, "quorum": 2}])
def test_a_secure_run_below_three_sites_is_invalid_argument(coordinator, request_fields):
    quorum = request_fields.pop("quorum", None)
    config = {"encoding": TEST_ENCODING} | ({"quorum": quorum} if quorum else {})

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: secure_run(
            coordinator,
            allow_two_site_secure=False,
            config_json=json.dumps(config),
            **request_fields,
        ),
    )

    assert "at least 3" in detail and "allow_two_site_secure" in detail


def test_a_plaintext_run_of_two_sites_is_still_fine(coordinator):
    run = coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, min_clients=2)
    )
    assert run.run_id


# -- the site's own pins and policy ------------------------------------------------------


def seen(**changes) -> Observed:
    base = {
        "run_id": "r",
        "scheme": "paillier",
        "model": "tabular_mlp",
        "model_config": {"hidden": [8]},
        "lora": "",
        "participants": {"a": "1" * 32, "b": "2" * 32, "c": "3" * 32},
        "custodian": "",
        "key_fingerprint": "",
    }
    return Observed(**{**base, **changes})


@pytest.mark.parametrize(
    "change",
    [
        {"scheme": "none"},
        {"model": "image_cnn"},
        {"model_config": {"hidden": [9]}},
        {"lora": "r=4"},
        {"participants": {"a": "1" * 32, "b": "2" * 32, "c": "3" * 32, "m": "4" * 32}},
        {"participants": {"a": "1" * 32, "b": "2" * 32, "c": "9" * 32}},
        {"key_fingerprint": "other"},
        {"custodian": "m"},
    ],
)
def test_a_pinned_run_refuses_any_change_even_after_a_restart(tmp_path, change):
    pins = RunPins.load(tmp_path, "a")
    pins.check(seen(custodian="b", key_fingerprint="k"))

    restarted = RunPins.load(tmp_path, "a")
    with pytest.raises(TaskRefused) as info:
        restarted.check(seen(**({"custodian": "b", "key_fingerprint": "k"} | change)))

    assert info.value.code == "pin"
    assert (tmp_path / "a.runs.json").stat().st_mode & 0o077 == 0


def test_late_facts_are_pinned_when_they_first_appear(tmp_path):
    pins = RunPins.load(tmp_path, "a")
    pins.check(seen(participants={}))
    pins.check(seen(key_fingerprint="k"))

    pin = RunPins.load(tmp_path, "a").get("r")

    assert pin is not None and pin.key_fingerprint == "k" and len(pin.participants) == 3


def test_init_is_refused_once_the_site_trained(tmp_path):
    pins = RunPins.load(tmp_path, "a")
    pins.check(seen(), init=True)
    pins.mark_trained("r")

    with pytest.raises(TaskRefused, match="trained weights"):
        RunPins.load(tmp_path, "a").check(seen(), init=True)


def test_allow_model_sorts_registry_names_from_code_specs():
    policy = policy_from_options(allow_model=["tabular_mlp", "pkg.mod:net", "hf:/m", "site:x"])

    assert policy.allowed_models == ("tabular_mlp", "x")
    assert policy.extra_model_specs == ("pkg.mod:net", "hf:/m")
    builtins = ("tabular_mlp", "image_cnn")
    assert check_model(policy, "site:pkg.mod:net", builtins) == "pkg.mod:net"
    for refused in ("image_cnn", "pkg.mod:other", "hf:/other", "", "x"):
        with pytest.raises(TaskRefused):
            check_model(policy, refused, builtins)
    assert check_model(SitePolicy(), "image_cnn", builtins) == "image_cnn"
    with pytest.raises(ValueError, match="at least 1"):
        policy_from_options(min_aggregate_sites=0)


def test_client_policy_prints_flags_over_the_toml_section(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    config = tmp_path / "cohort.toml"
    config.write_text(
        '[client.run]\nallow_model = ["tabular_mlp", "pkg.mod:net"]\nrequire_secure = true\n'
        "min_aggregate_sites = 4\n"
    )
    runner = CliRunner()

    shown = runner.invoke(
        app, ["--config", str(config), "client", "policy", "--min-aggregate-sites", "5", "--json"]
    )
    bad = runner.invoke(app, ["client", "policy", "--allow-model", " "])

    assert shown.exit_code == 0, shown.output
    policy = json.loads(shown.stdout)
    assert policy["allowed_models"] == ["tabular_mlp"]
    assert policy["extra_model_specs"] == ["pkg.mod:net"]
    assert policy["require_secure"] is True and policy["min_aggregate_sites"] == 5
    assert bad.exit_code == 2 and "--allow-model" in bad.output
