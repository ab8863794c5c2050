"""Rebuild a run's model at a site and write its export: the function under both export commands.

`cohort model export` and `cohort client export-model` fetch the final weights
(:mod:`cli.model_export`) and hand them here with the site's rows, which name the
features and classes, give the held-out split and calibrate INT8.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from models.export import Provenance

# torch is imported inside the functions: `cohort --help` should not pay for it.

FP32_MODEL_FILE = "model_fp32.pt"
FP32_REPORT_FILE = "fp32_report.json"


def load_export_data(source: str, label_column: str = "label") -> Any:
    """A site's rows for an export: raw ``TabularData`` for tabular sources (CSV, Parquet,
    ``x``/``y`` ``.npz``, ``sklearn:NAME``), else a ``DictDataset`` of named inputs."""
    import numpy as np

    from client.data import load_tabular
    from client.site_dataset import LABEL_KEY, load_site_dataset

    path = Path(source)
    if path.suffix.lower() == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            if LABEL_KEY in archive.files:
                return load_site_dataset(source, label_column)
    return load_tabular(source, label_column)


def export_site_model(
    weights: list[np.ndarray],
    run_config: dict[str, Any],
    data: Any,
    out_dir: Path,
    *,
    int8: bool = True,
    measure: bool = True,
    site: str = "site",
    seed: int = 0,
    model_config: dict[str, Any] | None = None,
    lora: str | None = None,
    provenance: Provenance | None = None,
    extra: dict[str, Any] | None = None,
    trusted_specs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Rebuild the run's model, load ``weights``, write the self-contained export.

    ``data`` is the site's rows: raw ``TabularData`` (the export then scores raw rows:
    ``model.ts`` applies the sites' ``log_scale`` squash and names features and classes)
    or a ``DictDataset`` of named inputs (weights and manifest only). With ``measure``,
    fp32 (and with ``int8`` INT8) size, CPU latency and held-out accuracy are measured
    and reported; the held-out split is the site trainer's (same ``seed``), so accuracy
    is measured on rows the site never trained on, and its training rows calibrate the
    INT8 activation ranges. ``model_config`` / ``lora`` override the run's when given.

    Returns
    -------
    dict
        The report: the manifest's provenance and files, and with ``measure`` the sizes,
        latencies and accuracies, plus the run, site and model it describes.

    Raises
    ------
    ValueError
        If the weights do not fit the rebuilt model (wrong model, config or LoRA).
    """
    import numpy as np

    import models
    from client.data import PREPROCESSING_STEPS, TabularData, log_scale
    from client.model_trainer import (
        ModelSpec,
        build_site_model,
        holdout_split,
        inferred_config,
        spec_from_config,
    )
    from models.export import ExportError, Provenance, TabularSchema, export_model
    from models.params import is_peft_model
    from models.quantize import REPORT_FILE, export_int8

    config = dict(run_config)
    if model_config:
        config["model_config"] = model_config
        config.pop("model_config_json", None)
    if lora is not None:
        config["lora"] = lora
    if not config.get("model"):
        raise ValueError("the run's config names no model; is this a Cohort run?")
    table = data if isinstance(data, TabularData) else None
    if table is not None and config.get("schema"):
        # The model reads the run's pinned column order, whatever this file's order is.
        from client.data_schema import pinned_order, schema_of
        from client.policy import TaskRefused

        try:
            order = pinned_order(config["schema"], schema_of(table))
        except TaskRefused as exc:
            raise ValueError(exc.reason) from exc
        if order is not None:
            table = table.columns(order)
    if table is not None:
        # The same rows the site trained on: log_scale'd, as TabularTrainer prepares them.
        data = models.TabularDataset(
            log_scale(table.x), np.array(table.y, dtype=np.int64), table.feature_names
        )
    # The site trainer's split and model, without ModelTrainer: it hashes the frozen base
    # (importing peft and transformers, seconds) even for a model that has none.
    train_data, holdout_data = holdout_split(data, 0.2, seed)
    spec = spec_from_config(config, ModelSpec(""))
    # The run's model name came from the coordinator: code-importing specs are built only
    # when this site listed them (--allow-model), as at training time.
    model = build_site_model(spec, train_data, trusted_specs)
    full_config = {**inferred_config(spec.model, train_data), **spec.config}
    schema = None
    if table is not None:
        width = _output_width(model, train_data)
        schema = TabularSchema(
            tuple(table.feature_names),
            tuple(table.class_names_for(width)),
            PREPROCESSING_STEPS["log"],
        )
    out_dir = Path(out_dir)
    try:
        manifest = export_model(
            weights,
            model,
            model_name=spec.model,
            model_config=full_config,
            schema=schema,
            provenance=provenance or Provenance(run_id=str((extra or {}).get("run_id", ""))),
            out_dir=out_dir,
            lora=spec.lora,
        )
    except ExportError as exc:
        raise ValueError(
            f"the final weights do not fit model {spec.model!r} as rebuilt here "
            f"(lora {spec.lora or 'none'!r}): {exc}; pass --model-config/--lora "
            "as the run used them"
        ) from exc
    meta = {
        "site": site,
        "model": spec.model,
        "model_config": spec.config,
        "lora": spec.lora,
        "base_model_hash": models.base_model_hash(model) if is_peft_model(model) else "",
        "holdout_rows": len(holdout_data),
        "calibration_rows": len(train_data),
        "export": {"dir": str(out_dir), "files": manifest["files"]},
        "provenance": manifest["provenance"],
        **(extra or {}),
    }
    if not measure:
        return {"mode": "export", **meta}
    from models.export import plain_model

    loaded = plain_model(model, weights)
    if int8:
        from models.export import save_int8_script

        int8_files: dict[str, str] = {}

        def script_int8(module: torch.nn.Module) -> None:
            # The INT8 model as TorchScript with the preprocessing: loads without Cohort.
            digest = save_int8_script(module, out_dir) if schema is not None else None
            if digest:
                int8_files["model_int8.ts"] = digest

        report = export_int8(
            loaded,
            calibration=train_data,
            evaluation=holdout_data,
            out_dir=out_dir,
            on_quantized=script_int8,
        )
        report_file = REPORT_FILE
        meta["export"]["files"] = {**meta["export"]["files"], **int8_files}
    else:
        report = _export_fp32(loaded, holdout_data, out_dir)
        report_file = FP32_REPORT_FILE
    report = {**report, **meta}
    (out_dir / report_file).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _output_width(model: Any, data: Any) -> int:
    import torch

    from models.training import logits_of

    model.eval()
    with torch.no_grad():
        output = model(**{k: v[:1] for k, v in data.inputs.items()})
    return int(logits_of(output).shape[-1])


def _export_fp32(model: torch.nn.Module, evaluation: Any, out_dir: Path) -> dict[str, Any]:
    """Save the float model (LoRA merged into the base) and measure it like the INT8 path."""
    import torch

    import models
    from models.params import is_peft_model
    from models.quantize import cpu_latency, serialized_size

    plain = copy.deepcopy(model).cpu().eval()
    if is_peft_model(plain):
        plain = plain.merge_and_unload()  # type: ignore[operator]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(plain.state_dict(), out_dir / FP32_MODEL_FILE)
    batch = {k: v[:64] for k, v in evaluation.inputs.items()}
    accuracy = models.evaluate(plain, evaluation, device=torch.device("cpu"))["accuracy"]
    return {
        "mode": "fp32",
        "size_bytes_fp32": serialized_size(plain),
        "latency_ms_fp32": 1e3 * cpu_latency(plain, batch),
        "latency_batch": int(next(iter(batch.values())).shape[0]),
        "accuracy_fp32": accuracy,
    }
