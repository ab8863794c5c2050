"""Gated cross-attention fusion: identity at initialisation, optional modalities."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from models.clinic import make_clinic_multimodal
from models.datasets import make_audio_tones


def _model(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    data = make_clinic_multimodal(1, seed=0)
    config = {"vocab_size": data.tokenizer.vocab_size, "dim": 32, "heads": 2, "layers": 2}
    return build_model("multimodal", image_widths=(8, 16), **config, **options).eval()


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in make_clinic_multimodal(n, seed=1, with_vitals=True).inputs.items()}


def test_gated_model_ignores_the_image_until_the_gates_open() -> None:
    model, batch = _model(gated=True), _batch()
    text = {k: batch[k] for k in ("input_ids", "attention_mask")}

    with torch.no_grad():
        with_image = model(**text, image=batch["image"])
        other_image = model(**text, image=torch.rand_like(batch["image"]))

    torch.testing.assert_close(with_image, other_image)


def test_ungated_model_reads_the_image_from_the_first_step() -> None:
    model, batch = _model(gated=False), _batch()
    text = {k: batch[k] for k in ("input_ids", "attention_mask")}

    with torch.no_grad():
        with_image = model(**text, image=batch["image"])
        other_image = model(**text, image=torch.rand_like(batch["image"]))

    assert not torch.allclose(with_image, other_image)


def test_audio_and_tabular_branches_feed_the_fusion() -> None:
    model, batch = _model(audio=True, tabular_features=4, gated=False), _batch()
    audio = make_audio_tones(6, seed=0).inputs["audio"]

    logits = model(**batch, audio=audio)

    assert logits.shape == (6, 2)


def test_modality_the_model_was_not_built_for_is_rejected() -> None:
    model, batch = _model(), _batch()

    with pytest.raises(ValueError, match="tabular_features=0"):
        model(**batch)
