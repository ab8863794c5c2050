"""A breached coordinator against unmodified site agents: each attack of issue 11 is refused.

The coordinator here is tests/fake_coordinator.py, a real gRPC server on 127.0.0.1 that
sends whatever a test scripts. The sites are real SiteAgents with real trainers, real
Paillier keys and real Ed25519 identities. Each test shows the refusal (what the operator
would read) and that nothing leaked: no code ran (sentinel file absent), no plaintext or
extra update was sent, no key was sealed to a key the attacker holds, no agent died.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import gmpy2
import numpy as np
import pytest
import torch
from fake_coordinator import FakeCoordinator, Peer, RunKey, config_json, participant
from helpers import TEST_ENCODING, breast_cancer_sites
from torch import nn

import crypto
import models
from client.agent import AgentConfig, SiteAgent
from client.model_trainer import ModelTrainer
from client.policy import SitePolicy
from crypto import identity, plaintext_proof
from protos import common_pb2, federation_pb2, wire

RUN = "run-under-attack"
SECURE = common_pb2.SECURE_SCHEME_PAILLIER
PLAIN = common_pb2.SECURE_SCHEME_NONE


class Sites:
    """Agents running against the fake coordinator, stopped and closed at teardown."""

    def __init__(self, fake: FakeCoordinator, root: Path) -> None:
        self.fake, self.root = fake, root
        self.stop = threading.Event()
        self.started: list[tuple[SiteAgent, threading.Thread]] = []

    def start(
        self,
        name: str = "hospital-a",
        *,
        trainer: object | None = None,
        policy: SitePolicy | None = None,
        peers: tuple[Peer, ...] = (),
    ) -> SiteAgent:
        agent = SiteAgent(
            AgentConfig(
                self.fake.address,
                name,
                self.root / name,
                poll_seconds=0.5,
                encrypt_workers=1,
                max_backoff_seconds=0.5,
                policy=policy or SitePolicy(),
            ),
            trainer or breast_cancer_sites(1)[0],  # type: ignore[arg-type]
        )
        # This site's people pinned these peers' fingerprints out of band.
        for peer in peers:
            agent.peers.pin(peer.name, peer.fingerprint)
        thread = threading.Thread(target=agent.run, args=(self.stop,), daemon=True)
        thread.start()
        self.started.append((agent, thread))
        return agent

    def alive(self) -> bool:
        return all(thread.is_alive() for _, thread in self.started)

    def close(self) -> None:
        self.stop.set()
        for agent, thread in self.started:
            thread.join(timeout=30)
            agent.close()


@pytest.fixture
def fake() -> Iterator[FakeCoordinator]:
    coordinator = FakeCoordinator()
    coordinator.start()
    yield coordinator
    coordinator.stop()


@pytest.fixture
def sites(fake: FakeCoordinator, tmp_path: Path) -> Iterator[Sites]:
    pool = Sites(fake, tmp_path)
    yield pool
    pool.close()


def refused(fake: FakeCoordinator, count: int = 1) -> list[federation_pb2.TaskRefusal]:
    fake.wait_for(lambda seen: len(seen.refusals) >= count)
    return fake.seen.refusals


def still_polling(fake: FakeCoordinator) -> None:
    """The agent survived: it keeps asking for work after the refusal."""
    polls = fake.seen.polls
    fake.wait_for(lambda seen: seen.polls >= polls + 2)


def initial_weights(fake: FakeCoordinator) -> str:
    """The breast-cancer MLP's fresh weights, as the run's round-0 model."""
    weights = breast_cancer_sites(1)[0].get_parameters({})
    return fake.put_blob(wire.encode_tensors([np.asarray(w, np.float32) for w in weights]))


def plaintext_train(fake: FakeCoordinator, round_number: int = 1, run: str = RUN, **config):
    return federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_TRAIN,
        run_id=run,
        round=round_number,
        secure=PLAIN,
        model_sha256=initial_weights(fake),
        config_json=config_json(**config),
    )


# -- 1. code execution at every site ----------------------------------------------------


def tiny_factory(width: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2))


def stack_site() -> ModelTrainer:
    """A site that trains through the model stack: it builds whatever model a run names."""
    return ModelTrainer(
        models.make_credit_default(60, seed=0), site_name="bank-a", device=torch.device("cpu")
    )


@pytest.mark.parametrize(
    "model, model_config",
    [
        ("subprocess:run", {"args": ["touch", "{sentinel}"]}),
        ("site:subprocess:run", {"args": ["touch", "{sentinel}"]}),
        ("os:system", {"command": "touch {sentinel}"}),
        ("hf:{tmp}", {"trust_remote_code": True}),
    ],
)
@pytest.mark.parametrize("kind", [federation_pb2.TASK_KIND_INIT, federation_pb2.TASK_KIND_TRAIN])
def test_a_model_that_imports_code_is_never_built(fake, sites, tmp_path, model, model_config, kind):
    sentinel = tmp_path / "code-ran"
    fill = {"sentinel": str(sentinel), "tmp": str(tmp_path)}
    model = model.format(**fill)
    model_config = {
        k: ([a.format(**fill) for a in v] if isinstance(v, list) else v.format(**fill))
        if not isinstance(v, bool)
        else v
        for k, v in model_config.items()
    }
    sites.start("bank-a", trainer=stack_site())
    fake.give(
        federation_pb2.Task(
            kind=kind,
            run_id=RUN,
            round=0 if kind == federation_pb2.TASK_KIND_INIT else 1,
            secure=PLAIN,
            model_sha256=fake.put_blob(b"unused"),
            config_json=config_json(model, model_config=model_config),
        )
    )

    [refusal] = refused(fake)

    assert refusal.code == "policy" and "did not list it" in refusal.reason
    assert not sentinel.exists()
    assert fake.seen.updates == []
    still_polling(fake)


@pytest.mark.parametrize("prefix", ["", "site:"])
def test_a_code_spec_the_site_listed_is_built(fake, sites, prefix):
    spec = f"{__name__}:tiny_factory"
    sites.start(
        "bank-a", trainer=stack_site_with(spec), policy=SitePolicy(extra_model_specs=(spec,))
    )
    fake.give(
        federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_INIT,
            run_id=RUN,
            secure=PLAIN,
            config_json=config_json(prefix + spec, model_config={"width": 5}),
        )
    )

    fake.wait_for(lambda seen: len(seen.updates) == 1)

    shapes = [a.shape for a in wire.decode_tensors(fake.seen.updates[0][1])]
    assert (5, 4) in shapes and fake.seen.refusals == []


def stack_site_with(spec: str) -> ModelTrainer:
    return ModelTrainer(
        models.make_credit_default(60, seed=0),
        site_name="bank-a",
        device=torch.device("cpu"),
        trusted_specs=(spec,),
    )


def test_a_built_in_model_outside_the_sites_list_is_refused(fake, sites):
    sites.start(policy=SitePolicy(allowed_models=("image_cnn",)))
    fake.give(plaintext_train(fake))

    [refusal] = refused(fake)

    assert refusal.code == "policy" and "tabular_mlp" in refusal.reason
    assert fake.seen.updates == []


# -- 2. the private key (S1's custodian and key-opening rules) ---------------------------


def test_the_custodian_never_seals_the_key_to_an_unpinned_participant(fake, sites):
    peers = (Peer.make("hospital-b"), Peer.make("hospital-c"))
    agent = sites.start("hospital-a", peers=peers)
    mallory = Peer.make("mallory")  # the coordinator's own identity, pinned by nobody
    _, mallory_x25519 = crypto.generate_x25519()
    task = federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_KEYGEN,
        run_id=RUN,
        secure=SECURE,
        custodian="hospital-a",
        encoding=RunKey.make(TEST_ENCODING).params(),
        config_json=config_json(),
    )
    task.encoding.key_bits = 1024
    task.participants.append(
        participant("hospital-a", agent.identity.ed25519_public, agent.identity.x25519_public)
    )
    # The honest peers' sealing keys carry their identities' signatures; mallory's carries
    # mallory's own, valid signature: only the pin tells them apart.
    for peer in (*peers, mallory):
        _, x25519 = crypto.generate_x25519()
        if peer is mallory:
            x25519 = mallory_x25519
        entry = participant(peer.name, peer.public, x25519)
        entry.x25519_signature = identity.sign(
            peer.private, identity.x25519_binding(peer.name, x25519)
        )
        task.participants.append(entry)
    fake.give(task)

    fake.wait_for(lambda seen: seen.refusals or seen.key_bundles, timeout=60)

    # The key was dealt (three pinned sites remain), and never to mallory.
    [bundle] = fake.seen.key_bundles
    sealed_to = {s.node_id for s in bundle.sealed}
    assert sealed_to == {"node-hospital-a", "node-hospital-b", "node-hospital-c"}


def test_a_site_never_deals_or_accepts_a_key_below_its_minimum_size(fake, sites):
    peers = (Peer.make("hospital-b"), Peer.make("hospital-c"))
    sites.start("hospital-a", peers=peers, policy=SitePolicy(min_key_bits=2048))
    task = federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_KEYGEN,
        run_id=RUN,
        secure=SECURE,
        custodian="hospital-a",
        encoding=RunKey.make(TEST_ENCODING).params(),
        config_json=config_json(),
    )
    task.encoding.key_bits = 1024  # the coordinator asks for a weak key
    agent = sites.started[-1][0]
    task.participants.append(
        participant("hospital-a", agent.identity.ed25519_public, agent.identity.x25519_public)
    )
    for peer in peers:
        _, x25519 = crypto.generate_x25519()
        entry = participant(peer.name, peer.public, x25519)
        entry.x25519_signature = identity.sign(
            peer.private, identity.x25519_binding(peer.name, x25519)
        )
        task.participants.append(entry)

    fake.give(task)

    [refusal] = refused(fake)
    assert refusal.code == "policy" and "1024-bit key" in refusal.reason
    assert fake.seen.key_bundles == []


def test_a_key_the_coordinator_made_itself_is_never_used(fake, sites):
    agent = sites.start("hospital-a", peers=(Peer.make("hospital-b"), Peer.make("hospital-c")))
    key = RunKey.make(TEST_ENCODING)  # made by the coordinator; no custodian signed it
    task = federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_TRAIN,
        run_id=RUN,
        round=1,
        secure=SECURE,
        encoding=key.params(),
        sealed_private_key=key.sealed_for(agent.identity.x25519_public, RUN),
        model_sha256=initial_weights(fake),
        config_json=config_json(),
    )
    fake.give(task)

    fake.wait_for(lambda seen: seen.refusals or seen.updates, timeout=60)

    assert fake.seen.updates == []


# -- 3. plaintext updates ----------------------------------------------------------------


def test_a_secure_run_switched_to_plaintext_is_refused(fake, sites):
    sites.start()
    fake.give(
        federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_INIT, run_id=RUN, secure=SECURE, config_json=config_json()
        )
    )
    fake.wait_for(lambda seen: len(seen.updates) == 1)  # fresh weights: no data in them
    fake.give(plaintext_train(fake))

    [refusal] = refused(fake)

    assert refusal.code == "pin" and "paillier" in refusal.reason
    assert len(fake.seen.updates) == 1  # the INIT's fresh weights only; no plaintext update
    still_polling(fake)


def test_an_init_after_training_is_refused(fake, sites):
    sites.start()
    fake.give(plaintext_train(fake))
    fake.wait_for(lambda seen: len(seen.updates) == 1)
    fake.give(
        federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_INIT, run_id=RUN, secure=PLAIN, config_json=config_json()
        )
    )

    [refusal] = refused(fake)

    assert refusal.code == "pin" and "trained weights" in refusal.reason
    assert len(fake.seen.updates) == 1


def test_an_init_for_another_run_after_training_sends_fresh_weights_only(fake, sites):
    # INIT run B, train run A, INIT run B again: the last INIT must not be A's trained model.
    sites.start()
    init_b = federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_INIT, run_id="run-b", secure=PLAIN, config_json=config_json()
    )
    fake.give(init_b)
    fake.wait_for(lambda seen: len(seen.updates) == 1)
    fake.give(plaintext_train(fake))
    fake.wait_for(lambda seen: len(seen.updates) == 2)
    fake.give(
        federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_INIT,
            run_id="run-b",
            task_id="init-b-again",
            secure=PLAIN,
            config_json=config_json(),
        )
    )

    fake.wait_for(lambda seen: len(seen.updates) == 3 or seen.refusals)

    first, _, last = (wire.decode_tensors(payload) for _, payload in fake.seen.updates[:3])
    assert all(np.array_equal(a, b) for a, b in zip(first, last, strict=True))


def test_a_config_value_of_the_wrong_type_fails_the_task_not_the_agent(fake, sites):
    sites.start()
    fake.give(plaintext_train(fake, update_quantisation={"bits": None}))

    still_polling(fake)

    assert sites.alive()
    assert fake.seen.updates == []


def test_a_changed_model_is_refused_within_a_run(fake, sites):
    sites.start()
    fake.give(plaintext_train(fake))
    fake.wait_for(lambda seen: len(seen.updates) == 1)
    fake.give(plaintext_train(fake, round_number=2, model_config={"hidden": [4]}))

    [refusal] = refused(fake)

    assert refusal.code == "pin" and "model" in refusal.reason


def test_require_secure_refuses_a_plaintext_run(fake, sites):
    sites.start(policy=SitePolicy(require_secure=True))
    fake.give(plaintext_train(fake))

    [refusal] = refused(fake)

    assert refusal.code == "policy" and "--require-secure" in refusal.reason
    assert fake.seen.updates == []


# -- 4. an "aggregate" of one, and 5. one bad site -----------------------------------------


class SecureRun:
    """A scripted secure run at round 2: the key dealt by a pinned custodian, peers pinned."""

    def __init__(self, fake: FakeCoordinator, sites: Sites, *, extra_peers: int = 0) -> None:
        self.fake = fake
        self.key = RunKey.make(TEST_ENCODING)
        self.peers = [Peer.make(f"hospital-{c}") for c in "bcd"[: 3 + extra_peers]]
        self.agent = sites.start("hospital-a", peers=tuple(self.peers))
        self.initial = initial_weights(fake)
        self.count = sum(
            int(np.prod(a.shape)) for a in wire.decode_tensors(fake.blobs[self.initial])
        )

    def participants(self) -> list[federation_pb2.Participant]:
        me = participant("hospital-a", self.agent.identity.ed25519_public)
        return [me] + [participant(p.name, p.public) for p in self.peers]

    def update(self, peer: Peer, weight: int = 10, *, plaintexts: list[int] | None = None):
        if plaintexts is None:
            values = np.full(self.count, 0.01)
            plaintexts = self.key.codec().encode(values, weight, np.random.default_rng(0))
        payload, proof = self.key.encrypt_proven(
            plaintexts, run_id=RUN, round_number=1, site=peer.name
        )
        signature = peer.sign_update(
            run_id=RUN,
            round_number=1,
            payload=payload,
            weight=weight,
            key_id="run-key",
            proof=proof,
        )
        self.fake.put_blob(payload)
        return payload, federation_pb2.Contribution(
            node_id=f"node-{peer.name}",
            site_name=peer.name,
            payload_sha256=wire.sha256_hex(payload),
            weight=weight,
            payload_size=len(payload),
            signature=signature,
            plaintext_proof=proof,
        )

    def task(self, aggregate: bytes, contributions, total_weight: int | None = None):
        total = sum(c.weight for c in contributions) if total_weight is None else total_weight
        task = federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_TRAIN,
            run_id=RUN,
            round=2,
            secure=SECURE,
            custodian="hospital-b",
            encoding=self.key.params(),
            sealed_private_key=self.key.sealed_for(self.agent.identity.x25519_public, RUN),
            model_sha256=self.initial,
            config_json=config_json(),
        )
        task.encoding.weight_cap = 100
        task.participants.extend(self.participants())
        task.key_statement.CopyFrom(
            self.key.dealing(
                RUN,
                self.peers[0],
                [("hospital-a", self.agent.identity.fingerprint)]
                + [(p.name, p.fingerprint) for p in self.peers],
            )
        )
        ref = task.aggregates.add(
            round=1,
            sha256=self.fake.put_blob(aggregate),
            total_weight=total,
            num_updates=len(contributions),
            count=self.count,
        )
        ref.contributions.extend(contributions)
        return self.fake.give(task)


def test_an_honest_aggregate_of_three_pinned_sites_is_decrypted_and_trained_on(fake, sites):
    run = SecureRun(fake, sites)
    payloads, contributions = zip(*(run.update(p) for p in run.peers), strict=True)
    run.task(run.key.product(payloads), list(contributions))

    fake.wait_for(lambda seen: len(seen.updates) == 1, timeout=60)

    header, payload = fake.seen.updates[0]
    assert fake.seen.refusals == []
    assert header.encoding == wire.PAILLIER_PACKED
    # The site signed what it sent: the coordinator can relay it, never alter it.
    identity.verify(
        run.agent.identity.ed25519_public,
        identity.update_statement(
            run_id=RUN,
            round_number=2,
            site_name="hospital-a",
            payload_sha256=wire.sha256_hex(payload),
            weight=header.weight,
            key_id="run-key",
            encoding=wire.PAILLIER_PACKED,
            proof_sha256=hashlib.sha256(header.plaintext_proof).hexdigest(),
        ),
        header.signature,
    )
    # ... with a proof that it knows what it encrypted (what every other site checks).
    plaintext_proof.verify(
        run.key.public.n,
        crypto.ciphertexts_from_bytes(payload, run.key.width),
        plaintext_proof.PlaintextProof.from_bytes(header.plaintext_proof, run.key.public.n),
        run_id=RUN,
        round_number=2,
        site="hospital-a",
    )


def _attack(run: SecureRun, attack: str):
    """The aggregate and manifest a coordinator would forge for ``attack``."""
    honest = [run.update(p) for p in run.peers]
    payloads = [p for p, _ in honest]
    contributions = [c for _, c in honest]
    if attack == "one site":
        return payloads[0], contributions[:1], None
    if attack == "one site listed three times":
        return run.key.product([payloads[0]] * 3), [contributions[0]] * 3, None
    if attack == "a site nobody pinned":
        mallory = Peer.make("mallory")
        payload, contribution = run.update(mallory)
        return run.key.product(payloads[:2] + [payload]), contributions[:2] + [contribution], None
    if attack == "a forged signature":
        contributions[2].signature = bytes(64)
        return run.key.product(payloads), contributions, None
    if attack == "a signature for another round":
        payload, contribution = payloads[2], contributions[2]
        statement = identity.update_statement(
            run_id=RUN,
            round_number=7,
            site_name=run.peers[2].name,
            payload_sha256=contribution.payload_sha256,
            weight=contribution.weight,
            key_id="run-key",
            encoding=wire.PAILLIER_PACKED,
        )
        contribution.signature = identity.sign(run.peers[2].private, statement)
        return run.key.product(payloads), contributions, None
    if attack == "an update that cancels another":
        # Review H1: colluding hospital-d, shown hospital-c's update, submits its inverse,
        # signed; the product is hospital-b's update alone. It cannot prove the inverse.
        n_square = run.key.public.nsquare
        inverse = [
            int(gmpy2.invert(c, n_square))
            for c in crypto.ciphertexts_from_bytes(payloads[1], run.key.width)
        ]
        forged = crypto.ciphertexts_to_bytes(inverse, run.key.width)
        run.fake.put_blob(forged)
        proof = contributions[2].plaintext_proof  # its own proof, for its honest update
        contributions[2].payload_sha256 = wire.sha256_hex(forged)
        contributions[2].signature = run.peers[2].sign_update(
            run_id=RUN, round_number=1, payload=forged, weight=10, key_id="run-key", proof=proof
        )
        return run.key.product([payloads[0], payloads[1], forged]), contributions, None
    if attack == "wrong total weight":
        return run.key.product(payloads), contributions, 10
    if attack == "a product of fewer updates than listed":
        return run.key.product(payloads[:1] * 3), contributions, None
    raise AssertionError(attack)


@pytest.mark.parametrize(
    "attack",
    [
        "one site",
        "one site listed three times",
        "a site nobody pinned",
        "a forged signature",
        "a signature for another round",
        "wrong total weight",
        "a product of fewer updates than listed",
        "an update that cancels another",
    ],
)
def test_an_aggregate_that_does_not_verify_is_never_decrypted(fake, sites, attack):
    run = SecureRun(fake, sites)
    aggregate, contributions, total = _attack(run, attack)
    run.task(aggregate, contributions, total)

    [refusal] = refused(fake)

    assert refusal.code == "verify", refusal.reason
    if attack == "an update that cancels another":
        assert "site hospital-d did not prove it knows the plaintexts" in refusal.reason
    assert fake.seen.updates == []
    still_polling(fake)


def test_a_site_that_asks_for_more_sites_refuses_three(fake, sites):
    run = SecureRun(fake, sites)
    run.agent.config.policy = SitePolicy(min_aggregate_sites=4)
    payloads, contributions = zip(*(run.update(p) for p in run.peers), strict=True)
    run.task(run.key.product(payloads), list(contributions))

    [refusal] = refused(fake)

    assert refusal.code == "verify" and "at least 4 sites" in refusal.reason


def test_an_aggregate_that_overflows_fails_the_task_and_the_agent_lives_on(fake, sites):
    run = SecureRun(fake, sites)
    codec = run.key.codec()
    plaintexts = [(1 << (codec.slot_bits * codec.slots_per_plaintext)) - 1] * codec.num_plaintexts(
        run.count
    )
    honest = [run.update(p) for p in run.peers[:2]]
    bad = run.update(run.peers[2], plaintexts=plaintexts)  # a pinned but malicious site
    payloads = [p for p, _ in honest] + [bad[0]]
    run.task(run.key.product(payloads), [c for _, c in honest] + [bad[1]])

    [refusal] = refused(fake)

    assert refusal.code == "decode" and "round 1" in refusal.reason
    assert fake.seen.updates == []
    # Still alive, and still working: a task of another run is done.
    fake.give(plaintext_train(fake, run="another-run"))
    fake.wait_for(lambda seen: len(seen.updates) == 1, timeout=60)
    assert sites.alive()
