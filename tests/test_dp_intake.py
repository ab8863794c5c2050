"""A hostile site in a differentially private run may not outweigh the others.

DP runs average sites: every site withholds its example count (0) and weighs 1
(coordinator/privacy.py withholds_counts). A site that sent a count anyway would be
weighted by it in plain FedAvg, and one that sent a heavy Paillier weight would drown
the other sites' noised updates: either way its own update would dominate the model,
and the others' noise would no longer cover it. The coordinator refuses both.
"""

from __future__ import annotations

import json

import grpc
import pytest
from helpers import TEST_ENCODING
from test_federation_errors import FakeSite, expect_status
from test_secure_rounds import WEIGHTS, SecureFakeSite, updates

from client.link import Update as SiteUpdate
from protos import admin_pb2, common_pb2, federation_pb2, wire

PLAN = common_pb2.PrivacyPlan(mode="record", epsilon=4.0, delta=1e-5, max_grad_norm=1.0)


def _run(coordinator, **fields):  # type: ignore[no-untyped-def]
    return coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=2,
            min_clients=1,
            round_deadline_seconds=60,
            privacy=PLAN,
            **fields,
        )
    )


@pytest.fixture
def plain_dp_round(coordinator):  # type: ignore[no-untyped-def]
    site = FakeSite(coordinator.federation())
    _run(coordinator, config_json=json.dumps({"audit": False}))
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    return site, site.pull(federation_pb2.TASK_KIND_TRAIN)


@pytest.mark.parametrize("count", [1, 10, 10**6])
def test_a_count_in_a_dp_run_is_refused(coordinator, plain_dp_round, count):
    site, task = plain_dp_round
    update = SiteUpdate(wire.encode_tensors(WEIGHTS), wire.TENSORS_FLOAT32, count, 1)

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: site.link.submit_update(task, update)
    )

    assert "num_examples must be 0" in detail
    assert updates(coordinator) == 0


def test_a_withheld_count_is_taken(coordinator, plain_dp_round):
    site, task = plain_dp_round
    update = SiteUpdate(wire.encode_tensors(WEIGHTS), wire.TENSORS_FLOAT32, 0, 1)

    site.link.submit_update(task, update)

    assert updates(coordinator) == 1


@pytest.fixture
def secure_dp_round(coordinator):  # type: ignore[no-untyped-def]
    site = SecureFakeSite(coordinator.federation())
    _run(
        coordinator,
        secure=common_pb2.SECURE_SCHEME_PAILLIER,
        allow_two_site_secure=True,
        config_json=json.dumps({"encoding": TEST_ENCODING, "audit": False}),
    )
    site.make_keys()
    init = site.pull(federation_pb2.TASK_KIND_INIT)
    site.submit(init, wire.encode_tensors(WEIGHTS))
    return site, site.pull(federation_pb2.TASK_KIND_TRAIN)


def test_a_heavy_paillier_weight_in_a_dp_run_is_refused(coordinator, secure_dp_round):
    site, task = secure_dp_round
    assert task.encoding.weight_cap > 10  # 10 is a valid weight in a run without DP

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: site.send(task, site.ciphertexts(weight=10), weight=10, num_examples=0),
    )

    assert "every weight is 1" in detail
    assert updates(coordinator) == 0
    site.send(task, site.ciphertexts(weight=1), weight=1, num_examples=0)
    assert updates(coordinator) == 1


def test_sites_refuse_a_weighted_aggregate_of_a_record_level_dp_run():
    """A breached coordinator that took a colluding site's heavy weight: every site checks."""
    from client.dp_site_scheme import check_unit_weights
    from client.policy import TaskRefused

    aggregate = federation_pb2.AggregateRef(round=1, total_weight=12)
    aggregate.contributions.add(site_name="honest", weight=1)
    aggregate.contributions.add(site_name="colluder", weight=11)
    with pytest.raises(TaskRefused) as refused:
        check_unit_weights(aggregate)
    assert refused.value.code == "verify" and "weight 1" in refused.value.reason
    aggregate.contributions[1].weight = 1
    aggregate.total_weight = 2
    assert check_unit_weights(aggregate) == 2
