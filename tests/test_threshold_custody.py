"""Threshold custody at the sites, against a hostile relay: shares, statements and partials.

The coordinator is replaced by an in-memory relay that a test can make lie (swap, replay or
drop what it relays); the sites are real identities, peer pins and dealt keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from client import keys, threshold_echo
from client import threshold as site_threshold
from client import threshold_partials as partials_mod
from client.custody import SiteIdentity
from client.peers import PeerStore
from client.policy import SitePolicy, TaskRefused
from crypto import identity
from crypto import threshold as tp
from crypto import threshold_custody as custody
from protos import common_pb2, federation_pb2

RUN = "run-threshold"
AGGREGATE = "ab" * 32
NAMES = ["site-a", "site-b", "site-c"]


class Exists(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.ALREADY_EXISTS


@dataclass
class Relay:
    """Stands in for the coordinator: stores sealed partials per (round, site)."""

    partials: dict[tuple[int, str, int], bytes] = field(default_factory=dict)
    echoes: dict[tuple[int, str], federation_pb2.EchoSubmission] = field(default_factory=dict)
    complaints: list[tuple[str, str, str]] = field(default_factory=list)
    tamper: Callable[[int, list[federation_pb2.PartialEnvelope]], None] = lambda r, e: None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Stub:
    def __init__(self, relay: Relay, site: str) -> None:
        self.relay, self.site = relay, site

    def SubmitPartials(self, request, metadata=(), timeout=None):
        with self.relay.lock:
            key = (request.round, self.site, request.part)
            if key in self.relay.partials:
                raise Exists()
            self.relay.partials[key] = bytes(request.sealed)
        return federation_pb2.SubmitReply()

    def FetchPartials(self, request, metadata=(), timeout=None):
        with self.relay.lock:
            envelopes = [
                federation_pb2.PartialEnvelope(
                    site_name=site, node_id=site, sealed=sealed, part=part
                )
                for (rnd, site, part), sealed in sorted(self.relay.partials.items())
                if rnd == request.round
            ]
        self.relay.tamper(request.round, envelopes)
        if len(envelopes) < request.at_least:
            time.sleep(min(request.wait_seconds, 0.05))  # a long poll that saw nothing new
        return federation_pb2.PartialFetchReply(partials=envelopes, threshold=2)

    def SubmitEcho(self, request, metadata=(), timeout=None):
        with self.relay.lock:
            if (request.round, self.site) in self.relay.echoes:
                raise Exists()
            self.relay.echoes[(request.round, self.site)] = request
        return federation_pb2.SubmitReply()

    def FetchEchoes(self, request, metadata=(), timeout=None):
        with self.relay.lock:
            echoes = [
                federation_pb2.EchoEnvelope(
                    site_name=site, node_id=site, statement=e.statement, signature=e.signature
                )
                for (rnd, site), e in sorted(self.relay.echoes.items())
                if rnd == request.round
            ]
        if len(echoes) < request.at_least:
            time.sleep(min(request.wait_seconds, 0.05))
        return federation_pb2.EchoFetchReply(echoes=echoes)

    def ReportPartial(self, request, metadata=(), timeout=None):
        with self.relay.lock:
            self.relay.complaints.append((self.site, request.accused_site, request.reason))
        return federation_pb2.SubmitReply()


class Site:
    """What client.threshold uses of a SiteAgent."""

    def __init__(self, root: Path, name: str, relay: Relay) -> None:
        self.identity = SiteIdentity.load_or_create(root / name, name)
        self.peers = PeerStore.load(root / name, name)
        self.config = SimpleNamespace(policy=SitePolicy(), encrypt_workers=1)
        self.stub = Stub(relay, name)
        self.listener = lambda event, info: None
        self._closing = threading.Event()

    def _metadata(self) -> tuple:
        return ()


@dataclass
class Dealt:
    sites: list[Site]
    relay: Relay
    bundle: federation_pb2.KeyBundle
    participants: list[federation_pb2.Participant]

    def task(self, site: Site, round_number: int = 2, **changes: object) -> federation_pb2.Task:
        sealed = {s.node_id: s.sealed_private_key for s in self.bundle.sealed}
        task = federation_pb2.Task(
            kind=federation_pb2.TASK_KIND_TRAIN,
            run_id=RUN,
            round=2,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            encoding=common_pb2.EncodingParams(
                public_key=self.bundle.public_key,
                key_fingerprint=self.bundle.key_fingerprint,
                key_bits=1024,
            ),
            sealed_private_key=sealed[site.identity.site_name],
            participants=self.participants,
            key_statement=self.bundle.statement,
            custodian=NAMES[0],
            threshold=2,
            threshold_dealing=self.bundle.threshold_dealing,
            deadline_unix=time.time() + 6,
            aggregates=[federation_pb2.AggregateRef(round=round_number, sha256=AGGREGATE)],
        )
        for name, value in changes.items():
            if isinstance(value, bytes | int | str):
                setattr(task, name, value)
        return task


def deal(root: Path, names: list[str], threshold: int = 2) -> Dealt:
    """Sites that pin each other, and a t-of-N key dealt to them by the first."""
    relay = Relay()
    sites = [Site(root, name, relay) for name in names]
    for site in sites:
        for other in sites:
            if other is not site:
                site.peers.pin(other.identity.site_name, other.identity.fingerprint)
    participants = [
        federation_pb2.Participant(
            node_id=s.identity.site_name,
            site_name=s.identity.site_name,
            x25519_public_key=s.identity.x25519_public,
            ed25519_public_key=s.identity.ed25519_public,
            x25519_signature=s.identity.x25519_signature(),
        )
        for s in sites
    ]
    keygen = federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_KEYGEN,
        run_id=RUN,
        threshold=threshold,
        encoding=common_pb2.EncodingParams(key_bits=1024),
        participants=participants,
    )
    custodian = sites[0]
    recipients, refused = keys.trusted_recipients(participants, custodian.identity, custodian.peers)
    bundle = site_threshold.deal(custodian, keygen, recipients, refused)  # type: ignore[arg-type]
    return Dealt(sites, relay, bundle, participants)


@pytest.fixture(scope="module")
def dealt(tmp_path_factory: pytest.TempPathFactory) -> Dealt:
    return deal(tmp_path_factory.mktemp("custody"), NAMES)


@pytest.fixture(autouse=True)
def quick_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sites wait this long for the others' blocks before decrypting the whole vector.
    monkeypatch.setattr(partials_mod, "SPREAD_WAIT_SECONDS", 0.3)


def fresh(dealt: Dealt) -> Relay:
    relay = Relay()
    for site in dealt.sites:
        site.stub = Stub(relay, site.identity.site_name)
    return relay


def open_all(dealt: Dealt) -> list[site_threshold.ThresholdKey]:
    return [site_threshold.open_key(s, dealt.task(s)) for s in dealt.sites]  # type: ignore[arg-type]


# -- dealing ------------------------------------------------------------------------------


def test_each_site_opens_its_own_share_and_it_matches_its_verification_key(dealt):
    opened = open_all(dealt)

    assert sorted(k.share.index for k in opened) == [1, 2, 3]
    assert all(custody.share_matches(k.share, k.verification_keys) for k in opened)
    assert len({k.group_key for k in opened}) == 1
    statement = custody.ThresholdStatement.from_bytes(dealt.bundle.threshold_dealing.statement)
    assert statement.erasure == custody.ERASURE and statement.threshold == 2
    assert {h.site for h in statement.holders} == set(NAMES)


def test_the_bundle_holds_no_share_in_the_clear(dealt):
    raw = dealt.bundle.SerializeToString()

    assert b"CTS" not in raw  # crypto.threshold's key-share encoding
    for key in open_all(dealt):
        assert key.share.share.to_bytes(key.share.share.bit_length() // 8 + 1, "big") not in raw


def test_a_share_sealed_to_another_site_is_refused(dealt):
    a, b = dealt.sites[0], dealt.sites[1]
    swapped = dealt.task(b, sealed_private_key=dealt.task(a).sealed_private_key)

    with pytest.raises(TaskRefused, match="does not open with this site's key"):
        site_threshold.open_key(b, swapped)  # type: ignore[arg-type]


def test_a_dropped_share_and_group_key_seal_is_refused(dealt):
    site = dealt.sites[2]

    with pytest.raises(TaskRefused, match="no sealed key share"):
        site_threshold.open_key(site, dealt.task(site, sealed_private_key=b""))  # type: ignore[arg-type]


def test_a_statement_not_signed_by_the_custodian_is_refused(dealt):
    site = dealt.sites[1]
    task = dealt.task(site)
    task.threshold_dealing.signature = dealt.sites[2].identity.sign(
        bytes(task.threshold_dealing.statement)
    )

    with pytest.raises(TaskRefused, match="threshold statement"):
        site_threshold.open_key(site, task)  # type: ignore[arg-type]


def test_verification_keys_other_than_the_signed_ones_are_refused(dealt):
    site = dealt.sites[1]
    task = dealt.task(site)
    keys_ = tp.verification_keys_from_bytes(bytes(task.threshold_dealing.verification_keys))
    forged = tp.VerificationKeys(
        n=keys_.n, threshold=2, parties=3, v=keys_.v, party_keys=keys_.party_keys[::-1]
    )
    task.threshold_dealing.verification_keys = tp.verification_keys_to_bytes(forged)

    with pytest.raises(TaskRefused, match="verification keys are not the ones relayed"):
        site_threshold.open_key(site, task)  # type: ignore[arg-type]


def test_a_coordinator_turning_the_threshold_off_or_down_is_refused(dealt):
    site = dealt.sites[1]

    with pytest.raises(TaskRefused, match="dealt 2-of-n"):
        site_threshold.open_key(site, dealt.task(site, threshold=3))  # type: ignore[arg-type]


# -- decrypting ---------------------------------------------------------------------------


def encrypt(key: site_threshold.ThresholdKey, values: list[int]) -> list[int]:
    return [key.public_key.raw_encrypt(v) for v in values]


def decrypt_at(
    dealt: Dealt, which: list[int], cts: list[int], keys_, round_number: int = 2, early=None
):
    results: dict[int, object] = {}

    def one(i: int) -> None:
        site = dealt.sites[i]
        try:
            results[i] = partials_mod.decrypt(
                site,
                dealt.task(site, round_number),
                keys_[i],
                round_number,
                AGGREGATE,
                cts,
                (early or {}).get(i),
            )  # type: ignore[arg-type]
        except TaskRefused as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in which]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def pre_echo(dealt: Dealt, which: list[int], round_number: int = 2) -> None:
    """These sites echo the round's aggregate (then, in the test, take no further part)."""
    for i in which:
        site = dealt.sites[i]
        threshold_echo.echo(site, dealt.task(site, round_number), round_number, AGGREGATE)  # type: ignore[arg-type]


def test_two_sites_decrypt_when_the_third_echoed_and_then_went(dealt):
    fresh(dealt)
    keys_ = open_all(dealt)
    values = [0, 1, 12345, keys_[0].public_key.n - 1]
    pre_echo(dealt, [1])

    results = decrypt_at(dealt, [0, 2], encrypt(keys_[0], values), keys_)

    assert results == {0: values, 2: values}


def test_two_of_three_publishes_nothing_with_a_holder_gone_before_echoing(dealt):
    # The echo quorum of 2-of-3 is 3 (crypto.threshold_custody.echo_quorum): the price of
    # refusing a coordinator that shows holders different aggregates.
    relay = fresh(dealt)
    keys_ = open_all(dealt)

    results = decrypt_at(dealt, [0, 2], encrypt(keys_[0], [5]), keys_)

    assert all(isinstance(r, TaskRefused) for r in results.values()), results
    assert all("only 2 of the 3 signed echoes" in r.reason for r in results.values())
    assert relay.partials == {}


def test_a_wrong_partial_is_named_and_the_others_decrypt(dealt, monkeypatch):
    relay = fresh(dealt)
    keys_ = open_all(dealt)
    values = [7, 8, 9]
    honest = partials_mod.publish

    def lying(agent, run, round_number, aggregate_sha256, partial, key, part=0):
        if agent.identity.site_name == "site-c":
            bad = (partial.values[0] * 3 % key.verification_keys.n_square, *partial.values[1:])
            partial = tp.PartialDecryption(partial.index, bad, partial.proof)
        else:  # the liar publishes first, site-a next: site-a must judge the liar's partial
            time.sleep(0.5 if agent.identity.site_name == "site-a" else 1.0)
        honest(agent, run, round_number, aggregate_sha256, partial, key, part=part)

    monkeypatch.setattr(partials_mod, "publish", lying)
    results = decrypt_at(dealt, [0, 1, 2], encrypt(keys_[0], values), keys_)

    assert results[0] == values and results[1] == values
    # Each site stops judging once it has t good partials (it waits for t, not for all).
    assert ("site-a", "site-c") in {(who, accused) for who, accused, _ in relay.complaints}
    assert all(accused == "site-c" for _, accused, _ in relay.complaints)
    assert all("proof of correct decryption fails" in r for _, _, r in relay.complaints)


def test_early_partials_are_released_only_by_decrypt_and_only_for_their_ciphertexts(
    dealt, monkeypatch
):
    """Partials started while the aggregate is checked (client/schemes/paillier.py).

    Starting them publishes nothing: a site whose check fails has released nothing. And
    a coordinator that showed a site other bytes under the same aggregate name while it
    started them cannot get those partials released for the real aggregate: the site
    computes afresh (an early partial of the wrong ciphertexts would fail every other
    holder's proof check and name this honest site).
    """
    relay = fresh(dealt)
    keys_ = open_all(dealt)
    values = [3, 4, 5]
    cts = encrypt(keys_[0], values)
    decoy = encrypt(keys_[0], [6, 7, 8])
    early = {
        0: partials_mod.start_early(
            dealt.sites[0], dealt.task(dealt.sites[0]), keys_[0], 2, AGGREGATE, cts
        ),
        1: partials_mod.start_early(
            dealt.sites[1], dealt.task(dealt.sites[1]), keys_[1], 2, AGGREGATE, decoy
        ),
    }
    for started in early.values():
        assert started is not None
        started.result.result(timeout=30)
    assert relay.partials == {} and relay.echoes == {}  # computed, not released

    computed: list[str] = []
    real_compute = partials_mod.compute_partial

    def counting(key, ciphertexts, context, workers):  # type: ignore[no-untyped-def]
        computed.append(key.share.index)
        return real_compute(key, ciphertexts, context, workers)

    monkeypatch.setattr(partials_mod, "compute_partial", counting)
    results = decrypt_at(dealt, [0, 1, 2], cts, keys_, early=early)

    assert results == {0: values, 1: values, 2: values}
    assert 1 not in computed  # site-a used its early partials
    assert 2 in computed and 3 in computed  # site-b's were of the decoy: computed afresh
    assert relay.complaints == []


def test_early_partials_run_one_at_a_time_per_site_and_a_failed_one_is_redone(dealt, monkeypatch):
    """A coordinator replaying a signed manifest with other bytes cannot queue work at a
    site (one early computation at a time); early work that failed (a broken worker pool)
    costs the site nothing but the time: it computes afresh and the round decrypts."""
    fresh(dealt)
    keys_ = open_all(dealt)
    values = [11, 12, 13]
    cts = encrypt(keys_[0], values)
    release = threading.Event()

    def stuck(key, ciphertexts, context, workers):  # type: ignore[no-untyped-def]
        release.wait(30)
        raise RuntimeError("the worker pool broke")

    monkeypatch.setattr(partials_mod, "compute_partial", stuck)
    site = dealt.sites[0]
    first = partials_mod.start_early(site, dealt.task(site), keys_[0], 2, AGGREGATE, cts)
    second = partials_mod.start_early(site, dealt.task(site), keys_[0], 2, AGGREGATE, cts)
    assert first is not None and second is None
    release.set()
    with pytest.raises(RuntimeError):
        first.result.result(timeout=30)
    monkeypatch.undo()

    results = decrypt_at(dealt, [0, 1, 2], cts, keys_, early={0: first})

    assert results == {0: values, 1: values, 2: values}


def test_swapped_partials_do_not_open_and_both_sites_are_named(dealt):
    relay = fresh(dealt)
    keys_ = open_all(dealt)

    def swap(round_number, envelopes):
        for part in (0, 1):
            by_site = {e.site_name: e for e in envelopes if e.part == part}
            b, c = by_site["site-b"], by_site["site-c"]
            b.sealed, c.sealed = c.sealed, b.sealed

    cts = encrypt(keys_[0], [5])
    pre_echo(dealt, [0])
    decrypt_at(dealt, [1, 2], cts, keys_)  # b and c publish; their partials are now relayed
    relay.tamper = swap

    result = decrypt_at(dealt, [0], cts, keys_)[0]

    assert isinstance(result, TaskRefused)
    assert "lack the 2 verified partials" in result.reason
    # Swapped by the relay: the reason must not blame the sites alone.
    assert "site-b: the relay or the site: sealed partial does not open" in result.reason
    assert "site-c: the relay or the site: sealed partial does not open" in result.reason


def test_a_partial_replayed_from_another_round_does_not_open(dealt):
    relay = fresh(dealt)
    keys_ = open_all(dealt)
    cts = encrypt(keys_[0], [5])
    pre_echo(dealt, [0], round_number=1)
    pre_echo(dealt, [1, 2], round_number=2)
    decrypt_at(dealt, [1, 2], cts, keys_, round_number=1)
    # The relay hands round 1's partials out as round 2's.
    relay.partials.update(
        {(2, s, part): p for (r, s, part), p in list(relay.partials.items()) if r == 1}
    )

    result = decrypt_at(dealt, [0], cts, keys_, round_number=2)[0]

    assert isinstance(result, TaskRefused)
    assert "does not open" in result.reason


def test_a_share_holder_cannot_publish_in_anothers_name(dealt):
    relay = fresh(dealt)
    keys_ = open_all(dealt)
    cts = encrypt(keys_[0], [5])
    pre_echo(dealt, [1, 2])
    # site-c knows the group key and seals its own partial under site-b's name.
    c = dealt.sites[2]
    label = "ab" * 32 + "/all"
    context = f"cohort/threshold/{RUN}/2/{label}".encode()
    partial = partials_mod.compute_partial(keys_[2], cts, context, 1)
    data = tp.partial_decryption_to_bytes(partial, keys_[2].verification_keys)
    relay.partials[(2, "site-b", 1)] = custody.seal_partial(
        keys_[2].group_key,
        run_id=RUN,
        round_number=2,
        site="site-b",
        aggregate_sha256=label,
        partial=data,
        signature=c.identity.sign(
            custody.partial_statement(
                run_id=RUN, round_number=2, site="site-b", aggregate_sha256=label, partial=data
            )
        ),
    )

    result = decrypt_at(dealt, [0], cts, keys_)[0]

    assert isinstance(result, TaskRefused)
    assert "site-b: the relay or the site: signature does not verify" in result.reason


def test_partial_statement_binds_every_field():
    base = dict(run_id="r", round_number=1, site="s", aggregate_sha256="a", partial=b"p")
    signed = custody.partial_statement(**base)  # type: ignore[arg-type]
    for name, other in (("run_id", "x"), ("round_number", 2), ("site", "t"), ("partial", b"q")):
        assert custody.partial_statement(**(base | {name: other})) != signed  # type: ignore[arg-type]
    assert identity  # the statements are signed with crypto.identity (Ed25519)


# -- the coordinator's check of a dealing ---------------------------------------------------


class Session:
    def __init__(self) -> None:
        self.added: list[object] = []

    def add(self, row: object) -> None:
        self.added.append(row)


def register(dealt: Dealt, *, threshold: int = 2, signer: Site | None = None, bundle=None):
    from coordinator import threshold as coord_threshold
    from coordinator.schema import Node, Run

    bundle = bundle if bundle is not None else dealt.bundle
    custodian = signer or dealt.sites[0]
    run = Run(id=RUN, config={"threshold": threshold} if threshold else {})
    node = Node(id=NAMES[0], ed25519_public_key=custodian.identity.ed25519_public)
    dealing = identity.KeyDealing.from_bytes(bytes(bundle.statement.statement))
    n = tp.verification_keys_from_bytes(bytes(dealt.bundle.threshold_dealing.verification_keys)).n
    session = Session()
    details = coord_threshold.register(session, run, node, bundle, dealing, n)  # type: ignore[arg-type]
    return details, session.added


def test_the_coordinator_records_holders_and_erasure_as_signed(dealt):
    details, added = register(dealt)

    assert details["threshold"] == 2 and details["parties"] == 3
    assert set(details["holders"]) == set(NAMES)  # type: ignore[arg-type]
    assert details["erasure"] == custody.ERASURE
    assert len(added) == 1


@pytest.mark.parametrize(
    "threshold, words", [(0, "not a threshold run"), (3, "needs a 3-of-n threshold dealing")]
)
def test_the_coordinator_refuses_a_dealing_the_run_did_not_ask_for(dealt, threshold, words):
    from coordinator.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=words):
        register(dealt, threshold=threshold)


def test_the_coordinator_refuses_a_threshold_run_dealt_a_whole_key(dealt):
    from coordinator.errors import InvalidArgument

    bundle = federation_pb2.KeyBundle()
    bundle.CopyFrom(dealt.bundle)
    bundle.ClearField("threshold_dealing")

    with pytest.raises(InvalidArgument, match="needs a 2-of-n threshold dealing"):
        register(dealt, bundle=bundle)


def test_the_coordinator_refuses_a_statement_another_site_signed(dealt):
    from coordinator.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="signature does not verify"):
        register(dealt, signer=dealt.sites[1])


@pytest.mark.parametrize("threshold, parties", [(2, 2), (2, 3), (3, 5), (4, 7), (5, 5)])
@pytest.mark.parametrize("count", [1, 2, 66, 301])
def test_spread_work_gives_every_value_exactly_t_parties(threshold, parties, count):
    slices = partials_mod.block_slices(count, parties)
    holders = {b: [] for b in slices}  # type: ignore[var-annotated]
    for index in range(1, parties + 1):
        for block in partials_mod.blocks_of(index, parties, threshold):
            holders[block].append(index)

    assert sorted(k for span in slices.values() for k in span) == list(range(count))
    assert all(len(set(h)) == threshold for h in holders.values())
    assert all(
        len(partials_mod.blocks_of(i, parties, threshold)) == threshold
        for i in range(1, parties + 1)
    )


@pytest.mark.parametrize(
    ("threshold", "words"), [(1, "at least 2"), (0, "at least 2"), (4, "needs 4")]
)
def test_the_custodian_refuses_to_deal_a_threshold_below_two_or_above_the_holders(
    dealt, threshold, words
):
    custodian = dealt.sites[0]
    keygen = federation_pb2.Task(
        kind=federation_pb2.TASK_KIND_KEYGEN,
        run_id=RUN,
        threshold=threshold,
        encoding=common_pb2.EncodingParams(key_bits=1024),
        participants=dealt.participants,
    )
    recipients, refused = keys.trusted_recipients(
        dealt.participants, custodian.identity, custodian.peers
    )
    with pytest.raises(TaskRefused, match=words) as refusal:
        site_threshold.deal(custodian, keygen, recipients, refused)  # type: ignore[arg-type]
    assert refusal.value.code == "policy"
