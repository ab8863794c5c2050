"""A final model a site can use: TorchScript with its preprocessing, named weights, a manifest.

Why TorchScript: every site already has torch (it trained with it), so ``torch.jit.load``
needs no new dependency, while ONNX needs ``onnx`` to export and ``onnxruntime`` to load,
neither of which Cohort installs. A traced module runs the same float32 kernels as the
trainer, so its probabilities match the site's to about 1e-7, and it carries the
preprocessing inside the graph: raw feature rows go in, class probabilities come out,
with no Cohort code on the path. torch marks TorchScript deprecated in favour of
``torch.export``, which exports the fp32 scorer fine but cannot serialise the dynamic
INT8 Linear layers (their packed weights have no ``__obj_flatten__`` in torch 2.13);
one format for both keeps the site's instructions to one line.

An export folder holds:

``model.ts``
    TorchScript: ``module(x)`` with ``x`` float32 ``[rows, features]`` of RAW values in
    the manifest's feature order returns probabilities ``[rows, classes]``. It applies
    the ``log_scale`` squash (``sign(x)·log1p(|x|)``) the sites trained on and then the
    model (whose first layer is the federated input normaliser). The schema part of the
    manifest travels inside it too (``_extra_files={"cohort.json": ""}``).
``weights.pt``
    The float state dict (LoRA merged), keyed by state-dict names; it loads with
    ``torch.load(..., weights_only=True)`` into the registry model the manifest names.
``model.json``
    The manifest: features in order, classes, preprocessing steps with their fitted
    values, the model and its config, the run's id and hashes, and each file's sha256.

This module writes exports; reading them (manifest, scorer, rebuilt model) lives in
:mod:`models.export_load`, whose names are importable from here as well.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.export_load import (
    FORMAT,
    INT8_SCRIPT_FILE,
    MANIFEST_FILE,
    PREPROCESSING_FORMULAS,
    SCHEMA_EXTRA_FILE,
    SCRIPT_FILE,
    WEIGHTS_FILE,
    ExportedModel,
    ExportError,
    MissingColumnsError,
    column_order,
    file_sha256,
    load_model,
    load_module,
    read_manifest,
)
from models.quantize_layers import quiet_torch

# Writing lives here, reading in models.export_load; the format's names are one import.
__all__ = [
    "FORMAT",
    "INT8_SCRIPT_FILE",
    "MANIFEST_FILE",
    "PREPROCESSING_FORMULAS",
    "SCHEMA_EXTRA_FILE",
    "SCRIPT_FILE",
    "WEIGHTS_FILE",
    "ExportError",
    "ExportedModel",
    "MissingColumnsError",
    "Provenance",
    "TabularSchema",
    "TabularScorer",
    "column_order",
    "export_model",
    "file_sha256",
    "input_normaliser",
    "load_model",
    "load_module",
    "plain_model",
    "read_manifest",
    "save_int8_script",
    "tabular_manifest",
    "trace_scorer",
    "weights_sha256",
]


@dataclass(frozen=True)
class TabularSchema:
    """What a raw row must hold and what the probabilities mean.

    Attributes
    ----------
    feature_names
        Columns in the order the model reads them.
    class_names
        One name per output probability, in order.
    preprocessing
        Key of :data:`PREPROCESSING_FORMULAS` applied to every raw feature.
    """

    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    preprocessing: str = "log_scale"

    def __post_init__(self) -> None:
        if not self.feature_names:
            raise ExportError("a tabular export needs at least one feature name")
        for what, names in (("feature", self.feature_names), ("class", self.class_names)):
            if any(not isinstance(n, str) or not n for n in names):
                raise ExportError(f"every {what} name must be a non-empty string")
            if len(set(names)) != len(names):
                raise ExportError(f"duplicate {what} names: columns are matched by name")
        if len(self.class_names) < 2:
            raise ExportError("a classifier needs at least two class names")
        if self.preprocessing not in PREPROCESSING_FORMULAS:
            raise ExportError(
                f"unknown preprocessing {self.preprocessing!r}; "
                f"known: {', '.join(PREPROCESSING_FORMULAS)}"
            )


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from, so a site can tie a deployed model to its run.

    ``final_model_sha256`` is the coordinator's reference of the final model (the model
    blob in plaintext runs, the last encrypted aggregate in secure runs);
    ``key_fingerprint`` is the run key's, which sites compared out of band.
    """

    run_id: str
    site: str = ""
    secure: bool = False
    final_model_sha256: str = ""
    key_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class TabularScorer(nn.Module):
    """Raw rows in, probabilities out: the site's squash, then the model, then softmax."""

    def __init__(self, model: nn.Module, preprocessing: str) -> None:
        super().__init__()
        self.model = model
        self.log_scale = preprocessing == "log_scale"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_scale:
            # The same float32 operations as client.data.log_scale, in the same order.
            x = torch.sign(x) * torch.log1p(torch.abs(x))
        return torch.softmax(_logits(self.model(x)), dim=-1)


def _logits(output: Any) -> torch.Tensor:
    from models.training import logits_of

    return logits_of(output)


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """sha256 over each array's dtype, shape and little-endian bytes, in order."""
    digest = hashlib.sha256()
    for array in weights:
        a = np.asarray(array)
        digest.update(f"{a.dtype.name}|{list(a.shape)}\n".encode())
        digest.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def plain_model(model: nn.Module, weights: Sequence[np.ndarray]) -> nn.Module:
    """A CPU eval-mode copy of ``model`` holding ``weights``, LoRA adapters merged."""
    from models.params import is_peft_model, set_weights, unwrap

    plain = copy.deepcopy(unwrap(model)).cpu()
    try:
        if is_peft_model(plain):
            set_weights(plain, list(weights))
            plain = plain.merge_and_unload()  # type: ignore[operator]
        else:
            _set_plain_weights(plain, weights)
    except ValueError as exc:
        raise ExportError(f"the final weights do not fit the model: {exc}") from exc
    return plain.eval()


def _set_plain_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    # models.params.set_weights for a model without adapters (every floating-point
    # state entry, in order), minus its peft check, which would import peft.
    from models.params import check_shapes

    state = {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}
    check_shapes(state, weights)
    with torch.no_grad():
        for tensor, array in zip(state.values(), weights, strict=True):
            tensor.copy_(torch.as_tensor(np.asarray(array)))


def input_normaliser(model: nn.Module, width: int) -> dict[str, Any] | None:
    """The model's input BatchNorm (running mean/var averaged across sites), if any."""
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d) and module.num_features == width:
            if module.running_mean is None or module.running_var is None:
                return None
            return {
                "name": "input_norm",
                "module": name,
                "formula": "(x - mean) / sqrt(var + eps)"
                + ("" if not module.affine else " * weight + bias"),
                "fitted": "running mean and variance exchanged and averaged like weights "
                "(FedAvg over the sites' example counts): identical at every site",
                "mean": [float(v) for v in module.running_mean],
                "var": [float(v) for v in module.running_var],
                "eps": float(module.eps),
                "inside": SCRIPT_FILE,
            }
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Embedding):
            return None  # the first layer with weights comes before any normaliser
    return None


def trace_scorer(scorer: nn.Module, width: int) -> torch.jit.ScriptModule:
    """Trace ``scorer`` on a two-row batch and check it against eager on other rows.

    Tracing (not scripting) accepts any registry or user model whose forward is plain
    tensor code; the check catches a model whose control flow depends on the data.
    """
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, width, generator=generator) * 100.0
    check = torch.randn(5, width, generator=generator) * 1000.0
    with torch.no_grad(), quiet_torch():
        traced = torch.jit.trace(scorer.eval(), example, check_trace=False)
        expected, got = scorer(check), traced(check)
    if not torch.allclose(expected, got, atol=1e-6, rtol=0.0):
        raise ExportError("the traced model disagrees with the model: its forward branches on data")
    return traced


def export_model(
    weights: Sequence[np.ndarray],
    model: nn.Module,
    *,
    model_name: str,
    model_config: Mapping[str, Any],
    schema: TabularSchema | None,
    provenance: Provenance,
    out_dir: Path,
    lora: str = "",
) -> dict[str, Any]:
    """Write the final ``weights`` of ``model`` as a self-contained export; return the manifest.

    ``model`` is the run's architecture as the site built it (LoRA applied when the run
    used it); it is copied, never changed. With a tabular ``schema`` the export includes
    ``model.ts``, which scores raw rows; other models get ``weights.pt`` and the manifest
    (rebuild them with :func:`load_module`).

    Raises
    ------
    ExportError
        If the weights do not fit the model, or the schema does not fit its input width
        or class count.
    """
    out_dir = Path(out_dir)
    plain = plain_model(model, weights)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model": {"name": model_name, "config": dict(model_config), "lora_merged": lora},
        "provenance": {**asdict(provenance), "weights_sha256": weights_sha256(weights)},
        "torch_version": torch.__version__.split("+")[0],
    }
    scorer: TabularScorer | None = None
    if schema is not None:
        width = len(schema.feature_names)
        scorer = TabularScorer(plain, schema.preprocessing).eval()
        try:
            with torch.no_grad():
                probe = scorer(torch.zeros(1, width))
        except RuntimeError as exc:
            raise ExportError(
                f"the model does not take {width} features ({', '.join(schema.feature_names[:3])}"
                f"…): {exc}"
            ) from exc
        if probe.shape[-1] != len(schema.class_names):
            raise ExportError(
                f"the model has {probe.shape[-1]} outputs but {len(schema.class_names)} class "
                f"names were given ({', '.join(schema.class_names)})"
            )
        manifest.update(tabular_manifest(schema, plain))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(plain.state_dict(), out_dir / WEIGHTS_FILE)
    files = {WEIGHTS_FILE: file_sha256(out_dir / WEIGHTS_FILE)}
    if scorer is not None:
        traced = trace_scorer(scorer, len(manifest["inputs"]["features"]))
        schema_json = json.dumps(_schema_part(manifest), sort_keys=True)
        with quiet_torch():
            torch.jit.save(
                traced, str(out_dir / SCRIPT_FILE), _extra_files={SCHEMA_EXTRA_FILE: schema_json}
            )
        files[SCRIPT_FILE] = file_sha256(out_dir / SCRIPT_FILE)
    manifest["files"] = files
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def tabular_manifest(schema: TabularSchema, plain: nn.Module) -> dict[str, Any]:
    """The manifest's inputs, preprocessing and outputs for a tabular model."""
    steps: list[dict[str, Any]] = [
        {
            "name": schema.preprocessing,
            "formula": PREPROCESSING_FORMULAS[schema.preprocessing],
            "applies_to": "every feature column, element-wise, on raw values",
            "fitted": "nothing: a fixed public transform, identical at every site",
            "inside": SCRIPT_FILE,
        }
    ]
    norm = input_normaliser(plain, len(schema.feature_names))
    if norm is not None:
        steps.append(norm)
    return {
        "inputs": {
            "kind": "tabular",
            "features": list(schema.feature_names),
            "dtype": "float32",
            "rows": f"raw values, columns matched by name, in this order for {SCRIPT_FILE}",
        },
        "preprocessing": steps,
        "outputs": {"kind": "probabilities", "classes": list(schema.class_names)},
    }


def _schema_part(manifest: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("format", "inputs", "preprocessing", "outputs", "provenance")
    return {k: manifest[k] for k in keys if k in manifest}


def save_int8_script(int8: nn.Module, out_dir: Path) -> str | None:
    """Trace an INT8 tabular model with the export's preprocessing into ``model_int8.ts``.

    Returns the file's sha256, or None when the export has no tabular schema.
    """
    manifest = read_manifest(out_dir)
    if manifest.get("inputs", {}).get("kind") != "tabular":
        return None
    preprocessing = manifest["preprocessing"][0]["name"]
    scorer = TabularScorer(_KeywordToPositional(int8), preprocessing).eval()
    traced = trace_scorer(scorer, len(manifest["inputs"]["features"]))
    schema_json = json.dumps(_schema_part(manifest), sort_keys=True)
    path = Path(out_dir) / INT8_SCRIPT_FILE
    with quiet_torch():
        torch.jit.save(traced, str(path), _extra_files={SCHEMA_EXTRA_FILE: schema_json})
    digest = file_sha256(path)
    manifest["files"][INT8_SCRIPT_FILE] = digest
    (Path(out_dir) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return digest


class _KeywordToPositional(nn.Module):
    # The INT8 wrappers take keyword tensors (x=...); a traced module takes positions.
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(x=x))
