"""Site-level DP: the decrypted sum carries the calibrated noise; no single update is un-noised."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from phe import paillier
from scipy import stats

from client.custody import SiteIdentity
from client.dp_aggregate import SiteNoise, calibrate, sample_discrete_gaussian
from client.dp_site import PrivacyGuard
from client.ledger import compose
from client.policy import SitePolicy, TaskRefused
from protos import common_pb2, federation_pb2

DELTA = 1e-5
# Two-sided chi-square bounds: a correct mechanism fails each such check with prob 1e-4.
FALSE_FAILURE = 1e-4


def variance_within(samples: np.ndarray, variance: float) -> bool:
    """Chi-square test of the samples' variance around zero mean (Gaussian approximation:
    the discrete Gaussian's variance is within exp(-2 pi^2 sigma^2) of sigma^2, CKS20)."""
    statistic = float((samples.astype(np.float64) ** 2).sum() / variance)
    low, high = stats.chi2.ppf([FALSE_FAILURE / 2, 1 - FALSE_FAILURE / 2], samples.size)
    return bool(low < statistic < high)


def test_the_sampler_draws_at_its_scale():
    rng = np.random.default_rng(1)
    draws = sample_discrete_gaussian(5.3, 50_000, rng)
    assert draws.dtype == np.int64
    assert variance_within(draws, 5.3**2)
    assert not variance_within(draws, (5.3 / 1.1) ** 2)  # the test can tell a wrong scale


@pytest.fixture(scope="module")
def keys():
    return paillier.generate_paillier_keypair(n_length=1024)


def test_the_decrypted_sum_carries_every_sites_noise_and_no_update_is_bare(keys):
    public, private = keys
    # clip = levels: one quantisation level is 1.0, so integer updates round exactly and
    # the decrypted sum minus the true sum is the noise alone, in levels.
    bits, sites, dimension = 10, 3, 600
    levels = 2 ** (bits - 1) - 1
    noise = SiteNoise(float(levels), bits, dimension, sites, 8, 40.0, public.n.bit_length())
    noise.check()
    rng = np.random.default_rng(2)
    updates = [rng.integers(-10, 11, dimension).astype(np.float64) for _ in range(sites)]
    assert all(np.linalg.norm(u) <= levels for u in updates)  # nothing clipped
    encrypted = []
    for update in updates:
        plaintexts = noise.encode(update, np.random.default_rng())
        encrypted.append([public.encrypt(p) for p in plaintexts])
    # What the coordinator holds: ciphertexts only, and it adds them.
    assert all(isinstance(c, paillier.EncryptedNumber) for row in encrypted for c in row)
    total = [sum(column[1:], column[0]) for column in zip(*encrypted, strict=True)]
    decoded = noise.decode_sum([private.decrypt(c) for c in total], sites)
    residual = decoded - np.sum(updates, axis=0)
    assert variance_within(residual, sites * 40.0**2)
    # Even a key holder decrypting ONE site's ciphertexts sees that site's update noised.
    single = SiteNoise(float(levels), bits, dimension, 1, 8, 40.0, public.n.bit_length())
    first = single.decode_sum([private.decrypt(c) for c in encrypted[0]], 1)
    assert variance_within(first - updates[0], 40.0**2)


def test_slots_cannot_carry_even_at_the_extremes():
    noise = SiteNoise(1.0, 8, 50, 2, 5, 3.0, 1024)
    noise.check()
    largest = np.full(50, 2 * noise.offset, dtype=np.uint64)  # q = L and noise = +tail
    from crypto.packing import pack_slots, unpack_slots

    packed = [pack_slots(largest, noise.slot_bits, noise.slots_per_plaintext)] * 5
    summed = [sum(column) for column in zip(*packed, strict=True)]
    assert summed[0] < 2 ** (1024 - 1)
    slots = unpack_slots(summed, noise.slot_bits, noise.slots_per_plaintext, 50)
    assert (slots == 5 * 2 * noise.offset).all()


def test_accounting_matches_dp_accountings_gaussian():
    """With tau negligible, the sum is the Gaussian of multiplier sqrt(n) sigma / D."""
    noise = SiteNoise(1.0, 16, 1000, 4, 8, 20_000.0, 2048)
    assert noise.rho() == pytest.approx(noise.sensitivity**2 / (2 * 4 * 20_000.0**2), rel=1e-9)
    ours = compose([noise.event(5)], DELTA)
    accountant = rdp.RdpAccountant(
        [1 + x / 10.0 for x in range(10, 100)] + list(range(11, 64)) + [128, 256, 512]
    )
    multiplier = math.sqrt(4) * 20_000.0 / noise.sensitivity
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier), 5)
    )
    assert ours == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-6)


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_calibration_meets_epsilon_for_the_quorum_alone(epsilon):
    kwargs = dict(clip=1.0, bits=16, dimension=4000, max_sites=16, key_bits=2048)
    three = calibrate(epsilon, DELTA, 3, quorum=3, **kwargs)
    spent = compose([three.event(3)], DELTA)
    assert epsilon * 0.99 <= spent <= epsilon
    one = calibrate(epsilon, DELTA, 3, quorum=1, **kwargs)
    # A quorum of one must carry the whole noise itself: sqrt(3) times the share.
    assert one.sigma == pytest.approx(math.sqrt(3) * three.sigma, rel=0.01)


class Site:
    num_train = 200
    data_fingerprint = "d" * 64

    def get_parameters(self, config):
        return [np.zeros((30, 8)), np.zeros(8)]

    def fit_private(self, *args: object) -> None:  # pragma: no cover - never trained here
        raise AssertionError


def site_task(epsilon: float) -> federation_pb2.Task:
    message = federation_pb2.Task(run_id="s", round=1, task_id="t1")
    message.privacy.CopyFrom(
        common_pb2.PrivacyPlan(mode="site", epsilon=epsilon, delta=DELTA, max_grad_norm=1.0)
    )
    return message


def test_a_site_whose_budget_is_spent_refuses_a_site_level_run(tmp_path):
    identity = SiteIdentity.load_or_create(tmp_path, "a")
    guard = PrivacyGuard(tmp_path, "a", identity, SitePolicy(privacy_budget=4.0))
    config = {"rounds": 3, "local_epochs": 1, "batch_size": 20}
    with pytest.raises(TaskRefused) as refused:
        guard.before_round(site_task(6.0), config, Site())
    assert refused.value.code == "budget"
    assert "site-level" in str(refused.value)
    assert guard.ledger.entries == []  # nothing charged, nothing trained
    # Within budget it is still refused, for the stated reason, and charges nothing.
    with pytest.raises(TaskRefused) as refused:
        guard.before_round(site_task(2.0), config, Site())
    assert refused.value.code == "policy"
    assert guard.ledger.entries == []
