"""The exported model scores raw rows, with Cohort and without, like the site's trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import breast_cancer_sites, create_run, wait_for_state
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.model import change_cells, export_site_model, report_table
from client.data import TabularData, load_sklearn, log_scale, save_csv
from client.trainer import TabularTrainer
from models.export import (
    MANIFEST_FILE,
    SCRIPT_FILE,
    ExportError,
    Provenance,
    TabularSchema,
    export_model,
    file_sha256,
    load_model,
    load_module,
)
from models.params import set_weights
from models.quantize import speed_verdict
from protos import common_pb2

CPU = torch.device("cpu")
COHORT_PACKAGES = ("coordinator", "client", "crypto", "models", "explain", "cli", "protos")
runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A breast-cancer site trained a little, its export (via the pure function), its CSV."""
    data = load_sklearn("breast_cancer")
    trainer = TabularTrainer(data, seed=3, device=CPU)
    weights, _, _ = trainer.fit(trainer.get_parameters({}), {"local_epochs": 3, "lr": 0.01})
    root = tmp_path_factory.mktemp("export")
    manifest = export_model(
        weights,
        trainer.model,
        model_name=trainer.model_name,
        model_config=trainer.model_config,
        schema=trainer.export_schema(),
        provenance=Provenance(
            run_id="run-42",
            site="hospital-a",
            secure=True,
            final_model_sha256="ab" * 32,
            key_fingerprint="fp:1234",
        ),
        out_dir=root / "model",
    )
    csv = save_csv(data, root / "rows.csv")
    # The trainer's own probabilities on the raw rows, prepared as it prepares them.
    expected = trainer.predict_proba(log_scale(data.x))
    return {
        "data": data,
        "trainer": trainer,
        "weights": weights,
        "dir": root / "model",
        "manifest": manifest,
        "csv": csv,
        "expected": expected,
        "root": root,
    }


PLAIN_TORCH_SCORER = r"""
import csv, json, sys
import torch

folder, rows_csv = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{folder}/model.json"))
features = manifest["inputs"]["features"]
with open(rows_csv, newline="") as handle:
    reader = csv.DictReader(handle)
    x = [[float(row[name]) for name in features] for row in reader]  # by name, any order
extra = {"cohort.json": ""}
model = torch.jit.load(f"{folder}/model.ts", _extra_files=extra)
probabilities = model(torch.tensor(x, dtype=torch.float32))
ours = sorted(
    m for m in sys.modules if m.split(".")[0] in
    ("coordinator", "client", "crypto", "models", "explain", "cli", "protos")
)
print(json.dumps({
    "p": probabilities.tolist(),
    "classes": manifest["outputs"]["classes"],
    "embedded_features": json.loads(extra["cohort.json"])["inputs"]["features"],
    "cohort_modules": ours,
}))
"""


def test_a_fresh_python_without_cohort_scores_raw_rows_like_the_trainer(site, tmp_path):
    # Columns shuffled on disk: the plain script must match them by name too.
    frame = pd.read_csv(site["csv"])
    frame[list(reversed(frame.columns))].to_csv(tmp_path / "shuffled.csv", index=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_TORCH_SCORER,
            str(site["dir"]),
            str(tmp_path / "shuffled.csv"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: nothing of Cohort is importable by accident
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["cohort_modules"] == []
    assert out["classes"] == ["malignant", "benign"]
    assert out["embedded_features"] == site["data"].feature_names
    np.testing.assert_allclose(np.array(out["p"]), site["expected"], atol=1e-5, rtol=0)
    # Not a constant model: raw rows without the squash were the reported failure.
    assert float((np.array(out["p"]).argmax(1) == site["data"].y).mean()) > 0.8


def test_the_manifest_states_features_classes_preprocessing_and_provenance(site):
    manifest = json.loads((site["dir"] / MANIFEST_FILE).read_text())
    model = site["trainer"].model

    assert manifest["inputs"]["features"] == site["data"].feature_names
    assert manifest["outputs"]["classes"] == ["malignant", "benign"]
    squash, norm = manifest["preprocessing"]
    assert squash["name"] == "log_scale" and squash["formula"] == "sign(x) * log1p(abs(x))"
    # The normaliser's fitted values are written out, equal to the model's own.
    np.testing.assert_allclose(norm["mean"], model.body[0].running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(norm["var"], model.body[0].running_var.numpy(), rtol=1e-6)
    provenance = manifest["provenance"]
    assert provenance["run_id"] == "run-42" and provenance["key_fingerprint"] == "fp:1234"
    assert provenance["final_model_sha256"] == "ab" * 32 and len(provenance["weights_sha256"]) == 64
    for name, digest in manifest["files"].items():
        assert file_sha256(site["dir"] / name) == digest


def test_named_weights_rebuild_the_model_with_cohort(site):
    state = torch.load(site["dir"] / "weights.pt", weights_only=True)
    assert "classifier.weight" in state and not any(k.startswith("arr_") for k in state)

    module = load_module(site["dir"])
    with torch.no_grad():
        logits = module(torch.from_numpy(log_scale(site["data"].x)))
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), site["expected"], atol=1e-6)


def test_the_trainers_schema_is_what_it_trained_on():
    data = TabularData(
        np.array([[1.0, -200.0], [3.0, 4000.0], [5.0, 6.0], [0.0, 1.0]] * 5, np.float32),
        np.array([0, 1, 0, 1] * 5),
        ["age", "income"],
    )
    plain = TabularTrainer(data, preprocess="none", device=CPU).export_schema()
    squashed = TabularTrainer(data, device=CPU).export_schema()

    assert plain == TabularSchema(("age", "income"), ("0", "1"), "identity")
    assert squashed.preprocessing == "log_scale"


def predict(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["model", "predict", *args], catch_exceptions=False)


def test_predict_matches_columns_by_name_and_ignores_extras(site, tmp_path):
    frame = pd.read_csv(site["csv"])
    reordered = frame[list(reversed(frame.columns))].assign(notes="free text")
    reordered.to_csv(tmp_path / "reversed.csv", index=False)

    straight = predict(str(site["dir"]), str(site["csv"]), "--json")
    backwards = predict(str(site["dir"]), str(tmp_path / "reversed.csv"), "--json")

    assert straight.exit_code == 0, straight.output
    assert backwards.exit_code == 0, backwards.output
    assert json.loads(straight.output) == json.loads(backwards.output)
    rows = json.loads(straight.output)["rows"]
    got = np.array([[r["malignant"], r["benign"]] for r in rows])
    np.testing.assert_allclose(got, site["expected"], atol=1e-5, rtol=0)


def test_predict_writes_class_named_columns(site, tmp_path):
    result = predict(str(site["dir"]), str(site["csv"]), "--out", str(tmp_path / "p.csv"))

    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "p.csv")
    assert list(written.columns) == ["malignant", "benign", "predicted"]
    assert len(written) == len(site["data"].y)
    np.testing.assert_allclose(written[["malignant", "benign"]].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda f: f.drop(columns=["worst area"]), ["missing column ", "'worst area'", "needs it"]),
        (lambda f: f.assign(**{"mean radius": "big"}), ["'mean radius'", "not numeric"]),
        (lambda f: f.assign(**{"mean area": np.nan}), ["'mean area'", "missing"]),
    ],
    ids=["missing", "text", "empty"],
)
def test_predict_refuses_bad_rows_in_one_line_with_exit_2(site, tmp_path, damage, words):
    damage(pd.read_csv(site["csv"])).to_csv(tmp_path / "bad.csv", index=False)

    result = predict(str(site["dir"]), str(tmp_path / "bad.csv"))

    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error:") and "Traceback" not in text and len(text.splitlines()) == 1
    for word in words:
        assert word in text


def test_a_swapped_model_file_is_refused(site, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(site["dir"], copy)
    with open(copy / SCRIPT_FILE, "ab") as handle:
        handle.write(b"\0")

    with pytest.raises(ExportError, match="sha256"):
        load_model(copy)
    result = predict(str(copy), str(site["csv"]))
    assert result.exit_code == 2 and "sha256" in result.output


def test_weights_of_another_model_are_refused(site, tmp_path):
    wrong = [w[..., :1] if w.ndim else w for w in site["weights"]]

    with pytest.raises(ExportError, match="do not fit"):
        export_model(
            wrong,
            site["trainer"].model,
            model_name="tabular_mlp",
            model_config=site["trainer"].model_config,
            schema=site["trainer"].export_schema(),
            provenance=Provenance(run_id="r"),
            out_dir=tmp_path,
        )
    with pytest.raises(ExportError, match="3 class names"):
        export_model(
            site["weights"],
            site["trainer"].model,
            model_name="tabular_mlp",
            model_config=site["trainer"].model_config,
            schema=TabularSchema(tuple(site["data"].feature_names), ("a", "b", "c")),
            provenance=Provenance(run_id="r"),
            out_dir=tmp_path,
        )


def _table_text(report: dict) -> str:
    console = Console(record=True, width=200)
    console.print(report_table(report, "run-42"))
    return " ".join(console.export_text().split())  # the caption wraps


def test_int8_export_table_and_json_say_the_same(site, tmp_path):
    report = export_site_model(
        site["weights"], {"model": "tabular_mlp"}, site["data"], tmp_path, int8=True, seed=3
    )
    saved = json.loads((tmp_path / "int8_report.json").read_text())
    text = _table_text(saved)

    assert saved["accuracy_delta_points"] == pytest.approx(
        100 * (saved["accuracy_int8"] - saved["accuracy_fp32"])
    )
    assert f"{saved['accuracy_delta_points']:+.2f} points" in text
    assert f"{saved['speedup']:.2f}x" in text and saved["speed_verdict"] in text
    assert saved["faster"] == (saved["speedup"] >= 1.1)
    # The INT8 TorchScript scores raw rows too, close to fp32.
    int8 = load_model(tmp_path, int8=True)
    probabilities = int8.predict_proba(site["data"].x)
    assert np.abs(probabilities - site["expected"]).max() < 0.2
    assert report["export"]["files"]["model_int8.ts"] == file_sha256(tmp_path / "model_int8.ts")


def test_a_slower_int8_model_is_called_slower_with_the_jsons_signs():
    report = {
        "site": "hospital-a",
        "model": "tabular_mlp",
        "mode": "dynamic",
        "size_bytes_fp32": 20480,
        "size_bytes_int8": 10240,
        "size_ratio": 2.0,
        "latency_ms_fp32": 0.91,
        "latency_ms_int8": 1.0,
        "speedup": 0.91,
        "faster": False,
        "speed_verdict": speed_verdict(0.91),
        "latency_batch": 64,
        "accuracy_fp32": 0.9717,
        "accuracy_int8": 0.97,
        "accuracy_delta_points": -0.17,
        "holdout_rows": 600,
    }

    text = _table_text(report)

    assert "-0.17 points" in text and "+0.2" not in text
    assert "0.91x (slower)" in text and "SLOWER" in report["speed_verdict"]
    assert change_cells({**report, "speedup": 1.05})["latency"] == "1.05x (not faster)"


@pytest.mark.slow
def test_a_secure_runs_export_scores_raw_rows_through_the_cli(coordinator, agents, tmp_path):
    sites = agents.start(coordinator.address, breast_cancer_sites(3), tmp_path)
    admin = coordinator.admin()
    run = create_run(admin, secure=True, rounds=2)
    info = wait_for_state(
        admin, run.run_id, (common_pb2.RUN_STATE_COMPLETED, common_pb2.RUN_STATE_FAILED), 240
    )
    assert info.state == common_pb2.RUN_STATE_COMPLETED, info.failure_reason
    data = load_sklearn("breast_cancer")
    csv = save_csv(data, tmp_path / "rows.csv")

    exported = runner.invoke(
        app,
        ["client", "export-model", run.run_id, "--out", str(tmp_path / "model"),
         "--data", "sklearn:breast_cancer", "--name", "site-1",
         "--state-dir", str(tmp_path / "site-1"), "--coordinator", coordinator.address,
         "--insecure"],
        catch_exceptions=False,
    )  # fmt: skip
    scored = predict(str(tmp_path / "model"), str(csv), "--json")

    assert exported.exit_code == 0, exported.output
    assert scored.exit_code == 0, scored.output
    manifest = json.loads((tmp_path / "model" / MANIFEST_FILE).read_text())
    provenance = manifest["provenance"]
    assert provenance["run_id"] == run.run_id and provenance["secure"] is True
    assert provenance["key_fingerprint"] == info.key_fingerprint != ""
    assert provenance["final_model_sha256"] == info.final_model_sha256 != ""
    # The site's own trainer, holding the final weights, on the same raw rows.
    trainer = sites[1].client
    set_weights(trainer.model, sites[1].export_model(run.run_id))
    expected = trainer.predict_proba(log_scale(data.x))
    rows = json.loads(scored.output)["rows"]
    got = np.array([[r["malignant"], r["benign"]] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
