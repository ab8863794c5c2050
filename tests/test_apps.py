"""Flower code runs unchanged: NumPyClients, message-API ClientApps and legacy ClientApps."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import create_run, wait_for_state
from test_cli import assert_one_line_error, invoke

from client.apps import AppError, ClientAppAdapter, load_app
from protos import common_pb2

DONE = (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED)
APP = "flower_clientapp.client_app:app"
NET = "flower_clientapp.task:Net"
CONFIG = {"run_id": "r1", "round": 1, "rounds": 3, "local_epochs": 1, "lr": 0.01}


def message_app(partition: int = 0, reference: str = APP) -> ClientAppAdapter:
    client = load_app(
        reference,
        initial_model=NET,
        node_config={"partition-id": partition, "num-partitions": 2},
        site_name=f"site-{partition}",
    )
    assert isinstance(client, ClientAppAdapter)
    return client


def test_message_api_app_trains_on_named_arrays_and_keeps_its_context():
    client = message_app()
    weights = client.get_parameters({})

    trained, examples, metrics = client.fit(weights, CONFIG)
    again, _, later = client.fit(trained, {**CONFIG, "round": 2})

    # The state dict's names and dtypes survive: the BatchNorm step counter stays int64.
    assert client._names[:5] == [
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    assert trained[4].dtype == np.int64 and trained[4] > weights[4]
    assert [w.shape for w in trained] == [w.shape for w in weights]
    assert not np.allclose(trained[5], weights[5])
    assert examples > 0 and "num-examples" not in metrics
    assert (metrics["rounds_seen"], later["rounds_seen"]) == (1, 2)


def test_message_api_app_evaluates_with_flower_metric_names():
    client = message_app()
    weights, _, _ = client.fit(client.get_parameters({}), CONFIG)

    loss, examples, metrics = client.evaluate(weights, CONFIG)

    assert examples > 0 and loss < 1.0
    assert 0.5 < metrics["acc"] <= 1.0


def test_app_without_evaluate_handler_says_not_implemented():
    client = message_app(reference="flower_clientapp.client_app:train_only")

    with pytest.raises(NotImplementedError):
        client.evaluate(client.get_parameters({}), CONFIG)


def test_train_reply_without_num_examples_is_a_clear_error():
    client = message_app(reference="flower_clientapp.client_app:forgets_num_examples")

    with pytest.raises(RuntimeError, match="num-examples"):
        client.fit(client.get_parameters({}), CONFIG)


def test_message_api_app_needs_its_initial_model():
    with pytest.raises(AppError, match="--initial-model"):
        load_app(APP, node_config={"partition-id": 0, "num-partitions": 2})


def test_initial_model_that_is_no_model_is_refused():
    with pytest.raises(AppError, match="expected an nn.Module"):
        load_app(APP, initial_model="math:pi")
    with pytest.raises(AppError, match="has no attribute"):
        load_app(APP, initial_model="flower_clientapp.task:NoSuchNet")


def test_legacy_client_fn_app_runs_through_flowers_legacy_records():
    client = load_app("flower_clientapp.legacy_app:app", node_config={"partition-id": 1})
    weights = client.get_parameters({})

    trained, examples, _ = client.fit(weights, {"local_epochs": 2})
    loss, _, metrics = client.evaluate(trained, {})

    assert [w.shape for w in weights] == [(1, 30), (1,)]
    assert examples > 0 and 0.0 <= loss <= 1.0 and "accuracy" in metrics


@pytest.mark.parametrize(
    "args, words",
    [
        (["--app", APP], ["--initial-model"]),
        (["--app", APP, "--initial-model", NET, "--node-config", "partition-id"], ["key=value"]),
        (["--app", APP, "--initial-model", NET, "--node-config", "a=[1"], ["--node-config"]),
    ],
    ids=["no-initial-model", "not-key-value", "bad-value"],
)
def test_client_app_options_are_checked(args, words):
    result = invoke("client", "run", "--name", "a", "--insecure", *args)

    assert_one_line_error(result, *words)


def test_flower_client_apps_take_part_in_a_run(coordinator, agents, tmp_path):
    """Two sites that run a message-API ClientApp, unchanged, through a whole run."""
    clients = [message_app(0), message_app(1)]
    agents.start(coordinator.address, clients, tmp_path)
    admin = coordinator.admin()

    run = create_run(admin, rounds=2, min_clients=2)
    info = wait_for_state(admin, run.run_id, DONE)

    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    last = info.round_infos[-1].metrics
    assert last["eval_acc"] > 0.8
    assert last["rounds_seen"] == 2
