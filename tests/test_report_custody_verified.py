"""The report re-verifies a threshold run's custody statement; a forged one states nothing."""

from __future__ import annotations

from test_sovereign import secure_round  # noqa: F401

from coordinator.custody_view import report_custody
from coordinator.identity import logged_fingerprints
from coordinator.schema import Node, Run, ThresholdKey
from crypto import identity
from crypto import threshold_custody as custody
from explain.narrative import custody_pairs


def _forged(run_id: str, key_fingerprint: str) -> bytes:
    return custody.ThresholdStatement(
        run_id=run_id,
        key_fingerprint=key_fingerprint,
        custodian="custodian",
        custodian_fingerprint="00" * 16,
        threshold=3,
        parties=3,
        holders=tuple(custody.Holder(i, f"site-{i}", "11" * 16) for i in (1, 2, 3)),
        verification_keys_sha256=custody.keys_sha256(b""),
        erasure=custody.ERASURE,
    ).to_bytes()


def store_forged(session, run_id: str, key_fingerprint: str, threshold: int = 3) -> None:
    """The custody row a coordinator could write: a statement nobody signed (zeros)."""
    session.add(
        ThresholdKey(
            run_id=run_id,
            threshold=threshold,
            parties=3,
            verification_keys=b"",
            statement=_forged(run_id, key_fingerprint),
            signature=bytes(64),
        )
    )


def test_a_forged_custody_statement_is_reported_unverified_without_its_claims(
    secure_round,  # noqa: F811
):
    coordinator, _site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        fingerprint = session.get(Run, run.run_id).key_fingerprint
        store_forged(session, run.run_id, fingerprint)
    with coordinator.hub.db.transaction() as session:
        out = report_custody(session, session.get(Run, run.run_id))
    assert out is not None and out["verified"] is False
    assert "not created as a threshold run" in str(out["problem"])  # a single-key run
    for claim in ("threshold", "parties", "holders", "erasure", "custodian"):
        assert claim not in out
    shown = " ".join(value for _, value in custody_pairs(out))
    assert "UNVERIFIED" in shown and "erasure" not in shown.lower()


def test_a_statement_for_another_key_is_unverified(secure_round):  # noqa: F811
    coordinator, _site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        store_forged(session, run.run_id, "ab" * 16)
    with coordinator.hub.db.transaction() as session:
        out = report_custody(session, session.get(Run, run.run_id))
    assert out is not None and out["verified"] is False
    assert "another key" in str(out["problem"])


def test_an_unverified_custody_passes_the_report_schema(secure_round):  # noqa: F811
    """The report is still produced, saying the statement does not verify."""
    from coordinator.report import report_facts
    from explain.report import render_html

    coordinator, _site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        store_forged(session, run.run_id, "ab" * 16)
    facts = report_facts(coordinator.hub, run.run_id)
    assert facts["privacy"]["key_custody"]["verified"] is False
    assert "UNVERIFIED" in render_html(facts)  # validated against the schema, then shown


def test_a_statement_naming_a_holder_outside_the_run_is_unverified(secure_round):  # noqa: F811
    # The run made to look like a threshold run, so the holders are what is checked.
    coordinator, _site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        row = session.get(Run, run.run_id)
        row.config = {**row.config, "threshold": 3}
        store_forged(session, run.run_id, row.key_fingerprint)
    with coordinator.hub.db.transaction() as session:
        out = report_custody(session, session.get(Run, run.run_id))
    assert out is not None and out["verified"] is False
    assert "share holder 'site-1' is not a participant" in str(out["problem"])


def test_identities_are_taken_from_the_audit_log_not_from_a_swapped_node_row(
    secure_round,  # noqa: F811
):
    coordinator, site, run, _ = secure_round
    with coordinator.hub.db.transaction() as session:
        node_id = session.get(Run, run.run_id).participants[0]
        logged = logged_fingerprints(session, [node_id])[node_id]
        node = session.get(Node, node_id)
        assert identity.fingerprint(bytes(node.ed25519_public_key)) == logged
        _, attacker = identity.generate_ed25519()
        node.ed25519_public_key = attacker  # no site.key_changed row: an edit, not a rejoin
    with coordinator.hub.db.transaction() as session:
        assert logged_fingerprints(session, [node_id])[node_id] == logged
        assert identity.fingerprint(attacker) != logged
