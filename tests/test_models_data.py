"""Generated and shipped datasets, the offline tokenizer and the spectrogram."""

from __future__ import annotations

import numpy as np
import torch

from models.clinic import clinic_tokenizer, make_clinic_multimodal
from models.datasets import load_digits_images, make_audio_tones, make_credit_default
from models.spectrogram import LogMelSpectrogram, mel_filterbank
from models.tokenizer import WordTokenizer


def test_clinic_data_is_seeded_and_shaped_for_the_multimodal_model() -> None:
    a = make_clinic_multimodal(50, seed=4, with_vitals=True)
    b = make_clinic_multimodal(50, seed=4, with_vitals=True)

    assert a.notes == b.notes and torch.equal(a.inputs["image"], b.inputs["image"])
    assert set(a.inputs) == {"image", "input_ids", "attention_mask", "tabular"}
    assert a.inputs["image"].shape == (50, 1, 16, 16)
    assert a.feature_names == ["heart_rate", "systolic_bp", "temperature_c", "spo2"]


def test_clinic_label_has_signal_in_both_image_and_text() -> None:
    data = make_clinic_multimodal(2000, seed=0)
    labels = data.labels.numpy()
    image_energy = data.inputs["image"].clamp_min(0.5).sum(dim=(1, 2, 3)).numpy()
    severe_words = np.array([sum(w in n.split() for w in ("severe", "acute")) for n in data.notes])

    assert np.corrcoef(image_energy, labels)[0, 1] > 0.2
    assert np.corrcoef(severe_words, labels)[0, 1] > 0.2


def test_clinic_vocabulary_is_the_same_for_every_seed() -> None:
    one, two = make_clinic_multimodal(5, seed=1), make_clinic_multimodal(5, seed=2)

    assert one.tokenizer == two.tokenizer == clinic_tokenizer()
    assert int((one.inputs["input_ids"] == 1).sum()) == 0  # no unknown words


def test_credit_default_has_named_standardised_features_and_a_minority_class() -> None:
    data = make_credit_default(5000, seed=0)

    assert "utilization" in data.feature_names and len(data.feature_names) == 10
    assert 0.1 < float(data.labels.float().mean()) < 0.35
    assert abs(float(data.inputs["x"].mean())) < 0.1
    assert data.raw is not None and data.raw.shape == (5000, 10)


def test_digits_are_grey_images_in_unit_range() -> None:
    digits = load_digits_images()

    assert digits.inputs["image"].shape == (1797, 1, 8, 8)
    assert float(digits.inputs["image"].max()) <= 1.0 and digits.num_classes == 10


def test_tokenizer_round_trips_through_json_and_maps_unknown_words() -> None:
    tok = WordTokenizer.fit(["fever and cough", "cough"])

    again = WordTokenizer.from_json(tok.to_json())
    ids, mask = again.encode(["cough with fever"], max_len=5)

    assert again == tok and tok.vocab[2] == "cough"
    assert ids[0].tolist() == [2, 1, tok.index["fever"], 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 0, 0]


def test_log_mel_spectrogram_peaks_in_the_band_of_the_tone() -> None:
    tones = make_audio_tones(6, seed=0, num_classes=3)
    features = LogMelSpectrogram(n_mels=32)(tones.inputs["audio"])
    peak_band = features.mean(dim=2).argmax(dim=1)

    assert features.shape == (6, 32, 1 + 2000 // 128)
    low, high = tones.labels == 0, tones.labels == 2
    if low.any() and high.any():
        assert peak_band[low].float().mean() < peak_band[high].float().mean()
    assert torch.allclose(mel_filterbank(8, 64, 8000).sum(dim=0).max(), torch.tensor(1.0))


def test_text_dataset_tokenises_with_the_shared_vocabulary() -> None:
    from models.datasets import TextDataset

    texts, labels = ["severe cough", "mild fever today"], np.array([1, 0])
    tok = WordTokenizer.fit(texts)

    data = TextDataset(texts, labels, tok, max_len=4)
    inputs, label = data[1]

    assert set(inputs) == {"input_ids", "attention_mask"} and int(label) == 0
    assert tok.decode(inputs["input_ids"].tolist()) == "mild fever today"
