"""Site identities: signatures, fingerprints and canonical statements."""

from __future__ import annotations

import pytest

from crypto import identity


def test_signature_verifies_and_a_changed_message_does_not() -> None:
    private, public = identity.generate_ed25519()
    message = identity.x25519_binding("hospital-a", b"\x01" * 32)

    signature = identity.sign(private, message)

    identity.verify(public, message, signature)
    with pytest.raises(ValueError, match="does not verify"):
        identity.verify(public, identity.x25519_binding("hospital-b", b"\x01" * 32), signature)


def test_signature_for_one_purpose_is_not_valid_for_another() -> None:
    private, public = identity.generate_ed25519()
    update = identity.update_statement(
        run_id="r",
        round_number=1,
        site_name="a",
        payload_sha256="00",
        weight=1,
        key_id="k",
        encoding="paillier/packed",
    )
    signature = identity.sign(private, update)

    dealing = identity.KeyDealing("r", "paillier", "fp", "a", "f" * 32, ())
    with pytest.raises(ValueError):
        identity.verify(public, dealing.to_bytes(), signature)


def test_key_statement_round_trips_and_refuses_non_canonical_bytes() -> None:
    dealing = identity.KeyDealing(
        "run-1",
        "paillier",
        "ab" * 16,
        "a",
        "1" * 32,
        (identity.Recipient("c", "3" * 32), identity.Recipient("b", "2" * 32)),
    )

    raw = dealing.to_bytes()

    parsed = identity.KeyDealing.from_bytes(raw)
    assert parsed.recipient("b") == identity.Recipient("b", "2" * 32)
    assert parsed.to_bytes() == raw
    with pytest.raises(ValueError, match="canonical"):
        identity.KeyDealing.from_bytes(raw.replace(b'"run_id"', b' "run_id"'))
    with pytest.raises(ValueError, match="not a Cohort key statement"):
        identity.KeyDealing.from_bytes(b"{}")


def test_fingerprints_are_normalised_and_bad_ones_refused() -> None:
    _, public = identity.generate_ed25519()
    fp = identity.fingerprint(public)

    shown = identity.format_fingerprint(fp)

    assert identity.normalise_fingerprint(shown.upper()) == fp
    assert len(shown.split()) == 8
    with pytest.raises(ValueError, match="32 hex digits"):
        identity.normalise_fingerprint("xyz")


def test_wrong_sizes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        identity.verify(b"\x00" * 31, b"m", b"\x00" * 64)
    with pytest.raises(ValueError, match="64 bytes"):
        identity.verify(b"\x00" * 32, b"m", b"\x00" * 10)
