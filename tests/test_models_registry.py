"""Registry: every built-in model trains, HF models load from a local directory, factories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import DictDataset, available_models, build_model, evaluate, train
from models.clinic import make_clinic_multimodal
from models.datasets import load_digits_images, make_audio_tones, make_credit_default

CPU = torch.device("cpu")


def _case(name: str) -> tuple[dict, DictDataset, float]:
    if name == "tabular_mlp":
        data = make_credit_default(128, seed=0)
        return {"in_features": 10}, data, 1e-2
    if name == "image_cnn":
        digits = load_digits_images()
        return {"widths": (8, 16)}, digits.subset(np.arange(128)), 1e-2
    if name == "audio_encoder":
        return {"num_classes": 3, "width": 16}, make_audio_tones(96, seed=0), 1e-2
    clinic = make_clinic_multimodal(128, seed=0, with_vitals=True)
    small = {"vocab_size": clinic.tokenizer.vocab_size, "dim": 32, "heads": 2, "layers": 1}
    if name == "text_transformer":
        return small, clinic.select(["input_ids", "attention_mask"]), 3e-3
    return {**small, "image_widths": (8, 16), "tabular_features": 4}, clinic, 3e-3


def test_available_models_lists_the_five_builtins() -> None:
    assert available_models() == [
        "audio_encoder",
        "image_cnn",
        "multimodal",
        "tabular_mlp",
        "text_transformer",
    ]


@pytest.mark.parametrize("name", available_models())
def test_each_builtin_model_trains_and_its_loss_falls(name: str) -> None:
    config, data, lr = _case(name)
    torch.manual_seed(0)
    model = build_model(name, **config)
    before = evaluate(model, data, device=CPU)["loss"]

    train(model, data, epochs=4, lr=lr, batch_size=32, device=CPU)

    after = evaluate(model, data, device=CPU)["loss"]
    assert after < before


def test_unknown_model_name_is_rejected_with_the_available_ones() -> None:
    with pytest.raises(ValueError, match="tabular_mlp"):
        build_model("resnet9000")


def _tiny_factory(width: int = 3) -> nn.Module:
    return nn.Linear(width, 2)


def test_user_factory_is_called_with_the_config() -> None:
    model = build_model(
        f"{__name__}:_tiny_factory", trusted_specs=[f"{__name__}:_tiny_factory"], width=5
    )

    assert isinstance(model, nn.Linear) and model.in_features == 5


def test_factory_that_does_not_exist_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no callable"):
        build_model(f"{__name__}:missing_factory", trusted_specs=[f"{__name__}:missing_factory"])


def test_hf_model_loads_from_a_local_directory_and_trains(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    config.num_labels = 2
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    ids = torch.randint(2, 60, (64, 12))
    labels = (ids[:, 0] > 30).long()
    data = DictDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels)

    model = build_model(f"hf:{tmp_path}", trusted_specs=[f"hf:{tmp_path}"])
    before = evaluate(model, data, device=CPU)["loss"]
    train(model, data, epochs=5, lr=3e-3, device=CPU)

    assert evaluate(model, data, device=CPU)["loss"] < before


def test_hf_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        build_model(f"hf:{tmp_path}", trusted_specs=[f"hf:{tmp_path}"])


def test_a_code_spec_the_site_did_not_list_is_never_imported(tmp_path) -> None:
    sentinel = tmp_path / "ran"
    spec = "subprocess:run"
    with pytest.raises(ValueError, match="did not list it"):
        build_model(spec, args=["touch", str(sentinel)])
    with pytest.raises(ValueError, match="did not list it"):
        build_model(f"hf:{tmp_path}", trusted_specs=["hf:/elsewhere"])
    assert not sentinel.exists()
