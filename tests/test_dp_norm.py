"""The DP input standardiser: noise at its stated scale, and charged where DP-SGD is."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from client.custody import SiteIdentity
from client.dp import PrivacyPlan, make_accountant, record_schedule
from client.dp_norm import MIN_VARIANCE, ROW_BOUND, STATS_SHARE, private_standardiser
from client.dp_site import PrivacyGuard
from client.ledger import compose
from client.policy import SitePolicy
from protos import common_pb2, federation_pb2

DELTA = 1e-5


def test_the_released_mean_carries_gaussian_noise_at_sigma_times_the_bound():
    """Over 400 releases the mean's error has sd sigma*ROW_BOUND/n per feature.

    The chi-square test on the errors' variance fails a correct mechanism with
    probability 1e-4 (two-sided); a release without noise, or at half the noise, fails it.
    """
    x = np.full((50, 3), 0.5)  # norm 0.87 < ROW_BOUND: nothing clipped
    sigma, trials = 2.0, 400
    rng = np.random.default_rng(7)
    errors = np.array([private_standardiser(x, sigma, rng)[0] - 0.5 for _ in range(trials)])
    scale = sigma * ROW_BOUND / len(x)
    statistic = float((errors.ravel() ** 2).sum() / scale**2)
    dof = errors.size
    low, high = stats.chi2.ppf([0.5e-4, 1 - 0.5e-4], dof)
    assert low < statistic < high


def test_a_rows_outlier_is_clipped_and_variance_is_floored():
    x = np.zeros((40, 2))
    x[0] = [1e6, 0.0]  # one hostile row cannot move the mean by more than ROW_BOUND/n
    mean, variance = private_standardiser(x, 1e-3, np.random.default_rng(0))
    assert abs(mean[0]) <= ROW_BOUND / 40 + 0.01
    assert (variance >= MIN_VARIANCE).all()
    with pytest.raises(ValueError):
        private_standardiser(x, 0.0, np.random.default_rng(0))


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_statistics_and_dp_sgd_together_meet_the_plan(accountant, epsilon):
    plan = PrivacyPlan("record", epsilon, DELTA, 0.0, 1.0, accountant)
    schedule = record_schedule(plan, 150, 64, 2, 3, standardise=True)
    stats_sigma = schedule.stats_noise_multiplier
    assert stats_sigma > 0
    alone = make_accountant(accountant, [(stats_sigma, 1.0, 2)]).get_epsilon(DELTA)
    assert alone <= STATS_SHARE * epsilon * 1.01
    both = make_accountant(
        accountant,
        [(stats_sigma, 1.0, 2), (schedule.noise_multiplier, schedule.sample_rate, 2 * 3 * 3)],
    ).get_epsilon(DELTA)
    assert epsilon * 0.9 <= both <= epsilon * 1.01
    plain = record_schedule(plan, 150, 64, 2, 3)
    assert schedule.noise_multiplier > plain.noise_multiplier  # the rest pays for them


class Site:
    num_train = 200
    data_fingerprint = "e" * 64
    private_standardiser = True

    def fit_private(self, *args: object) -> None:  # pragma: no cover - never trained here
        raise AssertionError


def test_the_first_rounds_ledger_entry_charges_the_release(tmp_path):
    identity = SiteIdentity.load_or_create(tmp_path, "a")
    guard = PrivacyGuard(tmp_path, "a", identity, SitePolicy(privacy_budget=10.0))
    config = {"rounds": 2, "local_epochs": 1, "batch_size": 20}
    tasks = []
    for number in (1, 2):
        message = federation_pb2.Task(run_id="r", round=number, task_id=f"t{number}")
        message.privacy.CopyFrom(
            common_pb2.PrivacyPlan(mode="record", epsilon=4.0, delta=DELTA, max_grad_norm=1.0)
        )
        tasks.append(message)
    first = guard.before_round(tasks[0], config, Site())
    assert first is not None
    extra = guard.ledger.entries[0].statement["extra_events"]
    assert extra == [
        {"kind": "gaussian", "noise_multiplier": first.schedule.stats_noise_multiplier, "count": 2}
    ]
    # The trainer charges its accountant when it releases (client/trainer.py); do so here.
    first.accountant.history.append((first.schedule.stats_noise_multiplier, 1.0, 2))
    second = guard.before_round(tasks[1], config, Site())
    assert second is not None
    assert guard.ledger.entries[1].statement["extra_events"] == []
    spent = guard.ledger.spent("e" * 64, DELTA)
    events = [*extra, *(e.statement["event"] for e in guard.ledger.entries)]
    assert spent == pytest.approx(compose(events, DELTA))
    without = compose([e.statement["event"] for e in guard.ledger.entries], DELTA)
    assert spent > without  # the release is counted, not free
    assert second.metrics["dp_epsilon"] <= 4.0 + 0.05
