"""The site's privacy gate against a hostile coordinator: what a task may not change mid-run."""

from __future__ import annotations

import pytest

from client.custody import SiteIdentity
from client.dp_site import PrivacyGuard
from client.policy import SitePolicy, TaskRefused
from protos import common_pb2, federation_pb2


class Site:
    """What the gate reads of a site's client: its row count and data fingerprint."""

    num_train = 200
    data_fingerprint = "f" * 64

    def fit_private(self, *args: object) -> None:  # pragma: no cover - never trained here
        raise AssertionError


def task(round_number: int, epsilon: float | None = 4.0, run: str = "run-1") -> federation_pb2.Task:
    message = federation_pb2.Task(run_id=run, round=round_number, task_id=f"t{round_number}")
    if epsilon is not None:
        message.privacy.CopyFrom(
            common_pb2.PrivacyPlan(mode="record", epsilon=epsilon, delta=1e-5, max_grad_norm=1.0)
        )
    return message


CONFIG = {"rounds": 3, "local_epochs": 1, "batch_size": 20}


@pytest.fixture
def guard(tmp_path) -> PrivacyGuard:
    identity = SiteIdentity.load_or_create(tmp_path, "a")
    return PrivacyGuard(tmp_path, "a", identity, SitePolicy(privacy_budget=10.0))


def test_the_first_round_charges_the_ledger_before_any_data_is_used(guard):
    privacy = guard.before_round(task(1), CONFIG, Site())
    assert privacy is not None and len(guard.ledger.entries) == 1
    assert privacy.metrics["dp_epsilon"] < 4.0 < 10.0
    assert (
        guard.ledger.entries[0].statement["event"]["noise_multiplier"]
        == privacy.schedule.noise_multiplier
    )


@pytest.mark.parametrize(
    ("hostile", "code"),
    [
        (lambda: task(2, epsilon=50.0), "pin"),  # a looser plan mid-run
        (lambda: task(2, epsilon=None), "pin"),  # DP dropped mid-run
        (lambda: task(4), "pin"),  # rounds past the plan this site pinned
        (lambda: task(1), "pin"),  # the same round re-issued (another task, same round)
    ],
    ids=["looser-plan", "dp-dropped", "extra-round", "round-replayed"],
)
def test_a_coordinator_cannot_change_a_runs_privacy_mid_run(guard, hostile, code):
    guard.before_round(task(1), CONFIG, Site())
    with pytest.raises(TaskRefused) as caught:
        guard.before_round(hostile(), {**CONFIG, "rounds": 10}, Site())
    assert caught.value.code == code
    assert len(guard.ledger.entries) == 1  # nothing charged for a refused round


def test_a_round_is_charged_once_however_often_it_is_reissued(guard):
    """A hostile coordinator re-issuing round 1 could spend the budget without training."""
    guard.before_round(task(1), CONFIG, Site())
    for _ in range(5):
        with pytest.raises(TaskRefused) as caught:
            guard.before_round(task(1), CONFIG, Site())
        assert caught.value.code == "pin" and "already charged" in caught.value.reason
    guard.before_round(task(2), CONFIG, Site())
    with pytest.raises(TaskRefused):
        guard.before_round(task(1), CONFIG, Site())  # nor an older round after a newer one
    assert [e.statement["round"] for e in guard.ledger.entries] == [1, 2]


@pytest.mark.parametrize(
    "hostile", [{"local_epochs": 30}, {"batch_size": 16}], ids=["more-epochs", "smaller-batches"]
)
def test_a_task_cannot_take_more_steps_than_the_ledger_charged(guard, hostile):
    """The ledger charges the first round's steps; more epochs would be uncharged spend."""
    guard.before_round(task(1), CONFIG, Site())
    with pytest.raises(TaskRefused) as caught:
        guard.before_round(task(2), {**CONFIG, **hostile}, Site())
    assert caught.value.code == "pin" and "charged its privacy ledger" in caught.value.reason
    assert len(guard.ledger.entries) == 1


class Rows(Site):
    def __init__(self, rows: int) -> None:
        self.num_train = rows


def _probe(tmp_path, name: str, rows: int, batches: range) -> list[dict]:
    """What a coordinator learns from one cheap run per batch size: the ledger's events.

    A large noise multiplier makes each probe cost the site about nothing (review: 49 such
    runs pinned 1,001 rows to [1001, 1003] when the schedule used the exact count).
    """
    identity = SiteIdentity.load_or_create(tmp_path / name, name)
    guard = PrivacyGuard(tmp_path / name, name, identity, SitePolicy())
    seen = []
    for batch in batches:
        probe = federation_pb2.Task(run_id=f"probe-{batch}", round=1, task_id=f"p{batch}")
        probe.privacy.CopyFrom(
            common_pb2.PrivacyPlan(mode="record", noise_multiplier=100.0, delta=1e-5)
        )
        guard.before_round(probe, {**CONFIG, "batch_size": batch, "rounds": 1}, Rows(rows))
        seen.append(guard.ledger.entries[-1].statement["event"])
    return seen


def test_runs_with_many_batch_sizes_tell_the_row_count_only_to_its_step(tmp_path):
    """Every schedule a run can ask for is a function of ⌈rows / 16⌉ alone."""
    batches = range(1, 70, 3)
    low, high = _probe(tmp_path, "low", 193, batches), _probe(tmp_path, "high", 208, batches)
    assert low == high  # 193 and 208 rows: the same multiple of 16, the same ledger
    assert _probe(tmp_path, "next", 209, batches) != high  # the next multiple differs


def test_the_update_header_does_not_carry_the_sample_rate(guard):
    privacy = guard.before_round(task(1), CONFIG, Site())
    assert privacy is not None and "dp_sample_rate" not in privacy.metrics


def test_more_rounds_in_the_config_do_not_lower_the_pinned_noise(guard):
    first = guard.before_round(task(1), CONFIG, Site())
    second = guard.before_round(task(2), {**CONFIG, "rounds": 1000}, Site())
    assert first is not None and second is not None
    assert second.schedule == first.schedule


def test_a_site_with_a_budget_refuses_a_run_without_dp(guard):
    with pytest.raises(TaskRefused) as caught:
        guard.before_round(task(1, epsilon=None), CONFIG, Site())
    assert caught.value.code == "budget" and "no differential privacy" in caught.value.reason


def test_a_run_over_the_budget_is_refused_with_the_projection(guard):
    with pytest.raises(TaskRefused) as caught:
        guard.before_round(task(1, epsilon=12.0), CONFIG, Site())
    assert caught.value.code == "budget" and "past its budget of 10" in caught.value.reason
    assert not guard.ledger.entries


def test_a_client_without_a_private_trainer_is_refused(guard):
    class Plain:
        num_train = 100
        data_fingerprint = "e" * 64

    with pytest.raises(TaskRefused) as caught:
        guard.before_round(task(1), CONFIG, Plain())
    assert caught.value.code == "model"
