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
from client.dp_site import PrivacyGuard
from client.ledger import compose
from client.policy import SitePolicy, TaskRefused
from crypto.dp_layout import SiteNoise, calibrate, sample_discrete_gaussian
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


def site_task(
    epsilon: float, public_key, *, round_number: int = 1, quorum: int = 3, secure: bool = True
) -> federation_pb2.Task:
    import crypto

    message = federation_pb2.Task(run_id="s", round=round_number, task_id=f"t{round_number}")
    if secure:
        message.secure = common_pb2.SECURE_SCHEME_PAILLIER
        message.encoding.public_key = crypto.public_key_to_bytes(public_key)
    message.privacy.CopyFrom(
        common_pb2.PrivacyPlan(
            mode="site",
            epsilon=epsilon,
            delta=DELTA,
            max_grad_norm=1.0,
            quorum=quorum,
            max_sites=8,
        )
    )
    return message


CONFIG = {"rounds": 3, "local_epochs": 1, "batch_size": 20}


@pytest.fixture
def guard(tmp_path):
    identity = SiteIdentity.load_or_create(tmp_path, "a")
    return PrivacyGuard(tmp_path, "a", identity, SitePolicy(privacy_budget=4.0))


def test_a_site_whose_budget_is_spent_refuses_a_site_level_run(guard, keys):
    public, _ = keys
    with pytest.raises(TaskRefused) as refused:
        guard.before_round(site_task(6.0, public), CONFIG, Site())
    assert refused.value.code == "budget"
    assert "site-level" in str(refused.value)
    assert guard.ledger.entries == []  # nothing charged, nothing trained


def test_a_site_level_round_is_charged_with_its_layout_pinned(guard, keys):
    public, _ = keys
    privacy = guard.before_round(site_task(2.0, public), CONFIG, Site())
    assert privacy is not None and privacy.plan.mode == "site"
    [entry] = guard.ledger.entries
    statement = entry.statement
    assert statement["layout"] == privacy.noise.as_dict()
    assert privacy.noise.quorum == 3 and privacy.noise.dimension == 30 * 8 + 8
    assert statement["event"]["kind"] == "zcdp"
    # One round of three: the run's ε so far is below the plan's 2, the whole run meets it.
    assert 0 < statement["run_epsilon"] < 2.0
    assert compose([privacy.noise.event(3)], DELTA) <= 2.0
    assert guard.pinned_layout("s") == privacy.noise


@pytest.mark.parametrize(
    "hostile",
    [
        lambda public: site_task(2.0, public, round_number=2, quorum=2),  # quorum lowered
        lambda public: site_task(2.5, public, round_number=2),  # plan changed
        lambda public: site_task(2.0, public, round_number=1),  # round re-issued
        lambda public: site_task(2.0, public, round_number=4),  # past the pinned rounds
    ],
)
def test_a_coordinator_cannot_change_a_site_level_run_mid_run(guard, keys, hostile):
    public, _ = keys
    guard.before_round(site_task(2.0, public), CONFIG, Site())
    with pytest.raises(TaskRefused) as refused:
        guard.before_round(hostile(public), CONFIG, Site())
    assert refused.value.code == "pin"
    assert len(guard.ledger.entries) == 1


def test_dropping_the_plan_mid_run_is_refused(guard, keys):
    public, _ = keys
    guard.before_round(site_task(2.0, public), CONFIG, Site())
    task = site_task(2.0, public, round_number=2)
    task.ClearField("privacy")
    with pytest.raises(TaskRefused) as refused:
        guard.before_round(task, CONFIG, Site())
    assert refused.value.code == "pin"


def test_more_rounds_in_the_config_do_not_lower_the_pinned_noise(guard, keys):
    public, _ = keys
    first = guard.before_round(site_task(2.0, public), CONFIG, Site())
    later = guard.before_round(
        site_task(2.0, public, round_number=2), {**CONFIG, "rounds": 1}, Site()
    )
    assert later is not None and first is not None and later.noise == first.noise


def test_site_level_dp_outside_a_secure_run_is_refused(guard, keys):
    public, _ = keys
    with pytest.raises(TaskRefused) as refused:
        guard.before_round(site_task(2.0, public, secure=False), CONFIG, Site())
    assert refused.value.code == "policy" and "encrypted sum" in refused.value.reason
    assert guard.ledger.entries == []
