"""Site identities: a coordinator relays keys and statements, sites trust only what they pinned."""

from __future__ import annotations

import json
import queue
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from helpers import TEST_ENCODING, breast_cancer_sites, wait_for
from sqlalchemy import select

import crypto
from client.agent import AgentConfig, SiteAgent
from client.custody import SiteIdentity
from client.keys import trusted_recipients
from client.peers import PeerStore, load_peers_file
from client.policy import SitePolicy, TaskRefused
from client.run_keys import key_context
from coordinator.schema import AuditEvent, Run, SealedKey
from crypto import identity
from protos import admin_pb2, common_pb2, federation_pb2, federation_pb2_grpc, serde

# -- helpers ------------------------------------------------------------------------------


@dataclass
class RawIdentity:
    """A hand-made site identity, to build Join requests and statements by hand."""

    name: str
    ed25519_private: bytes = b""
    ed25519_public: bytes = b""
    x25519_private: bytes = b""
    x25519_public: bytes = b""

    def __post_init__(self) -> None:
        self.ed25519_private, self.ed25519_public = identity.generate_ed25519()
        self.x25519_private, self.x25519_public = crypto.generate_x25519()

    @property
    def fingerprint(self) -> str:
        return identity.fingerprint(self.ed25519_public)

    def binding(self, x25519: bytes | None = None) -> bytes:
        key = self.x25519_public if x25519 is None else x25519
        return identity.sign(self.ed25519_private, identity.x25519_binding(self.name, key))

    def join_request(self, **overrides: object) -> federation_pb2.JoinRequest:
        fields: dict[str, object] = {
            "site_name": self.name,
            "x25519_public_key": self.x25519_public,
            "ed25519_public_key": self.ed25519_public,
            "x25519_signature": self.binding(),
        }
        fields.update(overrides)
        return federation_pb2.JoinRequest(**fields)  # type: ignore[arg-type]

    def participant(self, node_id: str = "", **overrides: object) -> federation_pb2.Participant:
        fields: dict[str, object] = {
            "node_id": node_id or f"node-{self.name}",
            "site_name": self.name,
            "x25519_public_key": self.x25519_public,
            "ed25519_public_key": self.ed25519_public,
            "x25519_signature": self.binding(),
        }
        fields.update(overrides)
        return federation_pb2.Participant(**fields)  # type: ignore[arg-type]


def expect_refusal(code: grpc.StatusCode, call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def audit_kinds(coordinator) -> list[str]:  # type: ignore[no-untyped-def]
    with coordinator.hub.db.transaction() as session:
        return list(session.scalars(select(AuditEvent.kind).order_by(AuditEvent.seq)))


def site_agent(state_dir: Path, name: str, address: str = "127.0.0.1:9", **config) -> SiteAgent:  # type: ignore[no-untyped-def]
    # The client is never asked to train in these tests: only keys are exercised.
    return SiteAgent(AgentConfig(address, name, state_dir / name, **config), client=None)  # type: ignore[arg-type]


# -- join ---------------------------------------------------------------------------------


def test_rejoin_with_another_ed25519_key_is_refused_and_audited(coordinator):
    stub = coordinator.federation()
    site = RawIdentity("hospital-a")
    first = stub.Join(site.join_request())
    impostor = RawIdentity("hospital-a")

    expect_refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.Join,
        impostor.join_request(node_token=first.node_token),
    )
    # Presenting no identity at all is the same refusal: the node's identity is for life.
    expect_refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.Join,
        federation_pb2.JoinRequest(site_name="hospital-a", node_token=first.node_token),
    )

    assert audit_kinds(coordinator).count("site.identity_refused") == 2
    again = stub.Join(site.join_request(node_token=first.node_token))
    assert again.node_id == first.node_id


def test_sealing_key_not_signed_by_the_identity_is_refused_at_join(coordinator):
    stub = coordinator.federation()
    site = RawIdentity("hospital-a")
    _, attacker_x25519 = crypto.generate_x25519()

    expect_refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Join,
        site.join_request(x25519_public_key=attacker_x25519),
    )
    # A binding signed for another site name does not carry over either.
    wrong_name = identity.sign(
        site.ed25519_private, identity.x25519_binding("hospital-b", site.x25519_public)
    )
    expect_refusal(
        grpc.StatusCode.INVALID_ARGUMENT, stub.Join, site.join_request(x25519_signature=wrong_name)
    )
    assert "site.joined" not in audit_kinds(coordinator)


def test_sealing_key_changes_on_rejoin_only_signed_by_the_same_identity(coordinator):
    stub = coordinator.federation()
    site = RawIdentity("hospital-a")
    first = stub.Join(site.join_request())
    _, new_x25519 = crypto.generate_x25519()

    expect_refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Join,
        site.join_request(node_token=first.node_token, x25519_public_key=new_x25519),
    )
    stub.Join(
        site.join_request(
            node_token=first.node_token,
            x25519_public_key=new_x25519,
            x25519_signature=site.binding(new_x25519),
        )
    )

    from coordinator.schema import Node

    with coordinator.hub.db.transaction() as session:
        node = session.get(Node, first.node_id)
        assert node is not None
        assert bytes(node.x25519_public_key) == new_x25519
        assert bytes(node.ed25519_public_key) == site.ed25519_public
    assert "site.key_changed" in audit_kinds(coordinator)


def test_second_node_under_a_site_name_with_a_new_identity_is_audited(coordinator):
    stub = coordinator.federation()
    stub.Join(RawIdentity("hospital-a").join_request())
    stub.Join(RawIdentity("hospital-a").join_request())

    kinds = audit_kinds(coordinator)
    assert kinds.count("site.joined") == 2
    assert kinds.count("site.key_changed") == 1


# -- the custodian seals only to pinned peers ---------------------------------------------


class FakeCoordinator(federation_pb2_grpc.FederationServicer):
    """A malicious coordinator on 127.0.0.1: hands out scripted tasks, records what comes back."""

    def __init__(self) -> None:
        self.tasks: queue.Queue[federation_pb2.Task] = queue.Queue()
        self.bundles: list[federation_pb2.KeyBundle] = []
        self.refusals: list[federation_pb2.TaskRefusal] = []
        self.answered = threading.Event()

    def Join(self, request, context):
        return federation_pb2.JoinReply(node_id=f"node-{request.site_name}", node_token="t")

    def PullTask(self, request, context):
        try:
            return self.tasks.get(timeout=0.2)
        except queue.Empty:
            return federation_pb2.Task(kind=federation_pb2.TASK_KIND_NONE)

    def SubmitKeys(self, request, context):
        self.bundles.append(request)
        self.answered.set()
        return federation_pb2.SubmitReply(id="k")

    def RefuseTask(self, request, context):
        self.refusals.append(request)
        self.answered.set()
        return federation_pb2.SubmitReply(id="r")


@dataclass
class FakeFederation:
    servicer: FakeCoordinator
    address: str
    server: grpc.Server
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, agent: SiteAgent) -> None:
        thread = threading.Thread(target=agent.run, args=(self.stop,), daemon=True)
        thread.start()
        self.threads.append(thread)


@pytest.fixture
def fake_federation():
    servicer = FakeCoordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    federation_pb2_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake = FakeFederation(servicer, f"127.0.0.1:{port}", server)
    yield fake
    fake.stop.set()
    for thread in fake.threads:
        thread.join(timeout=30)
    server.stop(0)


def keygen_task(run_id: str, participants: list[federation_pb2.Participant]) -> federation_pb2.Task:
    return federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_KEYGEN,
        task_id=f"keygen-{run_id}",
        run_id=run_id,
        secure=common_pb2.SECURE_SCHEME_PAILLIER,
        encoding=common_pb2.EncodingParams(key_bits=1024),
        participants=participants,
    )


def test_custodian_seals_only_to_pinned_peers_with_signed_sealing_keys(fake_federation, tmp_path):
    custodian = site_agent(tmp_path, "custodian", fake_federation.address)
    good = [RawIdentity("site-b"), RawIdentity("site-c")]
    unpinned = RawIdentity("site-d")
    swapped = RawIdentity("site-e")  # pinned, but the coordinator relays its own X25519 key
    forged = RawIdentity("site-f")  # pinned name, identity made by the coordinator
    for peer in (*good, swapped):
        custodian.peers.pin(peer.name, peer.fingerprint)
    custodian.peers.pin("site-f", RawIdentity("site-f").fingerprint)
    attacker_private, attacker_public = crypto.generate_x25519()
    me = custodian.identity
    participants = [
        federation_pb2.Participant(
            node_id="node-custodian",
            site_name="custodian",
            x25519_public_key=me.x25519_public,
            ed25519_public_key=me.ed25519_public,
            x25519_signature=me.x25519_signature(),
        ),
        *(peer.participant() for peer in good),
        unpinned.participant(),
        swapped.participant(x25519_public_key=attacker_public),
        forged.participant(
            x25519_public_key=attacker_public, x25519_signature=forged.binding(attacker_public)
        ),
    ]
    fake_federation.servicer.tasks.put(keygen_task("run-1", participants))

    fake_federation.run(custodian)
    assert fake_federation.servicer.answered.wait(60)

    assert not fake_federation.servicer.refusals
    (bundle,) = fake_federation.servicer.bundles
    assert sorted(s.node_id for s in bundle.sealed) == [
        "node-custodian",
        "node-site-b",
        "node-site-c",
    ]
    context = key_context("run-1", bundle.key_fingerprint)
    for sealed in bundle.sealed:
        with pytest.raises(ValueError):
            crypto.open_sealed(attacker_private, bytes(sealed.sealed_private_key), context)
    # The statement is the custodian's, names exactly the sites sealed to, and verifies.
    raw = bytes(bundle.statement.statement)
    identity.verify(me.ed25519_public, raw, bytes(bundle.statement.signature))
    dealing = identity.KeyDealing.from_bytes(raw)
    assert dealing.run_id == "run-1"
    assert dealing.key_fingerprint == bundle.key_fingerprint
    assert {(r.site, r.fingerprint) for r in dealing.recipients} == {
        ("custodian", me.fingerprint),
        *((p.name, p.fingerprint) for p in good),
    }


def test_custodian_refuses_to_deal_to_fewer_sites_than_its_policy(fake_federation, tmp_path):
    custodian = site_agent(tmp_path, "custodian", fake_federation.address)
    peer = RawIdentity("site-b")
    custodian.peers.pin(peer.name, peer.fingerprint)
    _, attacker_public = crypto.generate_x25519()
    me = custodian.identity
    participants = [
        federation_pb2.Participant(
            node_id="node-custodian",
            site_name="custodian",
            x25519_public_key=me.x25519_public,
            ed25519_public_key=me.ed25519_public,
            x25519_signature=me.x25519_signature(),
        ),
        peer.participant(),
        # A third "site" only the coordinator knows: not pinned, so not counted.
        RawIdentity("site-x").participant(x25519_public_key=attacker_public),
    ]
    fake_federation.servicer.tasks.put(keygen_task("run-2", participants))

    fake_federation.run(custodian)
    assert fake_federation.servicer.answered.wait(60)

    assert not fake_federation.servicer.bundles
    (refusal,) = fake_federation.servicer.refusals
    assert refusal.code == "policy"
    assert "only 2 trusted sites" in refusal.reason


def test_a_site_named_twice_is_sealed_to_neither_time(tmp_path):
    me = SiteIdentity.load_or_create(tmp_path, "custodian")
    peer = RawIdentity("site-b")
    peers = PeerStore.load(tmp_path, "custodian")
    peers.pin(peer.name, peer.fingerprint)

    chosen, refused = trusted_recipients([peer.participant(), peer.participant("n2")], me, peers)

    assert chosen == []
    assert len(refused) == 2


# -- a site opens a run key only under a trusted custodian's statement --------------------


@dataclass
class DealtKey:
    """A run key dealt by ``custodian`` to ``site`` (a real SiteAgent), as a task carries it."""

    site: SiteAgent
    custodian: RawIdentity
    public_key: object
    private_key: object
    fingerprint: str

    def statement(self, **overrides: object) -> bytes:
        fields: dict[str, object] = {
            "run_id": "run-9",
            "scheme": "paillier",
            "key_fingerprint": self.fingerprint,
            "custodian": self.custodian.name,
            "custodian_fingerprint": self.custodian.fingerprint,
            "recipients": (
                identity.Recipient(self.custodian.name, self.custodian.fingerprint),
                identity.Recipient(self.site.config.site_name, self.site.identity.fingerprint),
            ),
        }
        fields.update(overrides)
        return identity.KeyDealing(**fields).to_bytes()  # type: ignore[arg-type]

    def task(
        self, statement: bytes | None = None, signer: bytes | None = None
    ) -> federation_pb2.Task:
        raw = self.statement() if statement is None else statement
        signature = identity.sign(signer or self.custodian.ed25519_private, raw) if raw else b""
        return federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_TRAIN,
            task_id="t",
            run_id="run-9",
            round=1,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            encoding=common_pb2.EncodingParams(
                public_key=crypto.public_key_to_bytes(self.public_key),
                key_fingerprint=self.fingerprint,
            ),
            sealed_private_key=crypto.seal(
                self.site.identity.x25519_public,
                crypto.private_key_to_bytes(self.private_key),
                key_context("run-9", self.fingerprint),
            ),
            participants=[self.custodian.participant()],
            key_statement=federation_pb2.KeyStatement(
                statement=raw, signature=signature, custodian=self.custodian.name
            ),
        )


@pytest.fixture(scope="module")
def run_key():
    public_key, private_key = crypto.generate_keypair(1024, insecure_test_size=True)
    return public_key, private_key


@pytest.fixture
def dealt(tmp_path, run_key) -> DealtKey:
    site = site_agent(tmp_path, "site-b")
    custodian = RawIdentity("custodian")
    site.peers.pin(custodian.name, custodian.fingerprint)
    public_key, private_key = run_key
    return DealtKey(site, custodian, public_key, private_key, crypto.key_fingerprint(public_key))


def test_key_under_a_pinned_custodians_statement_opens(dealt):
    public_key, private_key = dealt.site.run_keys(dealt.task())

    assert crypto.key_fingerprint(public_key) == dealt.fingerprint
    assert private_key.p * private_key.q == dealt.public_key.n  # type: ignore[attr-defined]


def test_key_without_a_statement_is_refused(dealt):
    with pytest.raises(TaskRefused, match="without a signed statement") as refused:
        dealt.site.run_keys(dealt.task(statement=b""))
    assert refused.value.code == "verify"


def test_key_statement_signed_by_another_key_is_refused(dealt):
    coordinator_made = RawIdentity("custodian")

    with pytest.raises(TaskRefused, match="not signed by") as refused:
        dealt.site.run_keys(dealt.task(signer=coordinator_made.ed25519_private))
    assert refused.value.code == "verify"


def test_key_statement_of_an_unpinned_custodian_is_refused(dealt):
    dealt.site.peers.remove("custodian")

    with pytest.raises(TaskRefused, match="not pinned") as refused:
        dealt.site.run_keys(dealt.task())
    assert refused.value.code == "verify"


def test_key_statement_of_a_custodian_the_site_does_not_trust_is_refused(tmp_path, dealt):
    picky = site_agent(
        tmp_path / "picky", "site-b", policy=SitePolicy(trusted_custodians=("hospital-a",))
    )
    picky.peers.pin("custodian", dealt.custodian.fingerprint)
    dealt.site = picky

    with pytest.raises(TaskRefused, match="not a custodian this site trusts") as refused:
        picky.run_keys(dealt.task())
    assert refused.value.code == "policy"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"recipients": ()}, "does not name site-b"),
        ({"run_id": "run-other"}, "is for run"),
        ({"key_fingerprint": "f" * 32}, "names key"),
        ({"custodian_fingerprint": "0" * 32}, "another custodian fingerprint"),
    ],
    ids=["not-naming-the-site", "other-run", "other-key", "other-custodian-fingerprint"],
)
def test_key_statement_that_does_not_fit_is_refused(dealt, overrides, why):
    with pytest.raises(TaskRefused, match=why) as refused:
        dealt.site.run_keys(dealt.task(statement=dealt.statement(**overrides)))
    assert refused.value.code == "verify"


def test_key_statement_naming_the_site_with_another_identity_is_refused(dealt):
    stand_in = identity.Recipient("site-b", RawIdentity("site-b").fingerprint)
    recipients = (identity.Recipient("custodian", dealt.custodian.fingerprint), stand_in)

    with pytest.raises(TaskRefused, match="another identity"):
        dealt.site.run_keys(dealt.task(statement=dealt.statement(recipients=recipients)))


def test_coordinators_own_key_is_refused_even_sealed_to_the_site(dealt):
    # The coordinator makes a key, seals it to the site and replays the custodian's statement.
    own_public, own_private = crypto.generate_keypair(1024, insecure_test_size=True)
    replayed = dealt.task()
    dealt.public_key, dealt.private_key = own_public, own_private
    dealt.fingerprint = crypto.key_fingerprint(own_public)
    forged = dealt.task(statement=bytes(replayed.key_statement.statement))
    forged.key_statement.signature = replayed.key_statement.signature

    with pytest.raises(TaskRefused, match="names key"):
        dealt.site.run_keys(forged)


# -- the coordinator: participants fixed at start, keys sealed to them only ---------------


def start_secure_run(coordinator, **config: object) -> admin_pb2.RunInfo:  # type: ignore[no-untyped-def]
    return coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=1,
            min_clients=3,
            round_deadline_seconds=60,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            custodian="site-0",
            config_json=json.dumps({"encoding": TEST_ENCODING, "audit": False, **config}),
        )
    )


def keyed_run(coordinator, run_id: str) -> tuple[list[str], set[str]]:  # type: ignore[no-untyped-def]
    def registered() -> bool:
        with coordinator.hub.db.transaction() as session:
            run = session.get(Run, run_id)
            return bool(run and run.key_statement)

    wait_for(registered, 60, "the run's key statement")
    with coordinator.hub.db.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None
        sealed = set(session.scalars(select(SealedKey.node_id).where(SealedKey.run_id == run_id)))
        return list(run.participants), sealed


def test_keys_go_to_the_runs_sites_not_to_every_online_node(coordinator, agents, tmp_path):
    sites = agents.start(coordinator.address, breast_cancer_sites(4), tmp_path)
    wait_for(lambda: all(a.node_id for a in sites), 30, "sites to join")
    # An online node without an identity can never be a participant of a secure run.
    bare = coordinator.federation().Join(
        federation_pb2.JoinRequest(site_name="bare", x25519_public_key=b"k" * 32)
    )

    run = start_secure_run(coordinator, sites=["site-0", "site-1", "site-2"])
    participants, sealed = keyed_run(coordinator, run.run_id)

    in_run = {a.node_id for a in sites[:3]}
    assert set(participants) == in_run
    assert sealed <= in_run
    assert sites[3].node_id not in sealed
    assert bare.node_id not in sealed
    # The statement names exactly the sites sealed to.
    with coordinator.hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None
        dealing = identity.KeyDealing.from_bytes(stored.key_statement)
    assert {r.site for r in dealing.recipients} == {"site-0", "site-1", "site-2"}


def test_second_node_enrolled_under_a_site_name_does_not_get_the_key(coordinator, agents, tmp_path):
    # site-1's real identity joined once and is pinned by its peers ...
    original = site_agent(tmp_path / "original", "site-1", coordinator.address)
    original.join()
    trainers = breast_cancer_sites(4)
    honest = agents.start(
        coordinator.address,
        [trainers[0], trainers[2], trainers[3]],
        tmp_path,
        names=["site-0", "site-2", "site-3"],
    )
    for agent in honest:
        agent.peers.pin("site-1", original.identity.fingerprint)
    # ... then the operator enrols a second node under that name, with an identity of its own.
    impostor = site_agent(tmp_path / "impostor", "site-1", coordinator.address, poll_seconds=1.0)
    agents.agents.append(impostor)
    thread = threading.Thread(target=impostor.run, args=(agents.stop,), daemon=True)
    thread.start()
    agents.threads.append(thread)
    wait_for(lambda: bool(impostor.node_id) and all(a.node_id for a in honest), 30, "joins")

    run = start_secure_run(coordinator)
    participants, sealed = keyed_run(coordinator, run.run_id)

    assert "site.key_changed" in audit_kinds(coordinator)
    assert impostor.node_id in participants  # the coordinator offered it ...
    assert impostor.node_id not in sealed  # ... the custodian refused it
    assert sealed == {a.node_id for a in honest}
    original.close()


# -- the coordinator checks the statement before storing it -------------------------------


def test_coordinator_refuses_a_key_statement_that_does_not_fit(coordinator):
    stub = coordinator.federation()
    names = ["site-0", "site-1", "site-2"]
    sites = {name: RawIdentity(name) for name in names}
    tokens = {name: stub.Join(site.join_request()).node_token for name, site in sites.items()}
    run = start_secure_run(coordinator)
    metadata = (("authorization", f"Bearer {tokens['site-0']}"),)

    def pull() -> federation_pb2.Task:
        for _ in range(50):
            task = stub.PullTask(
                federation_pb2.PullTaskRequest(wait_seconds=0.5), metadata=metadata
            )
            if task.kind == federation_pb2.TASK_KIND_KEYGEN:
                return task
        raise AssertionError("no keygen task")

    task = pull()
    public_key, private_key = crypto.generate_keypair(1024, insecure_test_size=True)
    fingerprint = crypto.key_fingerprint(public_key)
    custodian = sites["site-0"]

    def bundle(signer: bytes, **overrides: object) -> federation_pb2.KeyBundle:
        fields: dict[str, object] = {
            "run_id": run.run_id,
            "scheme": "paillier",
            "key_fingerprint": fingerprint,
            "custodian": "site-0",
            "custodian_fingerprint": custodian.fingerprint,
            "recipients": tuple(identity.Recipient(n, s.fingerprint) for n, s in sites.items()),
        }
        fields.update(overrides)
        raw = identity.KeyDealing(**fields).to_bytes()  # type: ignore[arg-type]
        out = federation_pb2.KeyBundle(
            task_id=task.task_id,
            run_id=run.run_id,
            public_key=crypto.public_key_to_bytes(public_key),
            key_fingerprint=fingerprint,
            statement=federation_pb2.KeyStatement(
                statement=raw, signature=identity.sign(signer, raw)
            ),
        )
        for p in task.participants:
            out.sealed.add(node_id=p.node_id, sealed_private_key=b"sealed")
        return out

    stranger = RawIdentity("site-1")
    for bad in (
        bundle(stranger.ed25519_private),
        bundle(custodian.ed25519_private, run_id="other"),
        bundle(custodian.ed25519_private, key_fingerprint="0" * 32),
        bundle(
            custodian.ed25519_private,
            recipients=(identity.Recipient("site-0", custodian.fingerprint),),
        ),
        bundle(
            custodian.ed25519_private,
            recipients=(
                identity.Recipient("site-0", custodian.fingerprint),
                identity.Recipient("site-1", stranger.fingerprint),
                identity.Recipient("site-2", sites["site-2"].fingerprint),
            ),
        ),
    ):
        expect_refusal(grpc.StatusCode.INVALID_ARGUMENT, stub.SubmitKeys, bad, metadata=metadata)

    stub.SubmitKeys(bundle(custodian.ed25519_private), metadata=metadata)
    with coordinator.hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None and stored.key_statement
    assert len(task.participants) == 3
    assert {p.site_name for p in task.participants} == set(names)
    assert task.custodian == "site-0"


# -- peers files --------------------------------------------------------------------------


def test_peers_file_in_toml_or_json_is_read_and_checked(tmp_path):
    fp = RawIdentity("x").fingerprint
    spaced = identity.format_fingerprint(fp)
    (tmp_path / "peers.toml").write_text(f'[peers]\nhospital-b = "{spaced}"\n')
    (tmp_path / "peers.json").write_text(json.dumps({"hospital-c": fp.upper()}))
    (tmp_path / "bad.toml").write_text('hospital-b = "not-a-fingerprint"\n')
    (tmp_path / "badname.json").write_text(json.dumps({"../etc": fp}))

    assert load_peers_file(tmp_path / "peers.toml") == {"hospital-b": fp}
    assert load_peers_file(tmp_path / "peers.json") == {"hospital-c": fp}
    with pytest.raises(ValueError, match="hospital-b"):
        load_peers_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="site name"):
        load_peers_file(tmp_path / "badname.json")
    with pytest.raises(ValueError, match="cannot read"):
        load_peers_file(tmp_path / "missing.toml")


# -- the CLI ------------------------------------------------------------------------------


def test_identity_and_peers_commands_pin_add_list_and_remove(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    where = ["--name", "hospital-a", "--state-dir", str(tmp_path)]
    fp = RawIdentity("hospital-b").fingerprint

    shown = runner.invoke(app, ["client", "identity", *where])
    added = runner.invoke(app, ["client", "peers", "add", "hospital-b", fp.upper(), *where])
    listed = runner.invoke(app, ["client", "peers", "list", *where])
    bad = runner.invoke(app, ["client", "peers", "add", "hospital-c", "1234", *where])
    removed = runner.invoke(app, ["client", "peers", "remove", "hospital-b", *where])
    missing = runner.invoke(app, ["client", "peers", "remove", "hospital-b", *where])

    mine = SiteIdentity.load_or_create(tmp_path, "hospital-a").fingerprint
    assert shown.exit_code == 0
    assert identity.format_fingerprint(mine) in shown.output
    assert added.exit_code == 0 and listed.exit_code == 0
    assert identity.format_fingerprint(fp) in listed.output
    assert bad.exit_code == 2 and "32 hex digits" in bad.output
    assert removed.exit_code == 0
    assert missing.exit_code == 2 and "not pinned" in missing.output
    assert PeerStore.load(tmp_path, "hospital-a").pins == {}
    assert (tmp_path / "hospital-a.identity.json").stat().st_mode & 0o077 == 0


def test_a_key_bound_to_a_dp_plan_is_refused_by_a_task_showing_another_or_none(dealt):
    """Second review: a coordinator that hides a run's DP plan from one key holder would
    leave it without site-level DP's quorum check; the custodian binds the plan it saw."""
    plan = common_pb2.PrivacyPlan(mode="site", epsilon=8.0, delta=1e-5, quorum=3)
    bound = dealt.statement(privacy_sha256=serde.plan_digest(plan))

    hidden = dealt.task(bound)  # the task shows no plan at all
    with pytest.raises(TaskRefused, match="another differential-privacy plan") as refused:
        dealt.site.run_keys(hidden)
    assert refused.value.code == "verify"

    lowered = dealt.task(bound)
    lowered.privacy.CopyFrom(plan)
    lowered.privacy.quorum = 1
    with pytest.raises(TaskRefused, match="another differential-privacy plan"):
        dealt.site.run_keys(lowered)

    honest = dealt.task(bound)
    honest.privacy.CopyFrom(plan)
    public_key, _ = dealt.site.run_keys(honest)
    assert crypto.key_fingerprint(public_key) == dealt.fingerprint


def test_a_key_of_a_run_without_dp_is_refused_under_a_plan_the_custodian_never_saw(dealt):
    task = dealt.task()  # the statement binds no plan
    task.privacy.CopyFrom(common_pb2.PrivacyPlan(mode="record", epsilon=3.0, delta=1e-5))
    with pytest.raises(TaskRefused, match="another differential-privacy plan"):
        dealt.site.run_keys(task)
