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
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
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
