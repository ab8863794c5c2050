"""A site's rows on disk: an ``.npz`` of named inputs plus ``label``, or tabular data.

What ``cohort client --data`` and ``cohort model export`` read for a registry-model site
(client/model_trainer.py trains on them) and what the demo's scenarios write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import models
from models.datasets import DictDataset

LABEL_KEY = "label"


def save_site_dataset(data: DictDataset, path: Path) -> Path:
    """Write a site's rows as ``.npz``: one array per input plus ``label``."""
    if LABEL_KEY in data.inputs:
        raise ValueError(f"an input may not be named {LABEL_KEY!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: tensor.numpy() for name, tensor in data.inputs.items()}
    arrays[LABEL_KEY] = data.labels.numpy()
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as its flags
    return path


def load_site_dataset(
    source: str, label_column: str = "label", preprocess: str = "log"
) -> DictDataset:
    """Load a site's rows: an ``.npz`` of named inputs plus ``label``, or tabular data.

    Tabular sources (CSV, Parquet, ``x``/``y`` ``.npz``, ``sklearn:NAME``) become a
    ``TabularDataset`` prepared as the built-in tabular trainer prepares them
    (``preprocess="log"``), so a model trained there is evaluated on the same scale.
    """
    from client.data import load_tabular, log_scale

    path = Path(source)
    if path.suffix.lower() == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            if LABEL_KEY in archive:
                inputs = {
                    name: torch.from_numpy(np.asarray(archive[name]))
                    for name in archive.files
                    if name != LABEL_KEY
                }
                return DictDataset(inputs, archive[LABEL_KEY])
    table = load_tabular(source, label_column)
    if preprocess not in ("log", "none"):
        raise ValueError(f"unknown preprocessing {preprocess!r}: use 'log' or 'none'")
    x = log_scale(table.x) if preprocess == "log" else table.x.astype(np.float32)
    return models.TabularDataset(x, np.array(table.y, dtype=np.int64), table.feature_names)
