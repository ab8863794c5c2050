"""The model stack at a site: any registry model, LoRA, a shared frozen base, audit, INT8."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import models
from cli.model import app as model_app
from cli.model import export_site_model
from client.model_audit import audit_kind
from client.model_trainer import (
    ModelTrainer,
    spec_from_config,
)
from client.site_dataset import load_site_dataset, save_site_dataset
from explain.summary import AttributionSummary
from models.clinic import clinic_tokenizer, make_clinic_multimodal
from models.quantize import load_int8

CPU = torch.device("cpu")
TINY = {
    "vocab_size": clinic_tokenizer().vocab_size,
    "dim": 16,
    "heads": 2,
    "layers": 1,
    "max_len": 24,
    "image_widths": [4, 8],
}
LORA = "r=4,alpha=8,targets=q_proj,v_proj"


def flower_config(**extra: object) -> dict[str, object]:
    """What the agent hands a trainer: scalars only, the model kwargs as JSON text."""
    return {
        "model": "multimodal",
        "model_config_json": json.dumps(TINY),
        "lora": LORA,
        "seed": 7,
        "local_epochs": 2,
        "lr": 0.01,
        "batch_size": 16,
        "round": 1,
        **extra,
    }


def clinic_site(n: int = 80, seed: int = 0, **options: object) -> ModelTrainer:
    return ModelTrainer(
        make_clinic_multimodal(n, seed=seed),
        site_name=f"clinic-{seed}",
        seed=seed,
        device=CPU,
        audit_nsamples=4,
        **options,  # type: ignore[arg-type]
    )


def test_model_is_built_lazily_from_the_flower_config() -> None:
    site = clinic_site()

    weights = site.get_parameters(flower_config())

    assert site.spec is not None and site.spec.model == "multimodal"
    assert site.spec.config == TINY and site.spec.lora == LORA and site.spec.seed == 7
    assert weights and site.base_model_hash


def test_a_site_without_a_model_in_config_or_constructor_is_told_what_to_pass() -> None:
    site = clinic_site()

    with pytest.raises(ValueError, match="no model named"):
        site.get_parameters({"lora": ""})


def test_empty_model_config_from_the_agent_keeps_the_sites_own() -> None:
    default = spec_from_config({"model": "multimodal", "model_config": TINY}, _blank_spec())

    spec = spec_from_config({"model_config_json": "{}", "lora": ""}, default)

    assert spec.config == TINY and spec.lora == ""


def _blank_spec():  # type: ignore[no-untyped-def]
    from client.model_trainer import ModelSpec

    return ModelSpec("")


def test_lora_site_exchanges_only_adapters_head_and_gates() -> None:
    site = clinic_site()

    weights = site.get_parameters(flower_config())

    names = models.weight_names(site.model)
    assert all(("lora_" in n) or ("classifier" in n) or ("_gate" in n) for n in names)
    assert any("q_proj.lora_A" in n for n in names)
    exchanged = sum(w.size for w in weights)
    total = sum(p.numel() for p in site.model.parameters())
    assert exchanged < total / 5
    assert 0.0 < site.trainable_fraction < 0.2


def test_ffa_lora_site_sends_b_but_not_the_frozen_a() -> None:
    site = clinic_site()
    plain = len(site.get_parameters(flower_config()))
    config = flower_config(lora=f"{LORA},freeze_a=true")
    start = site.get_parameters(config)

    weights, _, _ = site.fit(start, config)

    names = models.weight_names(site.model)
    assert not any("lora_A" in n for n in names)
    b_names = [n for n in names if "lora_B" in n]
    assert b_names and len(names) == plain - len(b_names)
    moved = {n: float(np.abs(w - s).max()) for n, w, s in zip(names, weights, start, strict=True)}
    assert all(moved[n] > 0.0 for n in b_names)
    # A is not sent, so it must be the same at every site: it is part of the base hash.
    other = clinic_site()
    other.get_parameters(config)
    assert other.base_model_hash == site.base_model_hash


def test_fit_lowers_the_loss_and_reports_the_trainable_fraction() -> None:
    site = clinic_site(120)
    config = flower_config(local_epochs=4)
    start = site.get_parameters(config)
    before = models.evaluate(site.model, site.train_data, device=CPU)["loss"]

    weights, count, metrics = site.fit(start, config)

    models.set_weights(site.model, weights)
    after = models.evaluate(site.model, site.train_data, device=CPU)["loss"]
    assert after < before
    assert count == len(site.train_data) == 96
    assert metrics["trainable_fraction"] == pytest.approx(site.trainable_fraction)


def test_sites_with_the_run_seed_build_the_same_frozen_base() -> None:
    a, b = clinic_site(seed=1), clinic_site(seed=2)
    other_seed = clinic_site(seed=3)

    a.get_parameters(flower_config())
    b.get_parameters(flower_config())
    other_seed.get_parameters(flower_config(seed=8))

    assert a.data_fingerprint != b.data_fingerprint
    assert a.base_model_hash == b.base_model_hash
    assert other_seed.base_model_hash != a.base_model_hash


def test_sites_sharing_a_process_build_the_same_base_while_others_work() -> None:
    busy = clinic_site(seed=9)
    start = busy.get_parameters(flower_config())
    builders = [clinic_site(seed=s) for s in range(4)]
    done = threading.Event()

    def evaluate_until_done() -> None:
        while not done.is_set():
            busy.evaluate(start, flower_config())

    workers = [
        threading.Thread(target=busy.fit, args=(start, flower_config(local_epochs=10))),
        threading.Thread(target=evaluate_until_done),
    ]
    for thread in workers:
        thread.start()
    threads = [threading.Thread(target=b.get_parameters, args=(flower_config(),)) for b in builders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    for thread in workers:
        thread.join(timeout=120)

    assert {b.base_model_hash for b in builders} == {busy.base_model_hash}


def test_frozen_batchnorm_statistics_stay_put_during_lora_training() -> None:
    site = clinic_site()
    start = site.get_parameters(flower_config())
    buffers = {k: v.clone() for k, v in site.model.state_dict().items() if "running_" in k}

    site.fit(start, flower_config())

    after = site.model.state_dict()
    assert buffers and all(torch.equal(v, after[k]) for k, v in buffers.items())
    assert all(m.training is False for m in site.model.modules() if "BatchNorm" in type(m).__name__)


def test_evaluate_scores_the_held_out_fifth() -> None:
    site = clinic_site(100)
    weights = site.get_parameters(flower_config())

    loss, count, metrics = site.evaluate(weights, flower_config())

    assert count == 20 and np.isfinite(loss)
    assert set(metrics) == {"accuracy", "roc_auc"}


def test_audit_reports_each_modalitys_share_on_held_out_rows() -> None:
    site = clinic_site(60)
    weights, _, _ = site.fit(site.get_parameters(flower_config()), flower_config())

    summary = site.audit(weights, {"rows": 6, "seed": 0})

    assert isinstance(summary, AttributionSummary)
    assert summary.kind == "multimodal" and summary.site == "clinic-0"
    assert set(summary.feature_names) == {"image", "text"}
    assert summary.row_count == 6
    assert sum(summary.shares) == pytest.approx(1.0)


def test_tabular_audit_names_the_columns() -> None:
    data = models.make_credit_default(120, seed=0)
    site = ModelTrainer(data, model="tabular_mlp", site_name="bank-a", device=CPU)
    weights = site.get_parameters({})

    summary = site.audit(weights, {"rows": 10, "seed": 0})

    assert summary.kind == "tabular" and summary.feature_names == data.feature_names


@pytest.mark.parametrize(
    ("inputs", "kind"),
    [
        ({"x": torch.zeros(2, 3)}, "tabular"),
        ({"image": torch.zeros(2, 1, 8, 8)}, "image"),
        (
            {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
            "text",
        ),
        (
            {"image": torch.zeros(2, 1, 8, 8), "input_ids": torch.zeros(2, 4, dtype=torch.long)},
            "multimodal",
        ),
    ],
    ids=["tabular", "image", "text", "multimodal"],
)
def test_audit_kind_follows_the_inputs(inputs: dict[str, torch.Tensor], kind: str) -> None:
    assert audit_kind(inputs) == kind


def test_site_dataset_round_trips_through_npz(tmp_path: Path) -> None:
    data = make_clinic_multimodal(20, seed=0)

    loaded = load_site_dataset(str(save_site_dataset(data, tmp_path / "site.npz")))

    assert set(loaded.inputs) == set(data.inputs)
    assert torch.equal(loaded.labels, data.labels)
    assert all(torch.equal(loaded.inputs[k], v) for k, v in data.inputs.items())


def test_int8_export_rebuilds_the_lora_model_and_reports_the_cost(tmp_path: Path) -> None:
    data = make_clinic_multimodal(100, seed=0)
    site = ModelTrainer(data, site_name="clinic-a", device=CPU)
    weights, _, _ = site.fit(site.get_parameters(flower_config()), flower_config())
    run_config = {"model": "multimodal", "model_config": TINY, "lora": LORA, "seed": 7}

    report = export_site_model(weights, run_config, data, tmp_path, site="clinic-a")

    assert report["mode"] in ("static_layers", "dynamic")
    assert report["base_model_hash"] == site.base_model_hash
    assert report["size_ratio"] > 1.0 and report["latency_ms_int8"] > 0
    assert abs(report["accuracy_delta_points"]) <= 10.0
    assert report["holdout_rows"] == 20
    saved = json.loads((tmp_path / "int8_report.json").read_text())
    assert saved["site"] == "clinic-a" and saved["lora"] == LORA
    int8 = load_int8(tmp_path)
    batch = {k: v[:4] for k, v in data.inputs.items()}
    assert int8(**batch).shape == (4, 2)


def test_export_with_a_different_lora_spec_is_refused_with_the_fix(tmp_path: Path) -> None:
    data = make_clinic_multimodal(40, seed=0)
    site = ModelTrainer(data, site_name="clinic-a", device=CPU)
    weights = site.get_parameters(flower_config())
    run_config = {"model": "multimodal", "model_config": TINY, "lora": LORA, "seed": 7}

    with pytest.raises(ValueError, match="--model-config/--lora"):
        export_site_model(weights, run_config, data, tmp_path, lora="r=2,targets=q_proj")


def test_fp32_export_saves_the_merged_model(tmp_path: Path) -> None:
    data = make_clinic_multimodal(40, seed=0)
    site = ModelTrainer(data, site_name="clinic-a", device=CPU)
    weights = site.get_parameters(flower_config())
    run_config = {"model": "multimodal", "model_config": TINY, "lora": LORA, "seed": 7}

    report = export_site_model(weights, run_config, data, tmp_path, int8=False)

    state = torch.load(tmp_path / "model_fp32.pt", weights_only=True)
    assert report["mode"] == "fp32" and not any("lora_" in k for k in state)


def test_export_command_without_a_site_name_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        model_app,
        ["export", "run-1", "--out", str(tmp_path), "--data", "x.npz", "--insecure", "--int8"],
    )

    assert result.exit_code == 2
    assert "--name is required" in result.output
