"""Secure (Paillier) runs: key custody, bad ciphertext input, server optimisers at the sites."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from helpers import TEST_ENCODING, breast_cancer_sites, wait_for_state
from sqlalchemy import func, select
from test_federation_errors import FakeSite, expect_status

import crypto
from client.keys import task_plan_digest
from client.link import Link
from client.link import Update as SiteUpdate
from client.schemes.paillier_model import ServerOptimiser
from coordinator.schema import AuditEvent, Run, SealedKey, Update
from crypto import identity, plaintext_proof
from protos import admin_pb2, common_pb2, federation_pb2, wire

WEIGHTS = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
COUNT = 8
DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)


class SecureFakeSite(FakeSite):
    """Custodian of a one-site secure run, driven by hand so each message can be broken."""

    def __init__(self, stub) -> None:
        private, public = crypto.generate_x25519()
        # A secure run's sites carry an identity that signs their sealing key.
        self.ed25519_private, ed25519_public = identity.generate_ed25519()
        self.token = ""
        self.link = Link(
            stub,
            lambda: self.token,
            site_name="custodian",
            sign=lambda statement: identity.sign(self.ed25519_private, statement),
        )
        reply = self.link.join(
            federation_pb2.JoinRequest(
                site_name="custodian",
                x25519_public_key=public,
                ed25519_public_key=ed25519_public,
                x25519_signature=identity.sign(
                    self.ed25519_private, identity.x25519_binding("custodian", public)
                ),
            )
        )
        self.stub, self.token, self.node_id = stub, reply.node_token, reply.node_id
        self.x25519_private = private
        self.openings: dict[int, tuple[int, int]] = {}  # ciphertext → (plaintext, r)

    def make_keys(self) -> None:
        task = self.pull(federation_pb2.TASK_KIND_KEYGEN)
        self.public_key, self.private_key = crypto.generate_keypair(1024, insecure_test_size=True)
        fingerprint = crypto.key_fingerprint(self.public_key)
        bundle = federation_pb2.KeyBundle(
            task_id=task.task_id,
            run_id=task.run_id,
            key_bits=1024,
            public_key=crypto.public_key_to_bytes(self.public_key),
            key_fingerprint=fingerprint,
        )
        for participant in task.participants:
            bundle.sealed.add(
                node_id=participant.node_id,
                sealed_private_key=crypto.seal(
                    bytes(participant.x25519_public_key),
                    crypto.private_key_to_bytes(self.private_key),
                    b"test",
                ),
            )
        dealing = identity.KeyDealing(
            run_id=task.run_id,
            scheme="paillier",
            key_fingerprint=fingerprint,
            custodian="custodian",
            custodian_fingerprint=identity.fingerprint(
                identity.public_from_private(self.ed25519_private)
            ),
            recipients=identity.recipients_of(
                [(p.site_name, bytes(p.ed25519_public_key)) for p in task.participants]
            ),
            privacy_sha256=task_plan_digest(task),
        )
        bundle.statement.statement = dealing.to_bytes()
        bundle.statement.signature = identity.sign(self.ed25519_private, dealing.to_bytes())
        self.link.submit_keys(bundle)

    def ciphertexts(self, weight: int = 10, values: np.ndarray | None = None) -> list[int]:
        codec = crypto.SlotCodec(
            clip=TEST_ENCODING["clip"],
            bits=TEST_ENCODING["bits"],
            max_weight=TEST_ENCODING["max_weight"],
            key_bits=self.public_key.n.bit_length(),
        )
        values = np.zeros(COUNT) if values is None else values
        plaintexts = codec.encode(values, weight, np.random.default_rng(0))
        units: list[int] = []
        cts = crypto.encrypt_packed(self.public_key, plaintexts, workers=1, units_out=units)
        self.openings.update(zip(cts, zip(plaintexts, units, strict=True), strict=True))
        return cts

    def proof(self, task, cts: list[int]) -> bytes:
        """The update's proof of plaintext knowledge, when this site made every ciphertext."""
        if not cts or any(c not in self.openings for c in cts):
            return b""
        return plaintext_proof.prove(
            self.public_key.n,
            cts,
            [self.openings[c][0] for c in cts],
            [self.openings[c][1] for c in cts],
            run_id=task.run_id,
            round_number=task.round,
            site="custodian",
        ).to_bytes(self.public_key.n)

    def send(
        self,
        task,
        cts: list[int],
        *,
        weight: int = 10,
        key_id: str | None = None,
        proof: bytes | None = None,
        num_examples: int = 10,
    ):
        """Submit ``cts`` for ``task``, signed (under ``key_id`` when given, else the task's)."""
        payload = crypto.ciphertexts_to_bytes(cts, crypto.ciphertext_width(self.public_key))
        proof = self.proof(task, cts) if proof is None else proof
        if key_id is not None:
            task = federation_pb2.Task.FromString(task.SerializeToString())
            task.encoding.key_id = key_id
        update = SiteUpdate(
            payload, wire.PAILLIER_PACKED, num_examples=num_examples, weight=weight, proof=proof
        )
        return self.link.submit_update(task, update)


@pytest.fixture
def secure_round(coordinator):
    site = SecureFakeSite(coordinator.federation())
    admin = coordinator.admin()
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=1,
            round_deadline_seconds=60,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            allow_two_site_secure=True,
            config_json=json.dumps({"encoding": TEST_ENCODING}),
        )
    )
    site.make_keys()
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    task = site.pull(federation_pb2.TASK_KIND_TRAIN)
    return coordinator, site, run, task


def updates(coordinator) -> int:
    with coordinator.hub.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Update)))


def test_coordinator_stores_the_public_key_and_sealed_blobs_only(secure_round):
    coordinator, site, run, task = secure_round

    with coordinator.hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        sealed = session.scalars(select(SealedKey)).all()
    assert stored is not None
    assert stored.public_key == crypto.public_key_to_bytes(site.public_key)
    assert stored.key_fingerprint == crypto.key_fingerprint(site.public_key)
    assert len(sealed) == 1
    assert crypto.private_key_to_bytes(site.private_key) not in sealed[0].sealed
    assert task.encoding.key_fingerprint == stored.key_fingerprint
    shown = coordinator.admin().GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
    assert shown.key_fingerprint == stored.key_fingerprint


def test_the_weight_cap_travels_in_the_encoding_not_in_the_config(secure_round):
    _, _, _, task = secure_round

    # One site selected, max_weight 4096: the site may weigh its update up to 4096.
    assert task.encoding.weight_cap == TEST_ENCODING["max_weight"]
    assert "weight_cap" not in json.loads(task.config_json)


def test_valid_ciphertexts_are_accepted(secure_round):
    coordinator, site, _, task = secure_round

    site.send(task, site.ciphertexts())

    assert updates(coordinator) == 1


def test_ciphertext_at_or_above_n_squared_is_refused(secure_round):
    coordinator, site, _, task = secure_round
    cts = site.ciphertexts()
    cts[0] = site.public_key.nsquare + 5

    detail = expect_status(grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, cts))

    assert "ciphertext" in detail
    assert updates(coordinator) == 0


def test_ciphertext_sharing_a_factor_with_n_is_refused(secure_round):
    coordinator, site, _, task = secure_round
    cts = site.ciphertexts()
    cts[0] = site.private_key.p * 7

    expect_status(grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, cts))

    assert updates(coordinator) == 0


def test_wrong_ciphertext_count_is_refused(secure_round):
    coordinator, site, _, task = secure_round

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, site.ciphertexts() * 2)
    )

    assert "needs" in detail
    assert updates(coordinator) == 0


def test_weight_over_the_bound_is_refused(secure_round):
    coordinator, site, _, task = secure_round

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, site.ciphertexts(), weight=10**6)
    )

    assert "weight" in detail
    assert updates(coordinator) == 0


def test_update_under_another_runs_key_is_refused(secure_round):
    coordinator, site, _, task = secure_round

    detail = expect_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: site.send(task, site.ciphertexts(), key_id="0123456789abcdef"),
    )

    assert "key" in detail
    assert updates(coordinator) == 0


def test_round_is_unharmed_by_rejected_updates(secure_round):
    coordinator, site, run, task = secure_round
    with pytest.raises(grpc.RpcError):
        site.send(task, site.ciphertexts(), key_id="0123456789abcdef")

    site.send(task, site.ciphertexts(values=np.full(COUNT, 0.5)))
    task2 = site.pull(federation_pb2.TASK_KIND_TRAIN)

    assert task2.round == 2 and len(task2.aggregates) == 1
    aggregate = wire.join_chunks(
        site.stub.FetchModel(
            federation_pb2.FetchModelRequest(run_id=run.run_id, sha256=task2.aggregates[0].sha256),
            metadata=site.metadata,
        )
    )
    width = crypto.ciphertext_width(site.public_key)
    sums = crypto.decrypt_packed(
        site.private_key, crypto.ciphertexts_from_bytes(aggregate, width), workers=1
    )
    codec = crypto.SlotCodec(
        clip=16.0, bits=20, max_weight=4096, key_bits=site.public_key.n.bit_length()
    )
    np.testing.assert_allclose(codec.decode(sums, 10, COUNT), 0.5, atol=codec.step)


@pytest.mark.parametrize("proof", ["missing", "another update's", "garbage"])
def test_an_update_without_a_valid_plaintext_proof_is_refused_at_intake(secure_round, proof):
    coordinator, site, run, task = secure_round
    cts = site.ciphertexts()
    bad = {
        "missing": b"",
        "another update's": site.proof(task, site.ciphertexts(values=np.full(COUNT, 0.25))),
        "garbage": bytes(range(256)) * 3,
    }[proof]

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, cts, proof=bad)
    )

    assert "site custodian's update of round 1" in detail and "proof" in detail
    assert updates(coordinator) == 0
    with coordinator.hub.db.transaction() as session:
        rejected = session.scalars(
            select(AuditEvent.details).where(AuditEvent.kind == "update.rejected")
        ).all()
    assert any("site custodian" in json.loads(d)["reason"] for d in rejected)
    # Refused on arrival, the round is not failed: the site's proven update still counts.
    site.send(task, cts)
    assert updates(coordinator) == 1


def test_plaintext_update_in_a_secure_run_is_refused(secure_round):
    _, site, _, task = secure_round

    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.submit(task, wire.encode_tensors(WEIGHTS))
    )


def test_robust_strategy_is_refused_for_secure_runs(coordinator):
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=1,
                strategy="krum",
                secure=common_pb2.SECURE_SCHEME_PAILLIER,
            )
        ),
    )

    assert "plaintext" in detail


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedadam"])
def test_server_optimiser_is_deterministic(strategy):
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=10) for _ in range(4)]
    a, b = ServerOptimiser(strategy), ServerOptimiser(strategy)
    wa = wb = np.zeros(10)

    for delta in deltas:
        wa, wb = a.step(wa, delta), b.step(wb, delta.copy())

    np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(wa, 0)


def test_fedavgm_accumulates_momentum():
    optimiser = ServerOptimiser("fedavgm", momentum=0.5)
    delta = np.ones(3)

    w1 = optimiser.step(np.zeros(3), delta)
    w2 = optimiser.step(w1, delta)

    np.testing.assert_allclose(w2, 1.0 + 1.5)


@pytest.mark.slow
def test_secure_run_with_fedadam_keeps_every_site_identical(coordinator, agents, tmp_path):
    sites = agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=3,
            min_clients=3,
            local_epochs=2,
            lr=0.005,
            strategy="fedadam",
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            # A run completes once its audits are in: SHAP audits are tested on their own.
            config_json=json.dumps({"encoding": TEST_ENCODING, "server_lr": 0.01, "audit": False}),
        )
    )

    info = wait_for_state(admin, run.run_id, DONE, timeout=180)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    finals = [site.export_model(run.run_id) for site in sites]
    for other in finals[1:]:
        for a, b in zip(finals[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
