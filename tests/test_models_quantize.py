"""INT8 export: the saved model loads, predicts like the exported one, and is smaller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_model, predict_proba, train
from models.clinic import make_clinic_multimodal
from models.datasets import load_digits_images
from models.lora import apply_lora, parse_lora_spec
from models.quantize import export_int8, load_int8, load_report
from models.quantize_layers import StaticLayer, quantizable_share, quantize_static_layers

CPU = torch.device("cpu")


def test_cnn_is_quantised_statically_and_reloads(tmp_path: Path) -> None:
    digits = load_digits_images().subset(np.arange(300))
    torch.manual_seed(0)
    model = build_model("image_cnn", widths=(16, 32))
    train(model, digits, epochs=2, lr=1e-2, device=CPU)

    report = export_int8(model, calibration=digits, evaluation=digits, out_dir=tmp_path, repeats=3)
    loaded = load_int8(tmp_path)

    assert report["mode"] == "static"
    assert report["size_ratio"] > 2.0  # tiny model: per-tensor overhead weighs in
    assert abs(report["accuracy_delta_points"]) < 5.0
    assert load_report(tmp_path) == report
    probs = predict_proba(loaded, {"image": digits.inputs["image"][:20]}, device=CPU)
    assert probs.shape == (20, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    fp32 = predict_proba(model, {"image": digits.inputs["image"][:20]}, device=CPU)
    assert (probs.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_lora_text_model_is_merged_and_quantised_dynamically(tmp_path: Path) -> None:
    data = make_clinic_multimodal(96, seed=0).select(["input_ids", "attention_mask"])
    torch.manual_seed(0)
    base = build_model("text_transformer", vocab_size=200, dim=32, heads=2, layers=1)
    model = apply_lora(base, parse_lora_spec("r=2"))

    report = export_int8(model, calibration=data, evaluation=data, out_dir=tmp_path, repeats=2)
    loaded = load_int8(tmp_path)

    assert report["mode"] in ("static_layers", "dynamic")
    assert set(report["candidates_ms"]) == {"static_layers", "dynamic"}
    assert report["latency_ms_int8"] == report["candidates_ms"][report["mode"]]
    assert 0.0 < report["quantizable_share"] < 1.0
    assert report["speedup_bound"] == pytest.approx(1 / (1 - report["quantizable_share"]))
    inputs = {k: v[:16] for k, v in data.inputs.items()}
    expected = predict_proba(model, inputs, device=CPU)
    np.testing.assert_allclose(predict_proba(loaded, inputs, device=CPU), expected, atol=0.05)


def test_loading_a_missing_export_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export_int8"):
        load_int8(tmp_path)


class _NormOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def test_quantizable_share_counts_only_layers_int8_replaces() -> None:
    """A model with no Linear/conv layer leaves INT8 nothing to speed up: share 0, bound 1x."""
    x = {"x": torch.randn(4, 8)}
    assert quantizable_share(_NormOnly(), x, repeats=2) == 0.0

    mlp = build_model("tabular_mlp", in_features=8, input_norm=False)
    share = quantizable_share(mlp, x, repeats=2)
    assert 0.0 < share < 1.0


def test_static_layers_quantise_every_linear_and_conv_stack_and_stay_close() -> None:
    """Audio encoder: its conv-BN-ReLU stack is fused and INT8, its Linear head too."""
    torch.manual_seed(0)
    model = build_model("audio_encoder", num_classes=3).eval()
    audio = {"audio": torch.randn(16, 2000)}
    with torch.no_grad():
        expected = torch.softmax(model(**audio), dim=1)

    import copy

    int8 = quantize_static_layers(copy.deepcopy(model), [audio])

    wrapped = [m for m in int8.modules() if isinstance(m, StaticLayer)]
    assert len(wrapped) == 2  # the conv stack and the classifier
    kinds = {type(m).__name__ for m in int8.modules()}
    assert {"ConvReLU1d", "Linear", "Quantize"} <= kinds
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    with torch.no_grad():
        got = torch.softmax(int8(**audio), dim=1)
    assert (got - expected).abs().max() < 0.05
