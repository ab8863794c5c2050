"""A run is validated when it is created; a coordinator off loopback needs TLS and auth."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from test_federation_errors import expect_status
from test_revocation import ROOT, auth_coordinator, bearer  # noqa: F401
from typer.testing import CliRunner

from cli.main import app
from coordinator.model_names import REGISTRY_MODELS, check_run_model
from coordinator.schema import Run
from coordinator.server import PLAINTEXT_FLAG, CoordinatorServer, exposure_problem, is_loopback
from protos import admin_pb2, admin_pb2_grpc, common_pb2

runner = CliRunner()


def test_light_model_list_is_the_registry():
    from models.registry import available_models

    assert list(REGISTRY_MODELS) == available_models()


def test_coordinator_validation_does_not_import_torch():
    code = (
        "import sys; import coordinator.server, coordinator.model_names; "
        "from coordinator.run_creation import spec_from_request; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "model, words",
    [
        ("xgboost", "unknown model 'xgboost'"),
        ("tabular-mlp", "unknown model"),
        ("subprocess:run", "site:subprocess:run"),
        ("hf:/models/bert", "site:hf:/models/bert"),
        ("site:", "site:NAME"),
    ],
)
def test_create_run_refuses_a_model_sites_cannot_build(coordinator, model, words):
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(model=model, rounds=1, min_clients=1)
        ),
    )

    assert words in detail


@pytest.mark.parametrize("model", ["tabular_mlp", "multimodal", "site:mylab.nets:build"])
def test_registry_and_site_provided_models_are_accepted(model):
    check_run_model(model)


def test_create_run_refuses_zero_rounds(coordinator):
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: coordinator.admin().CreateRun(
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=0, min_clients=1)
        ),
    )

    assert "rounds must be between 1" in detail


def test_create_run_refuses_a_custodian_that_is_not_enrolled(auth_coordinator):  # noqa: F811
    _, _, channel = auth_coordinator
    admin = admin_pb2_grpc.AdminStub(channel)

    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: admin.CreateRun(
            admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, custodian="nobody"),
            metadata=bearer(ROOT),
        ),
    )
    admin.EnrolSite(admin_pb2.EnrolSiteRequest(site_name="hospital"), metadata=bearer(ROOT))
    run = admin.CreateRun(
        admin_pb2.CreateRunRequest(model="tabular_mlp", rounds=1, custodian="hospital"),
        metadata=bearer(ROOT),
    )

    assert "'nobody' is not an enrolled site" in detail
    assert run.custodian == "hospital"


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--model", "xgboost"], "unknown model 'xgboost'"),
        (["--model", "os:system"], "site:os:system"),
    ],
)
def test_cli_refusals_are_one_line_with_exit_code_2(coordinator, flags, words):
    result = runner.invoke(
        app, ["admin", "runs", "start", "--coordinator", coordinator.address, "--insecure", *flags]
    )

    assert result.exit_code == 2
    assert words in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("coordinator.example.org", False),
    ],
)
def test_loopback_is_only_what_other_machines_cannot_reach(host, loopback):
    assert is_loopback(host) is loopback


def test_off_loopback_without_tls_or_auth_refuses_to_start(tmp_path):
    with pytest.raises(ValueError, match=PLAINTEXT_FLAG):
        CoordinatorServer(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", host="0.0.0.0")
    assert "authentication" in (exposure_problem("0.0.0.0", tls=True, auth=False) or "")
    assert exposure_problem("0.0.0.0", tls=True, auth=True) is None


def test_serve_off_loopback_in_plaintext_exits_2_naming_the_flag(tmp_path):
    result = runner.invoke(
        app,
        [
            "coordinator",
            "serve",
            "--insecure",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
    )

    assert result.exit_code == 2
    assert PLAINTEXT_FLAG in result.output
    assert not (tmp_path / "cohort.db").exists()  # refused before opening anything


def test_a_run_config_that_does_not_parse_is_refused_and_nothing_is_stored(coordinator):
    admin = coordinator.admin()
    detail = expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: admin.CreateRun(
            admin_pb2.CreateRunRequest(
                model="tabular_mlp", rounds=1, min_clients=1, config_json='{"server_lr": "fast"}'
            )
        ),
    )
    assert "fast" in detail
    assert list(admin.ListRuns(admin_pb2.ListRunsRequest()).runs) == []


def test_a_secure_runs_encoding_is_stored_as_parsed_and_read_back_the_same(coordinator):
    encoding = {"clip": 16.0, "bits": 20, "max_weight": 4096, "key_bits": 1024, "colour": "red"}
    run = coordinator.admin().CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=1,
            min_clients=3,
            secure=common_pb2.SECURE_SCHEME_PAILLIER,
            config_json=json.dumps({"encoding": encoding, "quorum": 3}),
        )
    )
    with coordinator.hub.db.transaction() as session:
        stored = session.get(Run, run.run_id)
        assert stored is not None
        settings = stored.settings()
        kept = stored.config["encoding"]
    # An unknown key is dropped once, at creation; the stored run reads back what was checked.
    assert kept == {k: v for k, v in encoding.items() if k != "colour"}
    assert settings.encoding.as_dict() == kept and settings.quorum == 3
