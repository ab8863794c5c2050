"""Record-level DP end to end over real gRPC: the ledger, the budget refusal, the copy.

Three breast-cancer sites; the third keeps a budget that one DP run fits and two do not.
The second run goes ahead without it; it refuses with code ``budget`` before touching
its data, the operator reads why (`runs show`, the audit log), its ledger survives a
restart, and the coordinator's copies of the entries verify — until someone changes one.
"""

from __future__ import annotations

import json

import grpc
import pytest
from sqlalchemy import select

from client.ledger import Ledger, LedgerError, compose
from client.policy import SitePolicy
from coordinator.ledger_copies import ledger_entries
from coordinator.schema import AuditEvent
from protos import admin_pb2, common_pb2
from tests.helpers import breast_cancer_sites, wait_for_state
from tests.test_dp_threshold_runs import assert_counts_and_metrics_withheld

EPSILON = 2.0
DELTA = 1e-5
BUDGET = 2.5  # one run of ε=2 fits; two composed do not (checked below, not assumed)
DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)


def dp_run(admin, **plan: object) -> admin_pb2.RunInfo:
    return admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=2,
            local_epochs=1,
            lr=0.01,
            round_deadline_seconds=60,
            config_json=json.dumps({"audit": False}),
            privacy=common_pb2.PrivacyPlan(
                **{"mode": "record", "epsilon": EPSILON, "delta": DELTA, **plan}  # type: ignore[arg-type]
            ),
        )
    )


@pytest.mark.slow
def test_a_site_at_its_budget_refuses_the_next_run_which_goes_on_without_it(
    coordinator, agents, tmp_path
):
    admin = coordinator.admin()
    trainers = breast_cancer_sites(3)
    agents.start(coordinator.address, trainers[:2], tmp_path, names=["a", "b"])
    [careful] = agents.start(
        coordinator.address,
        trainers[2:],
        tmp_path,
        names=["c"],
        policy=SitePolicy(privacy_budget=BUDGET, privacy_delta=DELTA),
    )
    first = dp_run(admin)
    info = wait_for_state(admin, first.run_id, DONE, timeout=300)
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    assert not info.refusals
    ledger = careful.privacy.ledger
    spent = ledger.spent(trainers[2].data_fingerprint, DELTA)
    assert 0 < spent <= BUDGET
    rounds_before = trainers[2].rounds_trained
    # The second run would pass the budget: the projection says so before any round.
    event = ledger.entries[0].statement["event"]
    projected = compose(
        ledger.events(trainers[2].data_fingerprint) + [{**event, "steps": event["steps"] * 2}],
        DELTA,
    )
    assert projected > BUDGET

    second = dp_run(admin)
    info = wait_for_state(admin, second.run_id, DONE, timeout=300)
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    refused = [r for r in info.refusals if r.site_name == "c"]
    assert refused and {r.code for r in refused} == {"budget"}
    assert "past its budget of 2.5" in refused[0].reason
    assert trainers[2].rounds_trained == rounds_before  # its data was not used
    assert len(ledger.entries) == 2  # nothing charged for the refused run
    log = admin.GetAuditLog(admin_pb2.GetAuditLogRequest(run_id=second.run_id))
    refusals = [e for e in log.entries if e.kind == "task.refused"]
    assert refusals and all(json.loads(e.details_json)["code"] == "budget" for e in refusals)

    # Every site that trained reports the ε its accountant counted, per round, and no
    # count or metric of its data (plain FedAvg then weighs each site 1).
    assert_counts_and_metrics_withheld(coordinator.hub, first.run_id)

    # The ledger survives a restart (reloaded from disk, every signature checked).
    reloaded = Ledger.for_site(tmp_path / "c", "c", careful.identity)
    assert [e.statement for e in reloaded.entries] == [e.statement for e in ledger.entries]
    assert reloaded.spent(trainers[2].data_fingerprint, DELTA) == pytest.approx(spent)

    # The coordinator's copies verify against each site's identity key...
    with coordinator.server.hub.db.transaction() as session:
        copies = ledger_entries(session, first.run_id)
    assert {c["site"] for c in copies} == {"a", "b", "c"}
    assert len(copies) == 6 and all(c["verified"] for c in copies)
    # ...until someone lowers an ε in the coordinator's database.
    with coordinator.server.hub.db.transaction() as session:
        row = session.scalars(
            select(AuditEvent).where(
                AuditEvent.run_id == first.run_id, AuditEvent.kind == "privacy.spent"
            )
        ).first()
        assert row is not None
        details = json.loads(row.details)
        details["statement"]["run_epsilon"] = 0.01
        row.details = json.dumps(details)
    with coordinator.server.hub.db.transaction() as session:
        copies = ledger_entries(session, first.run_id)
    tampered = [c for c in copies if not c["verified"]]
    assert len(tampered) == 1 and "does not verify" in tampered[0]["problem"]

    # The report uses only verified entries, says one failed, and cites the spend per site.
    from coordinator.report import report_facts
    from explain.report import render_html

    facts = report_facts(coordinator.server.hub, first.run_id)
    dp = facts["privacy"]["differential_privacy"]
    assert [s["site"] for s in dp["sites"]] == ["a", "b", "c"]
    # The altered entry, and the round it leaves without a verified charge for its site.
    problems = sorted(u["problem"] for u in dp["unverified_entries"])
    assert len(problems) == 2, problems
    assert "does not verify" in problems[1] and "no verified ledger entry for round" in problems[0]
    careful_row = next(s for s in dp["sites"] if s["site"] == "c")
    assert careful_row["budget"] == BUDGET and careful_row["ledger_epsilon_after"] > 0
    assert 0.01 not in [s["epsilon"] for s in dp["sites"]]
    dpia = next(r for r in facts["regulations"] if r["article"] == "Art. 35")
    assert "c: DP-SGD" in dpia["evidence"] and "budget of 2.5" in dpia["evidence"]
    assert "Differential privacy per site" in render_html(facts)


def test_a_changed_local_ledger_does_not_load(tmp_path):
    from client.custody import SiteIdentity

    site = SiteIdentity.load_or_create(tmp_path, "a")
    book = Ledger.for_site(tmp_path, "a", site)
    event = {"kind": "poisson_gaussian", "sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 10}
    for round_number in (1, 2):
        book.charge({"run_id": "r", "round": round_number, "dataset": "d", "event": event})
    assert (book.path.stat().st_mode & 0o777) == 0o600
    assert Ledger.for_site(tmp_path, "a", site).spent("d", DELTA) == pytest.approx(
        compose([{**event, "steps": 20}], DELTA)
    )
    lines = book.path.read_text().splitlines()
    # Dropping the first charge (lower spend) breaks the chain even though line 2 is signed.
    book.path.write_text(lines[1] + "\n")
    with pytest.raises(LedgerError, match="chain"):
        Ledger.for_site(tmp_path, "a", site)
    # Editing a charge breaks its signature.
    raw = json.loads(lines[0])
    raw["statement"]["event"]["steps"] = 1
    book.path.write_text(json.dumps(raw) + "\n" + lines[1] + "\n")
    with pytest.raises(LedgerError, match="does not verify"):
        Ledger.for_site(tmp_path, "a", site)


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ({"mode": "record", "epsilon": 0.0, "delta": 1e-5}, "privacy.epsilon"),
        ({"mode": "record", "epsilon": 3.0, "delta": 0.5}, "privacy.delta"),
        ({"mode": "record", "epsilon": 3.0, "delta": 1e-5, "noise_multiplier": 1.0}, "not both"),
        ({"mode": "laplace", "epsilon": 3.0, "delta": 1e-5}, "privacy.mode"),
        (
            {"mode": "record", "epsilon": 3.0, "delta": 1e-5, "accountant": "gdp"},
            "privacy.accountant",
        ),
        ({"mode": "record", "epsilon": float("nan"), "delta": 1e-5}, "privacy.epsilon"),
        # Site-level DP: only inside an encrypted sum, with ε, and a quorum a round reaches.
        ({"mode": "site", "epsilon": 3.0, "delta": 1e-5}, "needs a secure run"),
        (
            {"mode": "site", "delta": 1e-5, "noise_multiplier": 1.0, "secure": True},
            "takes an epsilon",
        ),
        (
            {"mode": "site", "epsilon": 3.0, "delta": 1e-5, "quorum": 5, "secure": True},
            "privacy.quorum 5",
        ),
        (
            {"mode": "site", "epsilon": 3.0, "delta": 1e-5, "max_sites": 1, "secure": True},
            "privacy.max_sites",
        ),
        ({"mode": "record", "epsilon": 3.0, "delta": 1e-5, "quorum": 2}, "site' only"),
    ],
)
def test_a_bad_privacy_plan_is_invalid_argument_naming_the_field(coordinator, plan, field):
    admin = coordinator.admin()
    plan = dict(plan)
    secure = common_pb2.SECURE_SCHEME_PAILLIER if plan.pop("secure", False) else 0
    with pytest.raises(grpc.RpcError) as caught:
        admin.CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=2,
                min_clients=3,
                secure=secure,
                privacy=common_pb2.PrivacyPlan(**plan),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()
    assert not admin.ListRuns(admin_pb2.ListRunsRequest()).runs


def test_config_json_cannot_smuggle_a_privacy_plan(coordinator):
    with pytest.raises(grpc.RpcError) as caught:
        coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp",
                rounds=2,
                config_json=json.dumps({"privacy": {"mode": "record", "epsilon": 100}}),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "privacy" in caught.value.details()


def test_cohort_client_ledger_prints_the_spend_and_refuses_a_changed_file(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from client.custody import SiteIdentity

    site = SiteIdentity.load_or_create(tmp_path, "a")
    book = Ledger.for_site(tmp_path, "a", site)
    event = {"kind": "poisson_gaussian", "sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 50}
    book.charge({"run_id": "r", "round": 1, "dataset": "d", "event": event})
    args = ["client", "ledger", "--name", "a", "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--json", "--privacy-budget", "8"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout.strip().splitlines()[-1])["datasets"]
    assert row["epsilon_spent"] == pytest.approx(compose([event], DELTA))
    assert row["remaining"] == pytest.approx(8 - row["epsilon_spent"])
    book.path.write_text(book.path.read_text().replace('"steps": 50', '"steps": 5'))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "does not verify" in result.output
