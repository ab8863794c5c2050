"""Split view: a coordinator showing two groups of share holders two aggregates of a round.

Over real gRPC on 127.0.0.1: the sites are the dealt 2-of-3 holders of
``test_threshold_custody`` (real identities, pins, shares), their stub a real Federation
stub; the coordinator is a hostile relay that shows site-a one aggregate and site-b
another, while site-c (colluding, t − 1 = 1 holder) signs echoes of both. Decrypting
both would reveal the difference of two subset sums, one site's update: no honest site
may publish a partial of either.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from test_threshold_custody import RUN, Dealt, dealt, encrypt, open_all, quick_fallback

from client import threshold_echo
from client import threshold_partials as partials_mod
from client.policy import TaskRefused
from crypto import threshold_custody as custody
from protos import federation_pb2, federation_pb2_grpc

__all__ = ["dealt", "quick_fallback"]  # the module's fixtures, used here by name

X, Y = "aa" * 32, "bb" * 32


class HostileRelay(federation_pb2_grpc.FederationServicer):
    """Relays echoes and partials; with ``split`` it shows each site only echoes of its view."""

    def __init__(self, shown: dict[str, str], split: bool) -> None:
        self.shown, self.split = shown, split
        self.echoes: list[tuple[str, federation_pb2.EchoSubmission]] = []
        self.partials: list[tuple[str, federation_pb2.PartialSubmission]] = []
        self.lock = threading.Lock()

    @staticmethod
    def _site(context: grpc.ServicerContext) -> str:
        return str(dict(context.invocation_metadata())["site"])

    def SubmitEcho(self, request, context):
        with self.lock:
            self.echoes.append((self._site(context), request))
        return federation_pb2.SubmitReply(message="echoed")

    def FetchEchoes(self, request, context):
        me = self._site(context)
        with self.lock:
            relayed = [
                federation_pb2.EchoEnvelope(
                    site_name=site, node_id=site, statement=e.statement, signature=e.signature
                )
                for site, e in self.echoes
                if e.round == request.round
                and (
                    not self.split
                    or custody.EchoStatement.from_bytes(e.statement).aggregate_sha256
                    == self.shown[me]
                )
            ]
        if len(relayed) < request.at_least:
            time.sleep(min(request.wait_seconds, 0.05))
        return federation_pb2.EchoFetchReply(echoes=relayed)

    def SubmitPartials(self, request, context):
        with self.lock:
            self.partials.append((self._site(context), request))
        return federation_pb2.SubmitReply(message="relayed")

    def FetchPartials(self, request, context):
        with self.lock:
            relayed = [
                federation_pb2.PartialEnvelope(site_name=s, node_id=s, sealed=p.sealed, part=p.part)
                for s, p in self.partials
                if p.round == request.round
            ]
        if len(relayed) < request.at_least:
            time.sleep(min(request.wait_seconds, 0.05))
        return federation_pb2.PartialFetchReply(partials=relayed, threshold=2)

    def ReportPartial(self, request, context):
        return federation_pb2.SubmitReply(message="recorded")


@pytest.fixture
def serve(dealt: Dealt):
    """Start a relay on 127.0.0.1 and point every dealt site's stub at it."""
    servers, saved = [], [(s.stub, s.__dict__.get("_metadata")) for s in dealt.sites]

    def start(relay: HostileRelay) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        federation_pb2_grpc.add_FederationServicer_to_server(relay, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        for site in dealt.sites:
            site.stub = federation_pb2_grpc.FederationStub(channel)
            site._metadata = lambda name=site.identity.site_name: (("site", name),)  # type: ignore[method-assign]

    yield start
    for server in servers:
        server.stop(0)
    for site, (stub, metadata) in zip(dealt.sites, saved, strict=True):
        site.stub = stub
        if metadata is None:
            site.__dict__.pop("_metadata", None)


def task_showing(dealt: Dealt, index: int, aggregate: str) -> federation_pb2.Task:
    task = dealt.task(dealt.sites[index])
    del task.aggregates[:]
    task.aggregates.add(round=2, sha256=aggregate)
    return task


def run_sites(dealt: Dealt, shown: dict[int, tuple[str, list[int]]]) -> dict[int, object]:
    keys_ = open_all(dealt)
    results: dict[int, object] = {}

    def one(i: int) -> None:
        aggregate, cts = shown[i]
        try:
            results[i] = partials_mod.decrypt(
                dealt.sites[i], task_showing(dealt, i, aggregate), keys_[i], 2, aggregate, cts
            )  # type: ignore[arg-type]
        except TaskRefused as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in shown]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_an_honest_relay_over_grpc_decrypts(dealt, serve):
    relay = HostileRelay({}, split=False)
    serve(relay)
    cts = encrypt(open_all(dealt)[0], [5, 6])

    results = run_sites(dealt, {i: (X, cts) for i in range(3)})

    assert results == {0: [5, 6], 1: [5, 6], 2: [5, 6]}
    echoed = {custody.EchoStatement.from_bytes(e.statement).site for _, e in relay.echoes}
    assert echoed == {"site-a", "site-b", "site-c"}


@pytest.mark.parametrize("split", [False, True], ids=["relays-all-echoes", "splits-echoes"])
def test_a_coordinator_showing_two_aggregates_gets_no_partial(dealt, serve, split):
    relay = HostileRelay({"site-a": X, "site-b": Y}, split=split)
    serve(relay)
    key = open_all(dealt)[0]
    # site-c colludes with the coordinator: it signs echoes of both aggregates.
    colluder = dealt.sites[2]
    for aggregate in (X, Y):
        threshold_echo.echo(colluder, task_showing(dealt, 2, aggregate), 2, aggregate)  # type: ignore[arg-type]

    results = run_sites(dealt, {0: (X, encrypt(key, [5])), 1: (Y, encrypt(key, [7]))})

    assert all(isinstance(r, TaskRefused) for r in results.values()), results
    if split:  # each group sees only its own view: 2 echoes, never the quorum of 3
        assert all("only 2 of the 3 signed echoes" in r.reason for r in results.values())
    else:  # the other group's signed echo is the equivocation, named
        assert all("shown different aggregates" in r.reason for r in results.values())
        assert "site-b signed aggregate " + Y[:16] in results[0].reason
    assert relay.partials == []
    assert {s for s, _ in relay.echoes} == {"site-a", "site-b", "site-c"}


@pytest.mark.parametrize(
    "parties, threshold, quorum, may_be_gone",
    [(3, 2, 3, 0), (5, 3, 4, 1), (5, 2, 4, 1), (4, 2, 3, 1), (7, 3, 5, 2), (7, 7, 7, 0)],
)
def test_echo_quorum_and_the_holders_that_may_be_gone(parties, threshold, quorum, may_be_gone):
    assert custody.echo_quorum(parties, threshold) == quorum
    assert parties - quorum == may_be_gone == (parties - threshold) // 2


def test_two_quorums_always_share_an_honest_holder():
    for parties in range(2, 12):
        for threshold in range(2, parties + 1):
            q = custody.echo_quorum(parties, threshold)
            # Two quorums share ≥ 2q − N holders; more than the t − 1 that may lie.
            assert 2 * q - parties >= threshold
            assert q <= parties


def test_echo_statement_is_canonical_and_bound():
    echo = custody.EchoStatement(RUN, 2, "site-a", X, Y)
    raw = echo.to_bytes()

    assert custody.EchoStatement.from_bytes(raw) == echo
    with pytest.raises(ValueError, match="canonical"):
        custody.EchoStatement.from_bytes(raw.replace(b'","', b'", "', 1))
    with pytest.raises(ValueError, match="not a Cohort"):
        custody.EchoStatement.from_bytes(raw[1:])
    assert custody.manifest_sha256(
        round_number=2, aggregate_sha256=X, total_weight=3, count=1, contributions=[("a", X, 1, 9)]
    ) != custody.manifest_sha256(
        round_number=2, aggregate_sha256=X, total_weight=3, count=1, contributions=[("a", X, 2, 9)]
    )
