"""Site-level DP over a threshold (2-of-3) secure run, end to end over real gRPC on 127.0.0.1.

No site holds the key: each aggregate opens only with t holders' partial decryptions
(client/threshold_partials.py). Site-level DP's quorum check (client/dp_site_scheme.py
``check_contributions``) must come before any of them: a partial of a sum of fewer sites
than the noise is calibrated for would, combined with one more, open an under-noised sum.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from sqlalchemy import select

import crypto
from client.policy import SitePolicy, TaskRefused
from coordinator.privacy import site_layout
from coordinator.schema import (
    AuditEvent,
    ModelVersion,
    Round,
    Run,
    SiteAudit,
    ThresholdPartial,
    Update,
)
from protos import admin_pb2, common_pb2, wire
from tests.helpers import TEST_ENCODING, breast_cancer_sites, wait_for_state

DELTA = 1e-5
DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)


# What a DP run's update header may say: the privacy accounting, which the site's signed
# ledger entries carry anyway (client/dp_site.py, client/dp_site_rounds.py).
ACCOUNTING = {
    "dp_epsilon",
    "dp_delta",
    "dp_noise_multiplier",
    "dp_site_sigma_levels",
    "ledger_epsilon",
    "privacy_budget_left",
}


def assert_counts_and_metrics_withheld(hub, run_id: str) -> None:
    """What the coordinator stored of a DP run's headers: no count, no data metric.

    A breached coordinator reads its database and audit log: each update says 0 examples
    and carries only the accounting; each round's example total is 0; no audit summary
    holds held-out scores.
    """
    with hub.db.transaction() as session:
        updates = session.scalars(select(Update).where(Update.run_id == run_id)).all()
        rounds = session.scalars(select(Round).where(Round.run_id == run_id)).all()
        audits = session.scalars(select(SiteAudit).where(SiteAudit.run_id == run_id)).all()
        accepted = session.scalars(
            select(AuditEvent.details).where(
                AuditEvent.run_id == run_id, AuditEvent.kind == "update.accepted"
            )
        ).all()
        assert updates and accepted
        for update in updates:
            assert update.num_examples == 0 and update.weight == 1
            assert "dp_epsilon" in update.metrics and set(update.metrics) <= ACCOUNTING
        assert all(json.loads(d)["num_examples"] == 0 for d in accepted)
        for closed in rounds:
            assert set(closed.metrics or {}) <= {"examples"} | ACCOUNTING
            assert (closed.metrics or {}).get("examples", 0) == 0
        assert all("holdout_metrics" not in (a.summary or {}) for a in audits)


def exports(sites, run_id: str) -> list[object]:
    """Every site exports the final model at once (a threshold decryption needs t of them).

    Each result is the weights or the exception; at once, so that a site that did publish
    a partial is not left waiting for the others' until its deadline.
    """
    results: list[object] = [None] * len(sites)

    def export(i: int) -> None:
        try:
            results[i] = sites[i].export_model(run_id)
        except Exception as exc:  # judged in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=export, args=(i,)) for i in range(len(sites))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    return results


def partials_and_echoes(hub, run_id: str, round_number: int) -> tuple[int, int]:
    """Partials stored and echoes published at the coordinator for one round."""
    with hub.db.transaction() as session:
        partials = session.scalars(
            select(ThresholdPartial.id).where(
                ThresholdPartial.run_id == run_id, ThresholdPartial.round == round_number
            )
        ).all()
        echoes = session.scalars(
            select(AuditEvent.details).where(
                AuditEvent.run_id == run_id, AuditEvent.kind == "echo.published"
            )
        ).all()
    return len(partials), sum(json.loads(d)["round"] == round_number for d in echoes)


@pytest.mark.slow
def test_a_threshold_site_dp_run_completes_and_a_sub_quorum_sum_gets_no_partial(
    coordinator, agents, tmp_path
):
    admin = coordinator.admin()
    hub = coordinator.hub
    # These sites would decrypt a sum of two sites (their own policy allows it): only
    # site-level DP's quorum of 3 stands between a hostile coordinator and a partial.
    sites = agents.start(
        coordinator.address,
        breast_cancer_sites(3),
        tmp_path,
        names=["a", "b", "c"],
        policy=SitePolicy(min_aggregate_sites=2),
    )
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=3,
            local_epochs=1,
            lr=0.005,
            round_deadline_seconds=180,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            threshold=2,
            config_json=json.dumps({"encoding": TEST_ENCODING, "audit": False}),
            privacy=common_pb2.PrivacyPlan(mode="site", epsilon=8.0, delta=DELTA),
        )
    )
    info = wait_for_state(admin, run.run_id, DONE, timeout=360)
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    custody = info.threshold_custody
    assert (custody.threshold, custody.parties) == (2, 3)

    # Every stored update is a ciphertext vector of the DP layout at weight 1.
    with hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None
        layout = site_layout(stored)
        public = crypto.public_key_from_bytes(stored.public_key)
        rows = session.scalars(
            select(Update).where(Update.run_id == run.run_id).order_by(Update.node_id)
        ).all()
        blobs = [(u.round, u.weight, u.encoding, hub.blobs.get(u.blob_sha256)) for u in rows]
    assert layout is not None and layout.quorum == 3
    width = crypto.ciphertext_width(public)
    assert sorted(r for r, *_ in blobs) == [1, 1, 1, 2, 2, 2]
    for _, weight, encoding, blob in blobs:
        assert weight == 1 and encoding == wire.PAILLIER_PACKED
        assert len(blob) == layout.num_plaintexts * width
        crypto.validate_ciphertexts(crypto.ciphertexts_from_bytes(blob, width), public)
        with pytest.raises(wire.PayloadError):
            wire.tensor_specs(blob)
    assert_counts_and_metrics_withheld(hub, run.run_id)
    # Round 1's sum was decrypted by partials during the run; round 2's is not yet.
    assert partials_and_echoes(hub, run.run_id, 1)[0] >= 2
    assert partials_and_echoes(hub, run.run_id, 2) == (0, 0)

    # A hostile coordinator offers the final round as the product of two sites' genuine,
    # signed updates (leaving the third out of the manifest): a valid aggregate, but of
    # fewer sites than the noise is calibrated for.
    round_two = [(u, blob) for u, (r, _, _, blob) in zip(rows, blobs, strict=True) if r == 2]
    product = crypto.ciphertexts_to_bytes(
        crypto.add_encrypted(
            [crypto.ciphertexts_from_bytes(blob, width) for _, blob in round_two[:2]], public
        ),
        width,
    )
    forged = hub.blobs.put(product)
    left_out = round_two[2][0].id
    with hub.db.transaction() as session:
        version = session.scalar(
            select(ModelVersion).where(ModelVersion.run_id == run.run_id, ModelVersion.round == 2)
        )
        assert version is not None
        honest = (version.blob_sha256, version.total_weight, version.num_updates)
        version.blob_sha256, version.total_weight, version.num_updates = forged, 2, 2
        session.get(Update, left_out).round = 99  # out of round 2's manifest

    refused = exports(sites, run.run_id)
    for result in refused:
        assert isinstance(result, TaskRefused), result
        assert result.code == "verify"
        assert "adds 2 sites" in result.reason and "at least 3" in result.reason
    # No site echoed it, nor published a partial of it.
    assert partials_and_echoes(hub, run.run_id, 2) == (0, 0)

    # The honest aggregate back: the refusal pinned nothing, and it opens (t partials).
    with hub.db.transaction() as session:
        version = session.scalar(
            select(ModelVersion).where(ModelVersion.run_id == run.run_id, ModelVersion.round == 2)
        )
        assert version is not None
        version.blob_sha256, version.total_weight, version.num_updates = honest
        session.get(Update, left_out).round = 2
    finals = exports(sites, run.run_id)
    for result in finals:
        assert not isinstance(result, Exception), result
    for other in finals[1:]:
        for x, y in zip(finals[0], other, strict=True):  # type: ignore[call-overload]
            np.testing.assert_array_equal(x, y)
    assert partials_and_echoes(hub, run.run_id, 2)[0] >= 2
