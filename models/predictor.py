"""A loaded model for scoring: an export or a model spec as a :class:`Predictor`.

A predictor turns named input arrays (leading dimension = rows) into class probabilities
under ``torch.inference_mode`` (bf16 autocast on CUDA). The dynamic batcher that shares one
predictor among many callers lives in :mod:`models.batching`; the HTTP service over both
in :mod:`models.serving_http`.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.device import autocast_context
from models.export import (
    INT8_SCRIPT_FILE,
    ExportError,
    TabularScorer,
    load_model,
    load_module,
    read_manifest,
)

Inputs = dict[str, np.ndarray]
TABULAR_INPUT = "x"  # the one input of a tabular scorer: raw rows [n, features]


@dataclass
class Predictor:
    """An export loaded for scoring: named arrays in, probabilities ``[rows, classes]`` out."""

    kind: str  # "tabular" (raw rows through model.ts) or "named" (the registry model)
    module: nn.Module
    device: torch.device
    input_names: tuple[str, ...]
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict)
    int8: bool = False
    required_inputs: tuple[str, ...] = ()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
            for k, v in inputs.items()
        }
        with torch.inference_mode(), autocast_context(self.device):
            if self.kind == "tabular":
                out = self.module(tensors[TABULAR_INPUT])
            else:
                out = torch.softmax(_logits(self.module(**tensors)).float(), dim=-1)
        return out.float().cpu().numpy()


def _logits(output: Any) -> torch.Tensor:
    from models.training import logits_of

    return logits_of(output)


def load_predictor(
    directory: Path,
    *,
    int8: bool = False,
    device: str = "cpu",
    trusted_specs: Collection[str] = (),
) -> Predictor:
    """Load an export folder for serving or profiling.

    Tabular exports run their TorchScript scorer (``model_int8.ts`` with ``int8``, or, when
    the export has none, the float weights quantised here with dynamic INT8 Linear layers).
    Other exports rebuild the registry model from ``weights.pt`` and take its named inputs;
    one whose model imports code (``hf:``, ``module:factory``) only when the site lists it
    in ``trusted_specs``. A LoRA export holds the merged weights, so it loads as its base.

    Raises
    ------
    ExportError
        If the folder holds no usable export, or INT8 is asked for on CUDA (PyTorch's
        INT8 kernels are CPU kernels).
    """
    target = _target(device, int8)
    directory = Path(directory)
    manifest = read_manifest(directory)
    classes = tuple(manifest.get("outputs", {}).get("classes", ()))
    if manifest.get("inputs", {}).get("kind") == "tabular":
        features = tuple(manifest["inputs"]["features"])
        module: nn.Module
        if int8 and INT8_SCRIPT_FILE not in manifest.get("files", {}):
            from models.quantize import quantize_dynamic

            module = TabularScorer(
                quantize_dynamic(load_module(directory)), manifest["preprocessing"][0]["name"]
            ).eval()
        else:
            module = load_model(directory, int8=int8).module
        return Predictor(
            "tabular",
            module.to(target),
            target,
            (TABULAR_INPUT,),
            classes,
            features,
            manifest,
            int8,
        )
    module = load_module(directory, trusted_specs=trusted_specs)
    if not classes:
        classes = _class_names(module, manifest["model"]["config"])
    return _named_predictor(module, target, classes, manifest, int8)


def spec_predictor(
    spec: str,
    config: Mapping[str, Any],
    *,
    int8: bool = False,
    device: str = "cpu",
    trusted_specs: Collection[str] = (),
) -> Predictor:
    """A predictor straight from a model spec, no export: a registry name, a local
    ``hf:/dir`` or a user's ``module:factory`` (the last two only when in
    ``trusted_specs``, as :func:`models.registry.build_model` requires).

    The weights are the spec's own (the directory's for ``hf:``, the factory's): this is
    for profiling an architecture on this machine before or without a run.
    """
    from models.registry import build_model

    target = _target(device, int8)
    module = build_model(spec, trusted_specs=trusted_specs, **dict(config))
    manifest = {"model": {"name": spec, "config": dict(config)}}
    return _named_predictor(module, target, _class_names(module, config), manifest, int8)


def _target(device: str, int8: bool) -> torch.device:
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda asked for, but this machine has no CUDA device")
    if int8 and target.type != "cpu":
        raise ExportError("INT8 models run on the CPU only: drop --int8 or use --device cpu")
    return target


def _class_names(module: nn.Module, config: Mapping[str, Any]) -> tuple[str, ...]:
    # A Hugging Face model names its labels; registry and user models say how many.
    labels = getattr(getattr(module, "config", None), "id2label", None)
    if isinstance(labels, dict) and labels:
        return tuple(str(labels[i]) for i in sorted(labels))
    return tuple(str(i) for i in range(int(config.get("num_classes", 2))))


def _named_predictor(
    module: nn.Module,
    target: torch.device,
    classes: tuple[str, ...],
    manifest: dict[str, Any],
    int8: bool,
) -> Predictor:
    if int8:
        from models.quantize import quantize_dynamic

        module = quantize_dynamic(module)
    params = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    names = tuple(p.name for p in params)
    required = tuple(p.name for p in params if p.default is p.empty)
    return Predictor(
        "named", module.to(target).eval(), target, names, classes, (), manifest, int8, required
    )


def concat_inputs(parts: list[Inputs]) -> Inputs:
    """Stack requests' inputs along rows, input by input."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def rows_of(inputs: Inputs) -> int:
    return int(next(iter(inputs.values())).shape[0])
