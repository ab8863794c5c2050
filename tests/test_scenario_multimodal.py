"""The multimodal demo: three clinics, LoRA adapters under Paillier, audits, INT8 at a site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import majority_accuracy
from rich.console import Console
from typer.testing import CliRunner

from cli.demo import DemoSettings, _create_run_request, run_demo
from cli.model import app as model_app
from cli.scenarios import CLINICS, MultimodalScenario, build_scenario
from coordinator.server import CoordinatorServer


def test_unknown_scenario_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tabular, multimodal"):
        build_scenario(DemoSettings(scenario="video"), tmp_path)


def test_multimodal_run_carries_model_lora_and_the_default_encoding(tmp_path: Path) -> None:
    settings = DemoSettings(scenario="multimodal", key_bits=1024, seed=3)
    scenario = MultimodalScenario(settings, tmp_path)

    request = _create_run_request(settings, scenario)

    config = json.loads(request.config_json)
    assert request.model == "multimodal" and request.custodian == CLINICS[0]
    assert config["model_config"] == scenario.model_config and config["lora"] == scenario.lora
    assert config["seed"] == 3 and "freeze_a=true" in config["lora"]
    # The run's default encoding (per-value bounds, 8 bits): only the slot layout is set.
    assert config["encoding"] == {"max_weight": 4096, "key_bits": 1024}
    assert sorted(p.name for p in (tmp_path / "sites").iterdir()) == [
        f"{name}.npz" for name in CLINICS
    ]


def test_baselines_train_like_a_site_for_the_whole_run(tmp_path: Path) -> None:
    settings = DemoSettings(scenario="multimodal", rounds=4, local_epochs=3, seed=2)
    scenario = MultimodalScenario(settings, tmp_path)

    baseline, run = scenario.baseline_config(), scenario.run_config()

    assert baseline["local_epochs"] == 4 * 3
    assert baseline["lr"] == scenario.lr and baseline["model"] == scenario.model
    assert {k: baseline[k] for k in run} == run  # same batch size, model, LoRA and seed


def test_every_clinic_builds_the_same_frozen_base(tmp_path: Path) -> None:
    scenario = MultimodalScenario(DemoSettings(scenario="multimodal"), tmp_path)
    config = {**scenario.run_config(), "model": scenario.model}

    hashes = set()
    for site in scenario.sites.values():
        site.get_parameters(config)
        hashes.add(site.base_model_hash)  # type: ignore[attr-defined]

    assert len(hashes) == 1


@pytest.mark.slow
def test_multimodal_demo_trains_adapters_only_and_a_site_exports_int8(tmp_path: Path) -> None:
    settings = DemoSettings(scenario="multimodal", rounds=2, key_bits=1024, data_dir=tmp_path)

    result = run_demo(settings, Console(quiet=True))

    figures = result.summary()
    assert figures["state"] == "completed" and figures["secure"] is True
    assert figures["scenario"] == "multimodal" and figures["lora"]
    chance = majority_accuracy(MultimodalScenario.test_set(settings.seed).labels.numpy())
    assert figures["federated_accuracy"] > chance + 0.1
    assert set(figures["local_only_accuracy"]) == set(CLINICS)
    # Only adapters, head and gates travel: each encrypted update is a fraction of the
    # float32 bytes a full-model update would need.
    per_update = figures["bytes_received"] / (2 * len(CLINICS))
    assert per_update < figures["full_model_bytes"] / 4
    assert 4 * figures["exchanged_values"] < figures["full_model_bytes"] / 10
    report = Path(figures["report_path"])
    assert report.exists() and "<html" in report.read_text().lower()

    workdir = Path(result.data_dir)
    server = CoordinatorServer(
        f"sqlite:///{workdir / 'cohort.db'}", workdir / "coordinator", port=0, tick_seconds=0.1
    )
    port = server.start()
    try:
        exported = CliRunner().invoke(
            model_app,
            [
                "export",
                result.run_id,
                "--int8",
                "--out",
                str(tmp_path / "export"),
                "--name",
                CLINICS[0],
                "--state-dir",
                str(workdir / "sites" / CLINICS[0]),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--insecure",
                "--data",
                str(workdir / "sites" / f"{CLINICS[0]}.npz"),
                "--json",
            ],
        )
    finally:
        server.stop(grace=0.5)

    assert exported.exit_code == 0, exported.output[-3000:]
    int8 = json.loads(exported.output.strip().splitlines()[-1])
    assert int8["run_id"] == result.run_id and int8["lora"] == result.lora
    assert int8["size_ratio"] > 1.0
    assert abs(int8["accuracy_delta_points"]) < 10.0
    assert (tmp_path / "export" / "model_int8.pt").exists()
