"""Threshold (t-of-n) secure runs over real gRPC: dealing, custody, partials, hostile parties."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import TEST_ENCODING, breast_cancer_sites, wait_for_state
from sqlalchemy import select
from test_federation_errors import expect_status
from typer.testing import CliRunner

from cli.main import app
from client import threshold_echo
from client import threshold_partials as partials_mod
from client.policy import TaskRefused
from coordinator.report import report_facts
from coordinator.schema import AuditEvent, SealedKey, ThresholdKey, ThresholdPartial
from crypto import threshold as tp
from crypto import threshold_custody as custody
from explain.report_html import render_html
from protos import admin_pb2, common_pb2, federation_pb2

DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)
runner = CliRunner()


def start_run(coordinator, threshold: int, sites: int, rounds: int = 1) -> admin_pb2.RunInfo:
    return coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=rounds,
            min_clients=sites,
            local_epochs=1,
            lr=0.01,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            threshold=threshold,
            config_json=json.dumps({"encoding": TEST_ENCODING, "audit": False}),
        )
    )


# -- starting a run -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threshold, secure, min_clients, words",
    [
        (1, common_pb2.SECURE_SCHEME_PAILLIER, 3, "at least 2"),
        (4, common_pb2.SECURE_SCHEME_PAILLIER, 3, "exceeds min_clients 3"),
        (2, common_pb2.SECURE_SCHEME_NONE, 3, "secure runs"),
    ],
)
def test_threshold_out_of_range_is_invalid_argument(
    coordinator, threshold, secure, min_clients, words
):
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=1,
                min_clients=min_clients,
                secure=secure,
                threshold=threshold,
            )
        ),
    )

    assert words in detail
    assert coordinator.admin().ListRuns(admin_pb2.ListRunsRequest()).runs == []


def test_threshold_cannot_be_smuggled_in_config(coordinator):
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=1,
                min_clients=3,
                secure=common_pb2.SECURE_SCHEME_PAILLIER,
                config_json=json.dumps({"threshold": 1}),
            )
        ),
    )

    assert "CreateRunRequest.threshold" in detail


@pytest.mark.parametrize("sampling", [{"fraction": 0.6}, {"max_clients": 6}])
def test_a_threshold_run_may_not_sample_its_holders(coordinator, sampling):
    """A round sent to fewer holders than the echo quorum could never decrypt (review H1)."""
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=1,
                min_clients=5,
                secure=common_pb2.SECURE_SCHEME_PAILLIER,
                threshold=3,
                **sampling,
            )
        ),
    )

    assert "every key holder every round" in detail
    assert coordinator.admin().ListRuns(admin_pb2.ListRunsRequest()).runs == []


def test_cli_threshold_start_and_refusal(coordinator):
    base = ["admin", "runs", "start", "--coordinator", coordinator.address, "--insecure"]
    bad = runner.invoke(
        app, [*base, "--secure", "paillier", "--min-clients", "3", "--threshold", "5"]
    )
    good = runner.invoke(
        app,
        [*base, "--secure", "paillier", "--min-clients", "3", "--threshold", "2", "--json"],
    )

    assert bad.exit_code == 2 and "exceeds min_clients" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["config"]["threshold"] == 2


# -- end to end ----------------------------------------------------------------------------


def _scan_for_secrets(coordinator, run_id: str, sites) -> None:
    """Neither a share nor a partial may sit at the coordinator in the clear."""
    hub = coordinator.hub
    files = [*coordinator.data_dir.parent.glob("coordinator.db*"), *hub.blobs.root.rglob("*")]
    stored = b"".join(p.read_bytes() for p in files if p.is_file())
    for site in sites:
        share = site.custody.threshold[run_id].share.share
        for encoding in (share.to_bytes((share.bit_length() + 7) // 8, "big"), str(share).encode()):
            assert encoding not in stored, f"{site.config.site_name}'s share is stored in the clear"
    with hub.db.transaction() as session:
        rows = list(session.scalars(select(SealedKey).where(SealedKey.run_id == run_id)))
        partials = list(
            session.scalars(select(ThresholdPartial).where(ThresholdPartial.run_id == run_id))
        )
        log = [e.details for e in session.scalars(select(AuditEvent))]
        vk = session.get(ThresholdKey, run_id)
        assert vk is not None
    assert rows and partials
    blobs = [bytes(r.sealed) for r in rows] + [bytes(p.sealed) for p in partials]
    for blob in blobs:
        for magic in (b"CTS", b"CTP"):  # key share and partial encodings (threshold_encoding)
            assert magic not in blob
    stored = b"".join(p.read_bytes() for p in hub.blobs.root.rglob("*") if p.is_file())
    for magic in (b"CTS\x01", b"CTP\x01"):
        assert magic not in stored
    assert not any("CTS" in line or "CTP" in line for line in log)


def export_all(sites, run_id: str) -> list[list[np.ndarray]]:
    """The given sites export the final model at once (each needs the others' partials)."""
    results: dict[int, object] = {}

    def export(i: int) -> None:
        try:
            results[i] = sites[i].export_model(run_id)
        except Exception as exc:  # asserted below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=export, args=(i,)) for i in range(len(sites))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    for i in range(len(sites)):
        assert i in results and not isinstance(results[i], Exception), results.get(i)
    return [results[i] for i in range(len(sites))]  # type: ignore[misc]


@pytest.mark.slow
def test_two_of_three_run_completes_and_refuses_forged_echoes(coordinator, agents, tmp_path):
    sites = agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()
    run = start_run(coordinator, threshold=2, sites=3, rounds=2)

    info = wait_for_state(admin, run.run_id, DONE, timeout=240)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    custody = info.threshold_custody
    assert (custody.threshold, custody.parties) == (2, 3)
    assert sorted(h.split(":")[1] for h in custody.holders) == ["site-0", "site-1", "site-2"]
    assert custody.key_fingerprint == info.key_fingerprint
    assert "erasure is of references" in custody.erasure
    # 2-of-3 needs all three holders' echoes (crypto.threshold_custody.echo_quorum).
    finals = export_all(sites, run.run_id)
    for a, b in zip(finals[0], finals[1], strict=True):
        np.testing.assert_array_equal(a, b)
    _scan_for_secrets(coordinator, run.run_id, sites)
    _forged_echoes_are_refused(sites, run.run_id)
    shown = runner.invoke(
        app,
        ["admin", "runs", "show", run.run_id, "--coordinator", coordinator.address, "--insecure"],
    )
    assert "2 of 3 share holders" in shown.output, shown.output
    words = " ".join(shown.output.split())  # rich wraps at the terminal's width
    assert "re-verified by the coordinator just now" in words
    assert "once 3 of 3 holders echo the same aggregate: up to 0 may be gone" in words
    facts = report_facts(coordinator.hub, run.run_id)
    reported = facts["privacy"]["key_custody"]
    assert reported["verified"] is True, reported
    assert (reported["threshold"], reported["parties"]) == (2, 3)
    assert reported["erasure"] == custody.erasure
    html = render_html(facts)
    assert "2 of 3 share holders must join to decrypt" in html
    assert reported["echo_quorum"] == 3 and "up to 0 holders may be gone" in html
    # One byte of the stored signature changed: the report no longer vouches for it.
    with coordinator.hub.db.transaction() as session:
        row = session.get(ThresholdKey, run.run_id)
        row.signature = bytes([row.signature[0] ^ 1]) + bytes(row.signature[1:])
    tampered = report_facts(coordinator.hub, run.run_id)["privacy"]["key_custody"]
    assert tampered["verified"] is False and "threshold" not in tampered
    # A coordinator that drops the threshold from a task gets no single-key decryption.
    task = sites[0].final_model_task(run.run_id)
    task.threshold = 0
    sites[0].custody.keys.pop(run.run_id)
    with pytest.raises(TaskRefused, match="dealt 2-of-n shares"):
        sites[0].run_keys(task)


def _forged_echoes_are_refused(sites, run_id: str) -> None:
    """The coordinator stores only echoes a holder signed, of its own name and the aggregate."""
    site, other = sites[0], sites[1]
    task = site.final_model_task(run_id)
    aggregate = task.aggregates[-1]
    echo = custody.EchoStatement(
        run_id, int(aggregate.round), other.config.site_name, aggregate.sha256, "00" * 32
    ).to_bytes()

    def submit(statement: bytes, signer) -> None:
        site.stub.SubmitEcho(
            federation_pb2.EchoSubmission(
                run_id=run_id,
                round=int(aggregate.round),
                statement=statement,
                signature=signer.identity.sign(statement),
            ),
            metadata=site._metadata(),
            timeout=30,
        )

    forged = expect_status(grpc.StatusCode.INVALID_ARGUMENT, lambda: submit(echo, other))
    named = expect_status(grpc.StatusCode.INVALID_ARGUMENT, lambda: submit(echo, site))
    assert "signature" in forged and "another run, round or site" in named
    own = echo.replace(other.config.site_name.encode(), site.config.site_name.encode())
    # A holder's echo of the right aggregate but another manifest never reaches the others.
    lied = expect_status(grpc.StatusCode.FAILED_PRECONDITION, lambda: submit(own, site))
    assert "manifest" in lied
    manifest = threshold_echo.manifest_of(task, int(aggregate.round), aggregate.sha256)
    true = custody.EchoStatement(
        run_id, int(aggregate.round), site.config.site_name, aggregate.sha256, manifest
    ).to_bytes()
    again = expect_status(grpc.StatusCode.ALREADY_EXISTS, lambda: submit(true, site))
    assert "already echoed" in again


@pytest.mark.slow
def test_three_of_five_names_a_wrong_partial_and_completes(
    coordinator, agents, tmp_path, monkeypatch
):
    sites = agents.start(coordinator.address, breast_cancer_sites(5), tmp_path)
    liar = sites[4].config.site_name
    honest = partials_mod.publish

    def lying(agent, run, round_number, aggregate_sha256, partial, key, part=0):
        # site-4 publishes a wrong first value under an honest proof; it keeps the truth.
        if agent.identity.site_name == liar:
            n_square = key.verification_keys.n_square
            wrong = (partial.values[0] * 2 % n_square, *partial.values[1:])
            partial = tp.PartialDecryption(partial.index, wrong, partial.proof)
        else:
            time.sleep(2.0)  # the liar publishes first, so the honest sites judge its partial
        honest(agent, run, round_number, aggregate_sha256, partial, key, part=part)

    monkeypatch.setattr(partials_mod, "publish", lying)
    admin = coordinator.admin()
    run = start_run(coordinator, threshold=3, sites=5, rounds=2)

    info = wait_for_state(admin, run.run_id, DONE, timeout=300)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    with coordinator.hub.db.transaction() as session:
        named = [
            json.loads(e.details)
            for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "partial.refused"))
        ]
    assert named and all(d["site"] == liar for d in named)
    assert all("proof of correct decryption fails" in d["reason"] for d in named)
    # A site gone before the final decryption: 3-of-5's echo quorum is 4, so four decrypt.
    finals = export_all(sites[:4], run.run_id)
    for other in finals[1:]:
        for a, b in zip(finals[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    with coordinator.hub.db.transaction() as session:
        echoed = session.scalars(
            select(AuditEvent.details).where(AuditEvent.kind == "echo.published")
        ).all()
    final = [json.loads(d) for d in echoed if json.loads(d)["round"] == 2]
    assert sorted(d["site"] for d in final) == [f"site-{i}" for i in range(4)]
