"""`cohort model profile` on every kind of model a site may hold, within the site's policy.

A local Hugging Face directory (built here from a config: nothing is downloaded), a user's
``module:factory``, an export whose model is ``hf:`` (the run chose it), and a LoRA-merged
export; code-importing specs run only when the site lists them with --allow-model.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app as cli_app
from models.export import Provenance, export_model
from models.predictor import load_predictor

runner = CliRunner()
QUICK = ["--device", "cpu", "--batch-sizes", "1,4", "--repeats", "3", "--warmup", "1", "--json"]


def profile(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli_app, ["model", "profile", *args])
    # stdout alone: transformers draws its loading progress bar on stderr.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def profiled(output: str) -> dict:
    report = json.loads(output.strip().splitlines()[-1])
    for p in report["profiles"]:
        assert [t["batch_size"] for t in p["timings"]] == [1, 4]
        assert all(t["throughput_rows_s"] > 0 for t in p["timings"])
    return report


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny BERT classifier saved with save_pretrained, and token ids for it."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    root = tmp_path_factory.mktemp("hf")
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(root / "bert")
    ids = np.random.default_rng(0).integers(1, 64, size=(4, 8)).astype(np.int64)
    np.savez(root / "tokens.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    return {"dir": root / "bert", "example": root / "tokens.npz", "model": model, "root": root}


def test_an_hf_directory_is_profiled_only_when_the_site_allows_it(hf_dir):
    spec = f"hf:{hf_dir['dir']}"
    code, output = profile(spec, *QUICK, "--example", str(hf_dir["example"]))
    assert code == 2 and "refused (policy)" in output and "--allow-model" in output
    code, output = profile(spec, *QUICK, "--example", str(hf_dir["example"]), "--allow-model", spec)
    assert code == 0, output
    assert profiled(output)["profiles"][0]["variant"] == "fp32"
    # Another directory is not the one the site listed.
    other = f"hf:{hf_dir['root']}"
    code, output = profile(
        other, *QUICK, "--example", str(hf_dir["example"]), "--allow-model", spec
    )
    assert code == 2 and "refused" in output


def test_an_export_of_an_hf_model_needs_the_site_to_list_the_spec(hf_dir, tmp_path):
    from models import get_weights

    spec = f"hf:{hf_dir['dir']}"
    model = hf_dir["model"]
    export_model(
        get_weights(model),
        model,
        model_name=spec,
        model_config={},
        schema=None,
        provenance=Provenance(run_id="run-hf"),
        out_dir=tmp_path / "export",
    )
    args = [str(tmp_path / "export"), *QUICK, "--example", str(hf_dir["example"])]
    code, output = profile(*args)
    assert code == 2 and "refused (policy)" in output
    with pytest.raises(ValueError, match="did not list it as trusted"):
        load_predictor(tmp_path / "export")
    code, output = profile(*args, "--allow-model", spec)
    assert code == 0, output
    profiled(output)
    predictor = load_predictor(tmp_path / "export", trusted_specs=(spec,))
    assert predictor.class_names == ("LABEL_0", "LABEL_1", "LABEL_2")
    with np.load(hf_dir["example"]) as archive:
        inputs = {k: archive[k] for k in archive.files}
    with torch.no_grad():
        expected = torch.softmax(
            model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits, dim=-1
        ).numpy()
    np.testing.assert_allclose(predictor(inputs), expected, atol=1e-5)


def test_a_users_factory_is_profiled_with_its_config(tmp_path, monkeypatch):
    (tmp_path / "site_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Scorer(nn.Module):
                def __init__(self, width):
                    super().__init__()
                    self.net = nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 2))

                def forward(self, features):
                    return self.net(features)

            def make(width=4):
                return Scorer(width)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    np.savez(tmp_path / "rows.npz", features=np.ones((3, 6), dtype=np.float32))
    args = ["site_models:make", *QUICK, "--example", str(tmp_path / "rows.npz")]
    code, output = profile(*args, "--model-config", '{"width": 6}')
    assert code == 2 and "refused (policy)" in output
    allowed = [*args, "--allow-model", "site_models:make"]
    code, output = profile(*allowed, "--model-config", '{"width": 6}', "--int8")
    assert code == 0, output
    assert [p["variant"] for p in profiled(output)["profiles"]] == ["fp32", "int8"]
    # The factory's own default width does not fit the example: one line, exit 2.
    code, output = profile(*allowed)
    assert code == 2 and "Traceback" not in output


def test_a_lora_merged_export_is_profiled_with_the_sites_rows_from_its_folder(tmp_path):
    from models import build_model, get_weights
    from models.clinic import make_clinic_multimodal
    from models.lora import apply_lora, parse_lora_spec

    torch.manual_seed(0)
    data = make_clinic_multimodal(8, seed=1, with_vitals=True)
    config = {
        "vocab_size": data.tokenizer.vocab_size,
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "image_widths": (4, 8),
        "tabular_features": int(data.inputs["tabular"].shape[1]),
    }
    lora = "r=4,alpha=8"
    model = apply_lora(build_model("multimodal", **config), parse_lora_spec(lora))
    with torch.no_grad():  # adapters that change the model (B starts at zero)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.eval()
    out = tmp_path / "export"
    manifest = export_model(
        get_weights(model),
        model,
        model_name="multimodal",
        model_config=config,
        schema=None,
        provenance=Provenance(run_id="run-lora"),
        out_dir=out,
        lora=lora,
    )
    assert manifest["model"]["lora_merged"] == lora
    inputs = {k: v.numpy() for k, v in data.inputs.items()}
    np.savez(out / "background.npz", **inputs)  # the site's rows, kept beside its model
    predictor = load_predictor(out)
    with torch.no_grad():
        expected = torch.softmax(model(**data.inputs), dim=-1).numpy()
    np.testing.assert_allclose(predictor(inputs), expected, atol=1e-5)
    code, output = profile(str(out), *QUICK)
    assert code == 0, output
    profiled(output)


def test_model_config_is_for_specs_not_exports(tmp_path):
    code, output = profile(str(tmp_path), "--model-config", '{"a": 1}')
    assert code == 2 and "model.json" in output
    code, output = profile("not_a_model", *QUICK)
    assert code == 2 and "model.json" in output


def test_serve_refuses_a_spec_that_is_not_an_export(hf_dir):
    spec = f"hf:{hf_dir['dir']}"
    result = runner.invoke(cli_app, ["model", "serve", spec, "--allow-model", spec])
    assert result.exit_code == 2 and "not an export folder" in result.output
