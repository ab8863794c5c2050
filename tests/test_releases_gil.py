"""Big-number work in callers' threads lets other threads run (crypto._parallel.releases_gil).

What is checked is the switch, not a timing: inside a wrapped call the thread's gmpy2
context allows releasing the GIL; after it (or after it raised) the thread's own context
is back; the wrapped crypto entry points still compute the same results.
"""

from __future__ import annotations

import gmpy2
import pytest

import crypto
from client.verify import product_matches
from crypto import plaintext_proof
from crypto import threshold as tp
from crypto._parallel import releases_gil


def test_the_context_allows_release_inside_and_is_restored_after() -> None:
    seen: list[tuple[bool, int]] = []

    @releases_gil
    def inside() -> None:
        seen.append((gmpy2.get_context().allow_release_gil, gmpy2.get_context().precision))

    @releases_gil
    def failing() -> None:
        raise RuntimeError("boom")

    before = gmpy2.get_context().allow_release_gil
    with gmpy2.context(precision=200):  # the caller's other settings are kept inside
        inside()
    with pytest.raises(RuntimeError):
        failing()
    assert seen == [(True, 200)]
    assert gmpy2.get_context().allow_release_gil == before


@pytest.mark.parametrize(
    "entry",
    [
        crypto.encrypt_packed,
        crypto.decrypt_packed,
        crypto.add_encrypted,
        plaintext_proof.verify,
        plaintext_proof._prove,
        product_matches,
        tp.make_partial_decryption,
        tp.verify_partials,
        tp.combine,
    ],
    ids=lambda f: f.__name__,
)
def test_the_hot_entry_points_are_wrapped(entry) -> None:  # type: ignore[no-untyped-def]
    assert entry.__code__ is releases_gil(len).__code__  # releases_gil's own wrapper
    assert entry.__wrapped__ is not None


def test_a_proof_made_and_checked_with_the_gil_released_still_verifies() -> None:
    public, private = crypto.generate_keypair(1024, insecure_test_size=True)
    plaintexts = [1, 2, 3]
    units: list[int] = []
    cts = crypto.encrypt_packed(public, plaintexts, workers=1, units_out=units)
    proof = plaintext_proof.prove(
        public.n, cts, plaintexts, units, run_id="r", round_number=1, site="s"
    )
    plaintext_proof.verify(public.n, cts, proof, run_id="r", round_number=1, site="s")
    with pytest.raises(plaintext_proof.ProofError):
        plaintext_proof.verify(public.n, cts, proof, run_id="r", round_number=2, site="s")
    assert [private.raw_decrypt(c) for c in cts] == plaintexts
