"""Synthetic "clinic" cases: a small scan, a short clinical note and vitals, seeded.

The label depends on two hidden factors, one visible only in the image (lesion size)
and one only in the note (symptom severity words), so each modality alone tops out well
below what a model that fuses both can reach.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from models.datasets import DictDataset
from models.tokenizer import PAD, UNK, WordTokenizer

SEVERE = ["severe", "persistent", "worsening", "acute", "marked", "progressive"]
MILD = ["mild", "occasional", "improving", "slight", "intermittent", "resolving"]
SYMPTOMS = ["pain", "cough", "fatigue", "fever", "swelling", "dizziness", "headache", "nausea"]
FILLERS = [
    "no known allergies .",
    "history of hypertension .",
    "follow up in clinic .",
    "vitals recorded by nurse .",
    "family history unremarkable .",
    "non smoker .",
    "referred by general practitioner .",
]
TEMPLATE_WORDS = ["year", "old", "male", "female", "presents", "with", "and", "reports", "."]
VITALS = ["heart_rate", "systolic_bp", "temperature_c", "spo2"]
_VITAL_MEAN = np.array([78.0, 125.0, 36.9, 97.0])
_VITAL_STD = np.array([12.0, 15.0, 0.6, 1.8])


@functools.lru_cache(maxsize=1)
def clinic_tokenizer() -> WordTokenizer:
    """The generator's whole lexicon, sorted: identical at every site and for every seed."""
    words = set(SEVERE + MILD + SYMPTOMS + TEMPLATE_WORDS)
    words |= {w for sentence in FILLERS for w in sentence.split()}
    words |= {str(age) for age in range(18, 91)}
    return WordTokenizer((PAD, UNK, *sorted(words)))


def _note(rng: np.random.Generator, severity: float) -> str:
    severe_prob = 1.0 / (1.0 + np.exp(-1.8 * severity))
    phrases = [
        f"{rng.choice(SEVERE if rng.random() < severe_prob else MILD)} {rng.choice(SYMPTOMS)}"
        for _ in range(3)
    ]
    age, sex = int(rng.integers(18, 91)), rng.choice(["male", "female"])
    return (
        f"{age} year old {sex} presents with {phrases[0]} and {phrases[1]} . "
        f"reports {phrases[2]} . {rng.choice(FILLERS)}"
    )


def _scan(rng: np.random.Generator, size: int, lesion: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
    radius = np.clip(size / 8.0 * (1.5 + 0.6 * lesion), 0.6, size / 3.0)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * radius**2))
    return blob * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.2, (size, size))


class ClinicDataset(DictDataset):
    """Clinic cases; inputs ``image``, ``input_ids``, ``attention_mask`` (+ ``tabular``).

    ``notes`` keeps the raw text, ``feature_names`` names the vitals columns and
    ``factors`` holds the hidden ``lesion`` and ``severity`` values (ground truth for
    explanation checks and for deriving other tasks).
    """

    notes: list[str]
    factors: dict[str, np.ndarray]
    tokenizer: WordTokenizer
    feature_names: list[str]


def make_clinic_multimodal(
    n: int,
    seed: int,
    *,
    image_size: int = 16,
    max_len: int = 24,
    with_vitals: bool = False,
    label_noise: float = 0.4,
) -> ClinicDataset:
    """Generate ``n`` clinic cases; label 1 = needs specialist referral.

    Parameters
    ----------
    n, seed
        Size and seed (same seed, same data).
    image_size
        Side of the square grey scan (its lesion's radius carries one factor).
    max_len
        Token length of the notes (they are about 20 tokens).
    with_vitals
        Add a ``tabular`` input of four standardised vitals, weakly informative of both.
    label_noise
        Standard deviation of the noise added to the two factors before thresholding.
    """
    rng = np.random.default_rng(seed)
    lesion = rng.normal(size=n)
    severity = rng.normal(size=n)
    labels = (lesion + severity + rng.normal(0.0, label_noise, n) > 0).astype(np.int64)
    notes = [_note(rng, s) for s in severity]
    images = np.stack([_scan(rng, image_size, a) for a in lesion])
    tokenizer = clinic_tokenizer()
    ids, mask = tokenizer.encode(notes, max_len)
    inputs = {
        "image": torch.tensor(images, dtype=torch.float32).unsqueeze(1),
        "input_ids": ids,
        "attention_mask": mask,
    }
    if with_vitals:
        risk = (lesion + severity)[:, None] / np.sqrt(2.0)
        vitals = _VITAL_MEAN + _VITAL_STD * (0.5 * risk * np.array([1, 0.6, 0.4, -0.5]))
        vitals = vitals + _VITAL_STD * rng.normal(size=(n, len(VITALS)))
        inputs["tabular"] = torch.tensor((vitals - _VITAL_MEAN) / _VITAL_STD, dtype=torch.float32)
    dataset = ClinicDataset(inputs, labels)
    dataset.notes = notes
    dataset.factors = {"lesion": lesion, "severity": severity}
    dataset.tokenizer = tokenizer
    dataset.feature_names = list(VITALS) if with_vitals else []
    return dataset
