"""Site-level DP (``--dp site``) over a secure run: noise inside the encrypted sum, end to end.

The statistical checks are chi-square tests of the decoded sum's residual against the
calibrated variance; with noise from the operating system's entropy, each fails a
correct mechanism with probability ``FALSE_FAILURE`` (1e-4).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import select

import crypto
from client import dp_site_scheme
from client.policy import SitePolicy, TaskRefused
from coordinator.privacy import site_layout
from coordinator.schema import Run, Update
from crypto.dp_layout import MECHANISM_SITE, SITE_BITS, calibrate
from protos import admin_pb2, common_pb2, federation_pb2, wire
from tests.helpers import TEST_ENCODING, breast_cancer_sites, wait_for_state

DELTA = 1e-5
FALSE_FAILURE = 1e-4
DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)


def variance_within(residual: np.ndarray, variance: float) -> bool:
    """Two-sided chi-square test of a zero-mean residual's variance (rate FALSE_FAILURE)."""
    statistic = float((residual.astype(np.float64) ** 2).sum() / variance)
    low, high = stats.chi2.ppf([FALSE_FAILURE / 2, 1 - FALSE_FAILURE / 2], residual.size)
    return bool(low < statistic < high)


@pytest.fixture(scope="module")
def keys():
    return crypto.generate_keypair(1024, insecure_test_size=True)


def aggregate_of(round_number: int, sites: int, weight: int = 1) -> federation_pb2.AggregateRef:
    ref = federation_pb2.AggregateRef(round=round_number, total_weight=sites * weight)
    for index in range(sites):
        ref.contributions.add(site_name=f"s{index}", weight=weight)
    return ref


def test_the_decrypted_aggregate_carries_the_calibrated_noise(keys):
    """Through the sites' encoder, the coordinator's ciphertext product and the decoder."""
    public, private = keys
    sites, dimension = 3, 3000
    layout = calibrate(
        8.0,
        DELTA,
        3,
        clip=1.0,
        bits=SITE_BITS,
        dimension=dimension,
        quorum=sites,
        max_sites=16,
        key_bits=public.n.bit_length(),
    )
    rng = np.random.default_rng()
    updates = [rng.normal(size=dimension) for _ in range(sites)]
    updates = [u * (0.9 / np.linalg.norm(u)) for u in updates]  # inside the clip: not clipped
    width = crypto.ciphertext_width(public)
    payloads = [
        dp_site_scheme.encode_update(u, layout, public, run_id="r", round_number=1, site=f"s{i}")[0]
        for i, u in enumerate(updates)
    ]
    total = crypto.add_encrypted(
        [crypto.ciphertexts_from_bytes(p, width) for p in payloads], public
    )
    payload = crypto.ciphertexts_to_bytes(total, width)
    mean = dp_site_scheme.decode_aggregate(layout, aggregate_of(1, sites), payload, private, None)
    step = 1.0 / layout.levels  # one quantisation level of a clip-1 update
    residual_levels = (mean * sites - np.sum(updates, axis=0)) / step
    # Each site adds sigma^2 (in levels); stochastic rounding adds at most 1/4 per site.
    assert variance_within(residual_levels, sites * layout.sigma**2 + sites / 4)
    assert not variance_within(residual_levels, layout.sigma**2)  # not one site's noise alone
    # A key holder that decrypts ONE site's update sees it noised at that site's scale.
    alone = crypto.decrypt_packed(private, crypto.ciphertexts_from_bytes(payloads[0], width))
    single = layout.__class__(**{**layout.as_dict(), "quorum": 1}).decode_sum(alone, 1)
    assert variance_within((single - updates[0]) / step, layout.sigma**2 + 0.25)


def test_a_sum_of_fewer_sites_than_the_quorum_or_weighted_is_not_decrypted(keys):
    public, _ = keys
    layout = calibrate(
        8.0,
        DELTA,
        3,
        clip=1.0,
        bits=SITE_BITS,
        dimension=100,
        quorum=3,
        max_sites=8,
        key_bits=public.n.bit_length(),
    )
    for aggregate in (aggregate_of(1, 2), aggregate_of(1, 3, weight=5)):
        with pytest.raises(TaskRefused) as refused:
            dp_site_scheme.check_contributions(aggregate, layout)
        assert refused.value.code == "verify"


def site_dp_run(admin, *, epsilon: float = 8.0, min_clients: int = 3) -> admin_pb2.RunInfo:
    return admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=min_clients,
            local_epochs=2,
            lr=0.005,
            round_deadline_seconds=120,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            config_json=json.dumps({"encoding": TEST_ENCODING, "audit": False}),
            privacy=common_pb2.PrivacyPlan(mode="site", epsilon=epsilon, delta=DELTA),
        )
    )


@pytest.mark.slow
def test_a_site_level_dp_run_completes_and_a_site_over_budget_refuses(
    coordinator, agents, tmp_path
):
    admin = coordinator.admin()
    trainers = breast_cancer_sites(4)
    sites = agents.start(coordinator.address, trainers[:3], tmp_path, names=["a", "b", "c"])
    [careful] = agents.start(
        coordinator.address,
        trainers[3:],
        tmp_path,
        names=["d"],
        policy=SitePolicy(privacy_budget=1.0, privacy_delta=DELTA),
    )
    run = site_dp_run(admin)
    info = wait_for_state(admin, run.run_id, DONE, timeout=300)
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    # d could not afford ε 8 and said so before touching its data; the run went on.
    refused = [r for r in info.refusals if r.site_name == "d"]
    assert refused and {r.code for r in refused} == {"budget"}
    assert "site-level DP run" in refused[0].reason and "past its budget of 1" in refused[0].reason
    assert careful.privacy.ledger.entries == [] and trainers[3].rounds_trained == 0

    # Every stored update is a ciphertext vector of the layout, weight 1: no plaintext.
    hub = coordinator.server.hub
    with hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None
        layout = site_layout(stored)
        public = crypto.public_key_from_bytes(stored.public_key)
        rows = session.scalars(select(Update).where(Update.run_id == run.run_id)).all()
        blobs = [(u.weight, u.encoding, hub.blobs.get(u.blob_sha256)) for u in rows]
    assert layout is not None and layout.quorum == 3
    width = crypto.ciphertext_width(public)
    assert len(blobs) == 6
    for weight, encoding, blob in blobs:
        assert weight == 1 and encoding == wire.PAILLIER_PACKED
        assert len(blob) == layout.num_plaintexts * width
        crypto.validate_ciphertexts(crypto.ciphertexts_from_bytes(blob, width), public)
        with pytest.raises(wire.PayloadError):
            wire.tensor_specs(blob)

    # Every site derives the same model from the noisy sums; each charged each round.
    finals = [site.export_model(run.run_id) for site in sites]
    for other in finals[1:]:
        for x, y in zip(finals[0], other, strict=True):
            np.testing.assert_array_equal(x, y)
    for site in sites:
        entries = [e.statement for e in site.privacy.ledger.entries]
        assert [e["round"] for e in entries] == [1, 2]
        assert entries[0]["layout"] == layout.as_dict()  # the coordinator sized the same one
        assert entries[-1]["run_epsilon"] <= 8.0

    from coordinator.report import report_facts

    dp = report_facts(hub, run.run_id)["privacy"]["differential_privacy"]
    assert dp["mode"] == "site"
    assert [s["site"] for s in dp["sites"]] == ["a", "b", "c"]
    assert all(s["mechanism"] == MECHANISM_SITE for s in dp["sites"])
    assert all(s["rounds_charged"] == 2 and s["epsilon"] <= 8.0 for s in dp["sites"])
    assert not dp["unverified_entries"]


@pytest.mark.slow
def test_a_coordinator_that_changes_the_plan_mid_run_is_refused_by_every_site(
    coordinator, agents, tmp_path
):
    """A breached coordinator lowers the plan's quorum (less noise per site) after round 1."""
    from sqlalchemy.orm.attributes import flag_modified

    from tests.helpers import wait_for

    admin = coordinator.admin()
    agents.start(coordinator.address, breast_cancer_sites(3), tmp_path, names=["a", "b", "c"])
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=3,
            min_clients=3,
            local_epochs=1,
            lr=0.005,
            round_deadline_seconds=60,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            config_json=json.dumps({"encoding": TEST_ENCODING, "audit": False}),
            privacy=common_pb2.PrivacyPlan(mode="site", epsilon=8.0, delta=DELTA),
        )
    )

    def closed_rounds() -> int:
        return len(admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id)).round_infos)

    wait_for(lambda: closed_rounds() >= 1, timeout=120, what="round 1")
    with coordinator.server.hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None
        stored.config["privacy"]["quorum"] = 1
        flag_modified(stored, "config")
    info = wait_for_state(admin, run.run_id, DONE, timeout=300)
    assert info.state == common_pb2.RUN_STATE_FAILED
    # Refused at the run pin, or (a site opening its key after the change) at the key
    # statement, which binds the plan the custodian dealt under.
    refused = [r for r in info.refusals if r.code in ("pin", "verify")]
    assert refused and all("privacy plan" in r.reason for r in refused)


@pytest.mark.parametrize("later", ["", '{"epsilon":8.0,"mode":"site","quorum":1}'])
def test_the_run_pin_refuses_a_dropped_or_changed_plan_on_any_task(tmp_path, later):
    """Audit and export tasks too: they decode aggregates in the plan's layout."""
    from client.pins import Observed, RunPins

    pins = RunPins.load(tmp_path, "a")
    plan = '{"epsilon":8.0,"mode":"site","quorum":3}'
    base = dict(
        run_id="r",
        scheme="paillier",
        model="tabular_mlp",
        model_config={},
        lora="",
        participants={},
        custodian="c",
        key_fingerprint="k",
    )
    pins.check(Observed(**base, privacy=plan))  # type: ignore[arg-type]
    pins.check(Observed(**base, privacy=plan))  # type: ignore[arg-type]
    with pytest.raises(TaskRefused) as refused:
        RunPins.load(tmp_path, "a").check(Observed(**base, privacy=later))  # type: ignore[arg-type]
    assert refused.value.code == "pin" and "privacy plan" in refused.value.reason


@pytest.fixture
def site_dp_round(coordinator):
    from test_secure_rounds import WEIGHTS, SecureFakeSite

    site = SecureFakeSite(coordinator.federation())
    run = coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=1,
            round_deadline_seconds=60,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            allow_two_site_secure=True,
            config_json=json.dumps({"encoding": TEST_ENCODING}),
            privacy=common_pb2.PrivacyPlan(mode="site", epsilon=8.0, delta=DELTA),
        )
    )
    site.make_keys()
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    return coordinator, site, run, site.pull(federation_pb2.TASK_KIND_TRAIN)


def test_the_coordinator_takes_only_the_layouts_ciphertexts_at_weight_one(site_dp_round):
    """A hostile (or outdated) site: the codec's layout, or an example-count weight."""
    import grpc
    from test_federation_errors import expect_status

    coordinator, site, run, task = site_dp_round
    with coordinator.hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None
        layout = site_layout(stored)

    def count() -> int:
        with coordinator.hub.db.transaction() as session:
            return len(session.scalars(select(Update.id)).all())

    assert layout is not None and layout.dimension == 8 and layout.quorum == 1
    plaintexts = layout.encode(np.zeros(8), np.random.default_rng())
    units: list[int] = []
    ours = crypto.encrypt_packed(site.public_key, plaintexts, workers=1, units_out=units)
    # The site knows its openings, so its updates carry valid proofs (checked at intake
    # before the layout and weight checks below).
    site.openings.update(zip(ours, zip(plaintexts, units, strict=True), strict=True))
    assert len(ours) == layout.num_plaintexts == 1  # 8 values: one plaintext either way
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: site.send(task, ours * 2, weight=1, num_examples=0),
    )
    assert "site-level DP layout" in detail
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.send(task, ours, num_examples=0)
    )
    assert "every weight is 1" in detail
    assert count() == 0
    site.send(task, ours, weight=1, num_examples=0)
    assert count() == 1


def test_cohort_admin_runs_start_takes_dp_site_only_over_a_secure_run(coordinator):
    from test_cli import assert_one_line_error, invoke

    base = ["admin", "runs", "start", "--coordinator", coordinator.address, "--insecure"]
    dp = ["--dp", "site", "--epsilon", "8", "--delta", "1e-5", "--min-clients", "3"]
    assert_one_line_error(invoke(*base, *dp), "needs a secure run", "--secure paillier")
    started = invoke(*base, *dp, "--secure", "paillier", "--json")
    assert started.exit_code == 0, started.output
    with coordinator.hub.db.transaction() as session:
        [run] = session.scalars(select(Run)).all()
        assert run.config["privacy"]["mode"] == "site"
        assert run.config["privacy"]["quorum"] == 3  # the run's quorum, by default
