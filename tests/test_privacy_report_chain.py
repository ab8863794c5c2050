"""The report's ε per site against a coordinator that re-files, drops or borrows signed entries.

Every entry here is authentic (signed by the site's own ledger, chained by ``prev``): the
coordinator can only choose which copies it files. The report must not let that choice
lower a site's ε or hide a missing round.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from test_sovereign import secure_round  # noqa: F401  (fixture)

from client.ledger import Ledger
from coordinator import auditlog
from coordinator.ledger_copies import _signed_plan, canonical, privacy_facts
from coordinator.schema import AuditEvent, Node, Run, SiteAudit, Update
from crypto import identity
from protos import federation_pb2

PLAN = {"mode": "record", "epsilon": 4.0, "delta": 1e-5, "noise_multiplier": 0.0,
        "max_grad_norm": 1.0, "accountant": "rdp"}  # fmt: skip


def _setup(coordinator, site, run, tmp_path):
    with coordinator.hub.db.transaction() as session:
        row = session.get(Run, run.run_id)
        row.config = {**row.config, "privacy": PLAN}
        row.rounds = 3
        public = bytes(session.get(Node, site.node_id).ed25519_public_key)
        plan = _signed_plan(row.config)
    return Ledger(tmp_path / "ledger.jsonl", "custodian", site.ed25519_private, public), plan


def _charge(ledger, run_id, rnd, eps, plan):
    return ledger.charge(
        {
            "run_id": run_id,
            "round": rnd,
            "plan": plan,
            "run_epsilon": eps,
            "ledger_epsilon_after": eps,
            "mechanism": "record",
            "event": {},
        }  # fmt: skip
    )


def _file(site, run_id, entry):
    return site.stub.LedgerSubmit(
        federation_pb2.LedgerEntry(
            run_id=run_id, statement=canonical(entry.statement), signature=entry.signature
        ),
        metadata=site.metadata,
    )


def _facts(coordinator, run_id):
    with coordinator.hub.db.transaction() as session:
        return privacy_facts(session, session.get(Run, run_id))


def test_refiling_an_early_entry_last_does_not_lower_epsilon(secure_round, tmp_path):  # noqa: F811
    coordinator, site, run, _ = secure_round
    ledger, plan = _setup(coordinator, site, run, tmp_path)
    entries = [_charge(ledger, run.run_id, r, float(r), plan) for r in (1, 2, 3)]
    for entry in entries:
        _file(site, run.run_id, entry)
    with coordinator.hub.db.transaction() as session:
        first = json.loads(
            session.scalars(select(AuditEvent).where(AuditEvent.kind == "privacy.spent"))
            .first()
            .details
        )
        auditlog.append(
            session, "privacy.spent", run_id=run.run_id, actor=site.node_id, details=first
        )
    facts = _facts(coordinator, run.run_id)
    [row] = facts["sites"]
    assert row["epsilon"] == 3.0 and row["ledger_epsilon_after"] == 3.0
    assert row["rounds_charged"] == 3
    assert any("second copy" in u["problem"] for u in facts["unverified_entries"])


def test_an_entry_signed_for_another_run_does_not_count(secure_round, tmp_path):  # noqa: F811
    coordinator, site, run, _ = secure_round
    ledger, plan = _setup(coordinator, site, run, tmp_path)
    _file(site, run.run_id, _charge(ledger, run.run_id, 1, 3.0, plan))
    other = _charge(ledger, "some-older-run", 1, 0.01, plan)
    with coordinator.hub.db.transaction() as session:
        auditlog.append(session, "privacy.spent", run_id=run.run_id, actor=site.node_id,
                        details={"site": "custodian", "statement": other.statement,
                                 "signature": other.signature.hex()})  # fmt: skip
    facts = _facts(coordinator, run.run_id)
    assert [s["epsilon"] for s in facts["sites"]] == [3.0]
    assert any("some-older-run" in u["problem"] for u in facts["unverified_entries"])


def test_a_dropped_middle_round_and_another_plan_are_flagged(secure_round, tmp_path):  # noqa: F811
    coordinator, site, run, _ = secure_round
    ledger, plan = _setup(coordinator, site, run, tmp_path)
    one, _two, three = [_charge(ledger, run.run_id, r, float(r), plan) for r in (1, 2, 3)]
    _file(site, run.run_id, one)
    _file(site, run.run_id, three)  # the coordinator never files round 2
    facts = _facts(coordinator, run.run_id)
    assert any("round(s) 2" in u["problem"] for u in facts["unverified_entries"])
    # The run's plan changed after the sites signed: their entries no longer count.
    with coordinator.hub.db.transaction() as session:
        row = session.get(Run, run.run_id)
        row.config = {**row.config, "privacy": {**PLAN, "epsilon": 8.0}}
    facts = _facts(coordinator, run.run_id)
    assert facts["sites"] == []
    assert all("plan" in u["problem"] for u in facts["unverified_entries"])


def test_out_of_chain_order_is_flagged(secure_round, tmp_path):  # noqa: F811
    coordinator, site, run, _ = secure_round
    ledger, plan = _setup(coordinator, site, run, tmp_path)
    # The site's ledger says round 2 came before round 1 (prev links): not a real history.
    two = _charge(ledger, run.run_id, 2, 2.0, plan)
    one = _charge(ledger, run.run_id, 1, 1.0, plan)
    _file(site, run.run_id, two)
    _file(site, run.run_id, one)
    facts = _facts(coordinator, run.run_id)
    assert any("chain order" in u["problem"] for u in facts["unverified_entries"])


# -- review of 2026-12-03: a coordinator that swaps a key, or files nothing ------------------


def test_entries_re_signed_under_a_key_swapped_into_the_node_row_are_unverified(
    secure_round,  # noqa: F811
    tmp_path,
):
    coordinator, site, run, _ = secure_round
    ledger, plan = _setup(coordinator, site, run, tmp_path)
    for r in (1, 2, 3):
        _file(site, run.run_id, _charge(ledger, run.run_id, r, float(r) * 3, plan))
    private, public = identity.generate_ed25519()
    with coordinator.hub.db.transaction() as session:
        session.get(Node, site.node_id).ed25519_public_key = public  # no site.key_changed row
        for row in session.scalars(select(AuditEvent).where(AuditEvent.kind == "privacy.spent")):
            details = json.loads(row.details)
            details["statement"]["run_epsilon"] = details["statement"]["ledger_epsilon_after"] = (
                0.01
            )
            details["signature"] = identity.sign(private, canonical(details["statement"])).hex()
            row.details = json.dumps(details)

    facts = _facts(coordinator, run.run_id)

    assert facts["sites"] == []  # no entry counts, so no ε of 0.01 is shown
    problems = [u["problem"] for u in facts["unverified_entries"]]
    assert problems and all("not the one it registered" in p for p in problems[:3]), problems


def test_a_site_that_trained_or_audited_with_no_charge_on_file_is_named(
    secure_round,  # noqa: F811
    tmp_path,
):
    coordinator, site, run, task = secure_round
    _setup(coordinator, site, run, tmp_path)  # a DP run; the coordinator files no entry
    with coordinator.hub.db.transaction() as session:
        session.add(
            Update(
                run_id=run.run_id,
                round=1,
                node_id=site.node_id,
                task_id=task.task_id,
                blob_sha256="ab" * 32,
                size=1,
                encoding="x",
                num_examples=0,
                weight=1,
            )
        )
        session.add(SiteAudit(run_id=run.run_id, node_id=site.node_id, summary={}))

    problems = [u["problem"] for u in _facts(coordinator, run.run_id)["unverified_entries"]]

    assert "sent updates for round(s) 1 and no verified ledger entry" in problems, problems
    assert "its audit summary is on file with no verified charge for it" in problems
