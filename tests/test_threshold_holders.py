"""One hostile share holder, or a relay that lies about who sent what (review of 2026-12-03).

The sites are real dealt holders (identities, pins, shares) behind the in-memory relay of
``test_threshold_custody``, which, unlike the coordinator, checks nothing it relays: so
what is tested is what the sites themselves refuse.

- A holder that signs an echo of the round's aggregate with another manifest is named,
  and the others still decrypt: one holder has no veto over a round.
- Holders that echo something else in numbers that leave no quorum make a site refuse at
  once, not at the deadline.
- A holder this site has unpinned does not count towards its echo quorum.
- A field only the relay sets (a partial's ``part``) is not blamed on the sender.
"""

from __future__ import annotations

import time

import pytest
from test_threshold_custody import (
    AGGREGATE,
    RUN,
    Dealt,
    Site,
    deal,
    dealt,
    decrypt_at,
    encrypt,
    fresh,
    open_all,
    pre_echo,
    quick_fallback,
)

from client import threshold_echo
from client.policy import TaskRefused
from crypto import identity
from crypto import threshold_custody as custody
from protos import federation_pb2

__all__ = ["dealt", "quick_fallback"]  # the custody module's fixtures, used here by name


@pytest.fixture(scope="module")
def dealt4(tmp_path_factory: pytest.TempPathFactory) -> Dealt:
    """A 2-of-4 dealing: echo quorum 3, so one holder may be gone or lie."""
    return deal(tmp_path_factory.mktemp("custody4"), ["site-a", "site-b", "site-c", "site-d"])


def echo_other(site: Site, *, aggregate: str = AGGREGATE, manifest: str = "00" * 32) -> None:
    """``site`` signs and publishes an echo of round 2 that names ``aggregate``/``manifest``."""
    raw = custody.EchoStatement(RUN, 2, site.identity.site_name, aggregate, manifest).to_bytes()
    site.stub.SubmitEcho(
        federation_pb2.EchoSubmission(
            run_id=RUN, round=2, statement=raw, signature=site.identity.sign(raw)
        )
    )


def test_a_holder_echoing_another_manifest_is_named_and_the_round_completes(dealt4):
    relay = fresh(dealt4)
    keys_ = open_all(dealt4)
    echo_other(dealt4.sites[3])  # site-d: the right aggregate, a made-up manifest
    values = [11, 22, 33]

    results = decrypt_at(dealt4, [0, 1, 2], encrypt(keys_[0], values), keys_)

    assert results == {0: values, 1: values, 2: values}, results
    accused = {(by, whom) for by, whom, _ in relay.complaints}
    assert accused == {("site-a", "site-d"), ("site-b", "site-d"), ("site-c", "site-d")}
    assert all("it signed another aggregate, or the coordinator" in r for *_, r in relay.complaints)


def test_echoes_of_another_aggregate_that_leave_no_quorum_refuse_at_once(dealt4):
    relay = fresh(dealt4)
    keys_ = open_all(dealt4)
    for site in dealt4.sites[2:]:  # two of four echo another aggregate: 2 < quorum 3
        echo_other(site, aggregate="cd" * 32)
    started = time.monotonic()

    result = decrypt_at(dealt4, [0], encrypt(keys_[0], [5]), keys_)[0]

    assert isinstance(result, TaskRefused), result
    assert "2 holders could still agree, fewer than the quorum of 3" in result.reason
    assert "site-c signed aggregate cdcdcdcd" in result.reason
    assert time.monotonic() - started < 4  # the task's deadline is 6 s away
    assert not any(site == "site-a" for _, site, _ in relay.partials)


def test_an_unpinned_holders_echo_does_not_count(dealt):
    relay = fresh(dealt)
    site_a = dealt.sites[0]
    pinned = site_a.peers.fingerprint_of("site-c")
    assert pinned is not None and site_a.peers.remove("site-c")
    try:
        keys_ = open_all(dealt)
        pre_echo(dealt, [1, 2])  # site-b and site-c echo; 2-of-3 needs all three

        result = decrypt_at(dealt, [0], encrypt(keys_[0], [5, 6]), keys_)[0]
    finally:
        site_a.peers.pin("site-c", pinned)

    assert isinstance(result, TaskRefused), result
    assert "only 2 of the 3 signed echoes" in result.reason
    assert not any(site == "site-a" for _, site, _ in relay.partials)


def test_a_partial_whose_part_the_relay_changed_is_not_blamed_on_its_sender(dealt):
    relay = fresh(dealt)
    keys_ = open_all(dealt)
    values = [5, 6]
    cts = encrypt(keys_[0], values)
    pre_echo(dealt, [0])
    assert decrypt_at(dealt, [1, 2], cts, keys_) == {1: values, 2: values}

    def retag(round_number: int, envelopes: list[federation_pb2.PartialEnvelope]) -> None:
        for envelope in envelopes:
            if envelope.site_name == "site-b":
                envelope.part = 7

    relay.tamper = retag
    relay.complaints.clear()
    assert decrypt_at(dealt, [0], cts, keys_)[0] == values  # from site-c's partials and its own

    blamed = [(whom, why) for _, whom, why in relay.complaints]
    assert blamed and all(why.startswith("the relay or the site:") for _, why in blamed), blamed


def test_trust_on_first_use_never_pins_a_key_the_relay_made_up(dealt):
    fresh(dealt)
    keys_ = open_all(dealt)
    me, peer = dealt.sites[0], dealt.sites[1]
    name = peer.identity.site_name
    pinned = me.peers.fingerprint_of(name)
    assert pinned is not None and me.peers.remove(name)
    me.peers.tofu = True
    try:
        task = dealt.task(me)
        manifest = threshold_echo.manifest_of(task, 2, AGGREGATE)
        mine = custody.EchoStatement(RUN, 2, me.identity.site_name, AGGREGATE, manifest)
        raw = custody.EchoStatement(RUN, 2, name, AGGREGATE, manifest).to_bytes()
        envelope = federation_pb2.EchoEnvelope(
            site_name=name, statement=raw, signature=peer.identity.sign(raw)
        )
        forged = federation_pb2.Task()
        forged.CopyFrom(task)
        for participant in forged.participants:
            if participant.site_name == name:
                participant.ed25519_public_key = identity.generate_ed25519()[1]

        assert threshold_echo.checked_echo(me, forged, keys_[0], envelope, mine) is None
        assert me.peers.fingerprint_of(name) is None  # nothing pinned from the relay's key
        assert threshold_echo.checked_echo(me, task, keys_[0], envelope, mine) is not None
    finally:
        me.peers.tofu = False
        me.peers.pin(name, pinned)
