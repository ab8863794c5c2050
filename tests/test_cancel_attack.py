"""The review's cancellation attack (H1) against the site's real gate: refused, naming the cheat.

2-of-3 threshold run of A (colluder), B (victim), C (honest). B and C submit honestly; the
coordinator shows C's ciphertexts to A, which submits, signed, their inverses mod n². The
product of {A, B, C} is exactly B's update. Every manifest and product check passes; the
proof of plaintext knowledge does not, so honest C decrypts (or partially decrypts) nothing.
"""

from __future__ import annotations

import hashlib

import gmpy2
import pytest

from client.policy import TaskRefused
from client.sovereign import checked_aggregate
from crypto import plaintext_proof
from crypto import threshold as tp
from tests.hostile_round import RUN, Round, SiteUnderTest


@pytest.fixture(scope="module")
def public_key():
    public, _, _ = tp.deal(2, 3, 1024, insecure_test_size=True)
    return public


@pytest.fixture
def round_(public_key) -> Round:
    r = Round(public_key, "ABC")
    r.encrypt("B", [123456789, 42, 7])
    r.encrypt("C", [1000, 2000, 3000])
    return r


def inverted(round_: Round, site: str) -> list[int]:
    n2 = round_.public_key.nsquare
    return [int(gmpy2.invert(c, n2)) for c in round_.ciphertexts[site]]


def test_the_inverse_of_an_honest_update_is_refused_naming_the_colluder(tmp_path, round_):
    n = round_.public_key.n
    forged = inverted(round_, "C")
    # A's best proof: it knows nothing of C's opening, so it proves with what it has.
    own = plaintext_proof.prove(
        n, forged, [0, 0, 0], [1, 1, 1], run_id=RUN, round_number=1, site="A"
    )
    round_.submit("A", forged, proof=own.to_bytes(n))
    aggregate = round_.aggregate("ABC")
    assert round_.blobs[aggregate.sha256] == round_.blobs[round_.headers["B"].payload_sha256]
    site = SiteUnderTest(tmp_path, "C", round_)
    with pytest.raises(TaskRefused) as refused:
        checked_aggregate(site, round_.task(), aggregate, round_.public_key)
    assert refused.value.code == "verify"
    assert "site A did not prove it knows the plaintexts" in str(refused.value)
    assert site.pins.get(RUN).aggregates == {}  # nothing pinned, nothing decrypted


def test_an_update_without_a_proof_is_refused_naming_its_site(tmp_path, round_):
    round_.submit("A", inverted(round_, "C"))
    with pytest.raises(TaskRefused, match="A's update carries no proof"):
        checked_aggregate(
            SiteUnderTest(tmp_path, "C", round_),
            round_.task(),
            round_.aggregate("ABC"),
            round_.public_key,
        )


def test_a_proof_the_coordinator_swapped_fails_the_signature_not_the_site(tmp_path, round_):
    """Replaying B's (valid) proof for A's update: A's signature covers A's own proof."""
    round_.encrypt("A", [1, 2, 3])
    aggregate = round_.aggregate("ABC")
    aggregate.contributions[0].plaintext_proof = round_.headers["B"].plaintext_proof
    with pytest.raises(TaskRefused, match="A's signature does not check"):
        checked_aggregate(
            SiteUnderTest(tmp_path, "C", round_), round_.task(), aggregate, round_.public_key
        )


def test_an_honest_round_with_proofs_checks(tmp_path, round_):
    round_.encrypt("A", [1, 2, 3])
    aggregate = round_.aggregate("ABC")
    site = SiteUnderTest(tmp_path, "C", round_)
    checked_aggregate(site, round_.task(), aggregate, round_.public_key)
    assert site.pins.get(RUN).aggregates == {"1": aggregate.sha256}
    assert hashlib.sha256(round_.blobs[aggregate.sha256]).hexdigest() == aggregate.sha256
