"""A site decrypts one aggregate per round: a second verified subset of the round is refused.

Two aggregates of one round that both check ({A,B,C,D}, then {A,B,C}) differ by exactly
D's update; a site that decrypted (or partially decrypted) both would hand it over.
"""

from __future__ import annotations

import pytest
from phe import paillier

from client.policy import TaskRefused
from client.sovereign import checked_aggregate
from tests.hostile_round import RUN, Round, SiteUnderTest


@pytest.fixture(scope="module")
def public_key():
    public, _ = paillier.generate_paillier_keypair(n_length=512)
    return public


@pytest.fixture
def round_(public_key) -> Round:
    r = Round(public_key, "ABCD")
    for i, s in enumerate("ABCD"):
        r.encrypt(s, [v + i for v in (5, 6, 7)])
    return r


def test_a_second_verified_subset_of_a_round_is_refused(tmp_path, round_, public_key):
    site = SiteUnderTest(tmp_path, "C", round_)
    task = round_.task()
    whole = round_.aggregate("ABCD")
    checked_aggregate(site, task, whole, public_key)
    checked_aggregate(site, task, whole, public_key)  # the same aggregate again: a resume
    subset = round_.aggregate("ABC")
    with pytest.raises(TaskRefused) as refused:
        checked_aggregate(site, task, subset, public_key)
    assert refused.value.code == "verify"
    assert f"run {RUN} round 1" in str(refused.value) and "already decrypted" in str(refused.value)


def test_the_pin_survives_a_restart(tmp_path, round_, public_key):
    checked_aggregate(
        SiteUnderTest(tmp_path, "C", round_), round_.task(), round_.aggregate("ABC"), public_key
    )
    restarted = SiteUnderTest(tmp_path, "C", round_)
    with pytest.raises(TaskRefused, match="already decrypted"):
        checked_aggregate(restarted, round_.task(), round_.aggregate("ABCD"), public_key)


def test_an_aggregate_that_fails_its_checks_pins_nothing(tmp_path, round_, public_key):
    site = SiteUnderTest(tmp_path, "C", round_)
    bad = round_.aggregate("ABC")
    bad.contributions.pop()  # the product no longer matches the manifest
    with pytest.raises(TaskRefused):
        checked_aggregate(site, round_.task(), bad, public_key)
    assert site.pins.get(RUN).aggregates == {}
    checked_aggregate(site, round_.task(), round_.aggregate("ABCD"), public_key)
    assert site.pins.get(RUN).aggregates == {"1": round_.aggregate("ABCD").sha256}


def test_two_processes_on_one_state_folder_share_the_aggregate_pins(tmp_path):
    """`client export-model` opens the running agent's state folder: each holds a copy.

    Both copies must see every pin (a file lock and a fresh read on each change), or the
    export and the agent could each decrypt another aggregate of the same final round.
    """
    from client.pins import Observed, RunPins

    seen = Observed("run1", "paillier", "tabular_mlp", {}, "", {"A": "fa", "B": "fb"}, "c", "k")
    agent = RunPins.load(tmp_path, "A")  # started first
    agent.check(seen)
    export = RunPins.load(tmp_path, "A")  # a second process, later
    export.check(seen)
    export.pin_aggregate("run1", 5, "subset-without-the-victim")

    with pytest.raises(TaskRefused) as caught:
        agent.pin_aggregate("run1", 5, "all-sites")
    assert caught.value.code == "verify"

    agent.mark_trained("run1")  # a later save by the agent keeps the export's pin
    assert RunPins.load(tmp_path, "A").runs["run1"].aggregates == {"5": "subset-without-the-victim"}


def test_work_before_the_product_check_starts_only_for_a_signed_manifest(
    tmp_path, round_, public_key
):
    """A threshold site starts its partials at ``on_signed`` (client/schemes/paillier.py):
    an aggregate nobody signed (too few sites, a dropped signature) must not set it going;
    a signed one whose product fails does, and is then refused."""
    site = SiteUnderTest(tmp_path, "C", round_)
    seen: list[bytes] = []
    unsigned = round_.aggregate("ABCD")
    unsigned.contributions[0].signature = b"\0" * 64
    few = round_.aggregate("AB")
    for hostile in (unsigned, few):
        with pytest.raises(TaskRefused):
            checked_aggregate(site, round_.task(), hostile, public_key, on_signed=seen.append)
    assert seen == []
    wrong_product = round_.aggregate("ABC")
    wrong_product.contributions.pop()
    wrong_product.contributions.add().CopyFrom(round_.aggregate("ABCD").contributions[3])
    with pytest.raises(TaskRefused):
        checked_aggregate(site, round_.task(), wrong_product, public_key, on_signed=seen.append)
    assert len(seen) == 1  # signed: started, then refused at the product
    payload = checked_aggregate(
        site, round_.task(), round_.aggregate("ABCD"), public_key, on_signed=seen.append
    )
    assert seen[-1] == payload
