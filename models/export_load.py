"""Reading a Cohort export: its manifest, its TorchScript scorer, its rebuilt model.

The format is described in :mod:`models.export` (which writes it); this module is what a
site needs to *use* an export: :func:`read_manifest`, :func:`load_model` (raw rows in,
probabilities out) and :func:`load_module` (the registry model with ``weights.pt``). Every
file is checked against the sha256 the manifest records before it is used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.quantize_layers import quiet_torch

FORMAT = "cohort-model/1"
MANIFEST_FILE = "model.json"
SCRIPT_FILE = "model.ts"
WEIGHTS_FILE = "weights.pt"
INT8_SCRIPT_FILE = "model_int8.ts"
SCHEMA_EXTRA_FILE = "cohort.json"

# The element-wise transforms a site may apply before the model; fixed and public, so
# every site applies the same one and nothing needs fitting (client/data.py names them).
PREPROCESSING_FORMULAS: dict[str, str] = {
    "log_scale": "sign(x) * log1p(abs(x))",
    "identity": "x",
}


class ExportError(ValueError):
    """An export that cannot be written or read as asked; the message says why."""


class MissingColumnsError(ExportError):
    """Rows to score lack a column the model needs."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(m) for m in self.missing[:5])
        more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
        plural = len(self.missing) > 1
        super().__init__(
            f"missing column{'s' if plural else ''} {shown}{more}: "
            f"the model needs {'them' if plural else 'it'}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    """The export's ``model.json``.

    Raises
    ------
    ExportError
        If the folder holds no export or the manifest is of another format.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(
            f"no {MANIFEST_FILE} in {directory}: export the model first "
            "(`cohort model export` or `cohort client export-model`)"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is format {manifest.get('format')!r}, not {FORMAT!r}")
    return manifest


def column_order(columns: Sequence[str], features: Sequence[str]) -> list[int]:
    """Index into ``columns`` of each feature, by name; extra columns are ignored.

    Raises
    ------
    MissingColumnsError
        Naming every feature that ``columns`` lacks.
    ExportError
        If a needed column name occurs twice (which one would be meant is unknowable).
    """
    where: dict[str, int] = {}
    duplicated = set()
    for index, name in enumerate(columns):
        if name in where:
            duplicated.add(name)
        where[name] = index
    missing = [f for f in features if f not in where]
    if missing:
        raise MissingColumnsError(missing)
    twice = [f for f in features if f in duplicated]
    if twice:
        raise ExportError(f"column {twice[0]!r} appears more than once")
    return [where[f] for f in features]


@dataclass
class ExportedModel:
    """A loaded export: call :meth:`predict_proba` on raw rows."""

    directory: Path
    manifest: dict[str, Any]
    module: torch.jit.ScriptModule

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["inputs"]["features"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["outputs"]["classes"])

    @torch.no_grad()
    def predict_proba(self, rows: np.ndarray, columns: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities ``[rows, classes]`` for RAW rows.

        ``columns`` names the columns of ``rows``; they are matched to the model's
        features by name (order irrelevant, extras ignored). Without ``columns`` the
        rows must already be in :attr:`feature_names` order.

        Raises
        ------
        MissingColumnsError
            If a feature is missing from ``columns``.
        ExportError
            If the rows are not 2-D, have the wrong width, or hold NaN or infinity.
        """
        x = np.asarray(rows, dtype=np.float32)
        if x.ndim != 2:
            raise ExportError(f"rows must be 2-D [rows, columns], got shape {x.shape}")
        if columns is not None:
            if len(columns) != x.shape[1]:
                raise ExportError(f"{len(columns)} column names for {x.shape[1]} columns")
            x = x[:, column_order(columns, self.feature_names)]
        elif x.shape[1] != len(self.feature_names):
            raise ExportError(
                f"rows have {x.shape[1]} columns, the model {len(self.feature_names)}"
            )
        bad = ~np.isfinite(x).all(axis=0)
        if bad.any():
            name = self.feature_names[int(np.flatnonzero(bad)[0])]
            raise ExportError(f"column {name!r} holds a missing or infinite value")
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        out: np.ndarray = self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return out


def load_model(directory: Path, *, int8: bool = False, verify: bool = True) -> ExportedModel:
    """Load an export's TorchScript scorer (``model_int8.ts`` with ``int8``).

    With ``verify`` the file's sha256 must match the manifest, so a swapped or damaged
    file is refused rather than scored with.

    Raises
    ------
    ExportError
        If the export has no scorer (a non-tabular model), the file is missing, or its
        hash does not match.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    name = INT8_SCRIPT_FILE if int8 else SCRIPT_FILE
    expected = manifest.get("files", {}).get(name)
    if manifest.get("inputs", {}).get("kind") != "tabular" or expected is None:
        raise ExportError(
            f"{directory} has no {name}: only tabular exports"
            + (" made with --int8" if int8 else "")
            + " score raw rows; rebuild other models with models.export.load_module"
        )
    path = directory / name
    if not path.is_file():
        raise ExportError(f"{path} is missing")
    if verify and file_sha256(path) != expected:
        raise ExportError(f"{path} does not match the sha256 in {MANIFEST_FILE}: refusing it")
    with quiet_torch():
        module = torch.jit.load(str(path), map_location="cpu")
    return ExportedModel(directory, manifest, module.eval())


def load_module(
    directory: Path, *, verify: bool = True, trusted_specs: Collection[str] = ()
) -> nn.Module:
    """Rebuild the registry model the manifest names and load ``weights.pt`` (strict).

    This is the model without the preprocessing: it takes prepared inputs, as during
    training, and returns logits. Useful for fine-tuning or SHAP at the site. A manifest
    naming a spec that imports code (``hf:/dir``, ``module:factory``) is rebuilt only when
    the site lists it in ``trusted_specs`` (:func:`models.registry.build_model`).
    """
    from models.registry import build_model

    directory = Path(directory)
    manifest = read_manifest(directory)
    path = directory / WEIGHTS_FILE
    if verify and file_sha256(path) != manifest["files"][WEIGHTS_FILE]:
        raise ExportError(f"{path} does not match the sha256 in {MANIFEST_FILE}: refusing it")
    model = build_model(
        manifest["model"]["name"], trusted_specs=trusted_specs, **manifest["model"]["config"]
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
