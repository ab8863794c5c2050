"""What a hostile coordinator tried against a site's DP ledger (review of 2026-12-03).

- The ε a site sends is the ε it charged, the same whatever Poisson batches came out
  empty: a count of the steps taken moved with the exact row count, an un-noised figure.
- A batch size so small that a round's first batch is empty trains (it crashed after the
  round was charged, so the ε was spent for nothing).
- A plan with an absurd ε or a negative noise multiplier is refused at once (ε ≈ 1e20
  hung the site's task worker in the noise search).
- An audit asked for mid-run costs the run no round, and the run goes on after a restart
  (the accountant rebuilt from the ledger failed on the audit's entry).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from client.custody import SiteIdentity
from client.data import TabularData, load_sklearn
from client.dp_site import PrivacyGuard
from client.policy import SitePolicy, TaskRefused
from client.trainer import TabularTrainer
from protos import common_pb2, federation_pb2


def guard(state: Path) -> PrivacyGuard:
    identity = SiteIdentity.load_or_create(state, "site-a")
    return PrivacyGuard(state, "site-a", identity, SitePolicy(privacy_budget=50.0))


def task(round_number: int, kind: int = federation_pb2.TASK_KIND_TRAIN, **plan: float):
    out = federation_pb2.Task(run_id="run-a", round=round_number, task_id=f"t{round_number}")
    out.kind = kind
    out.privacy.CopyFrom(
        common_pb2.PrivacyPlan(mode="record", delta=1e-5, max_grad_norm=1.0, **plan)
    )
    return out


@pytest.fixture(scope="module")
def cancer() -> TabularData:
    return load_sklearn("breast_cancer")


def trainer(data: TabularData, rows: int) -> TabularTrainer:
    part = TabularData(data.x[:rows], data.y[:rows], data.feature_names)
    return TabularTrainer(part, device=torch.device("cpu"))


@pytest.mark.parametrize("rows", [190, 250])
def test_the_epsilon_sent_is_the_one_charged_and_a_tiny_batch_trains(tmp_path, cancer, rows):
    logging.disable(logging.WARNING)
    try:
        site, privacy_guard = trainer(cancer, rows), guard(tmp_path)
        config = {"rounds": 2, "local_epochs": 1, "batch_size": 1, "round": 1}
        # Batch 1: about e^-1 of the Poisson batches are empty, the first one included.
        privacy = privacy_guard.before_round(task(1, noise_multiplier=1.0), config, site)
        _, _, metrics = site.fit_private(site.get_parameters({}), config, privacy)
    finally:
        logging.disable(logging.NOTSET)
    charged = privacy_guard.ledger.entries[-1].statement

    sent = privacy_guard.after_round(privacy)

    assert metrics["dp_steps"] < charged["event"]["steps"]  # some batches were empty
    assert sent["dp_epsilon"] == charged["run_epsilon"]
    counted = privacy.accountant.get_epsilon(delta=1e-5)
    assert counted == pytest.approx(charged["run_epsilon"], rel=1e-9)


class Rows:
    """What the guard asks of a site's client before any training."""

    num_train = 200
    data_fingerprint = "f" * 64

    def fit_private(self, *args: object) -> None:
        raise AssertionError("not trained here")


@pytest.mark.parametrize("plan", [{"epsilon": 1e20}, {"epsilon": 101.0}])
def test_an_absurd_epsilon_is_refused_at_once(tmp_path, plan):
    started = time.monotonic()
    config = {"rounds": 3, "local_epochs": 1, "batch_size": 20}

    with pytest.raises(TaskRefused) as refused:
        guard(tmp_path).before_round(task(1, **plan), config, Rows())

    assert refused.value.code == "policy"
    assert time.monotonic() - started < 5
    assert guard(tmp_path).ledger.entries == []


def test_a_negative_noise_multiplier_is_refused(tmp_path):
    plan = common_pb2.PrivacyPlan(mode="record", epsilon=4.0, noise_multiplier=-1.0, delta=1e-5)
    broken = federation_pb2.Task(run_id="run-a", round=1, task_id="t1")
    broken.privacy.CopyFrom(plan)

    with pytest.raises(TaskRefused, match="does not make sense"):
        guard(tmp_path).before_round(broken, {"rounds": 3, "batch_size": 20}, Rows())


def test_an_audit_asked_mid_run_costs_no_round_and_survives_a_restart(tmp_path):
    config = {"rounds": 3, "local_epochs": 1, "batch_size": 20}
    first = guard(tmp_path)
    first.before_round(task(1, epsilon=4.0), config, Rows())
    audit = first.before_audit(task(2, federation_pb2.TASK_KIND_AUDIT, epsilon=4.0), Rows())
    assert audit is not None and audit.entry.statement["release"]

    restarted = guard(tmp_path)  # the agent restarts: its accountant comes from the ledger
    privacy = restarted.before_round(task(2, epsilon=4.0), config, Rows())
    third = restarted.before_round(task(3, epsilon=4.0), config, Rows())

    assert privacy is not None and third is not None
    assert [e.statement["round"] for e in restarted.ledger.round_entries("run-a", "f" * 64)] == [
        1,
        2,
        3,
    ]
