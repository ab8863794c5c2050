"""`cohort model …`: a site turns a run's final model into a deployable (INT8) artefact."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli import policy as policy_cli
from cli import serve as serve_cli
from cli.admin_link import CaOption, CoordinatorOption, InsecureOption
from cli.common import console, fail, friendly_errors, parse_json_option

if TYPE_CHECKING:
    import numpy as np
    import torch

    from client.policy import SitePolicy
    from models.export import Provenance

# torch is imported inside the functions: `cohort --help` should not pay for it.
app = typer.Typer(help="Export a run's final model at a site.", no_args_is_help=True)


@app.callback()
def model() -> None:
    """Export a run's final model at a site (INT8 with --int8)."""


FP32_MODEL_FILE = "model_fp32.pt"
FP32_REPORT_FILE = "fp32_report.json"


def fetch_final_model(
    agent: Any, run_id: str
) -> tuple[list[np.ndarray], dict[str, Any], Provenance]:
    """The run's final weights (decrypted here in secure runs), its config and provenance.

    The config says which model the weights belong to (registry name, kwargs, LoRA and
    init seed): with LoRA only adapters travel, so the frozen base must be rebuilt
    exactly as the run built it. The provenance names the run, the coordinator's hash of
    the final model (the last encrypted aggregate in secure runs) and the key
    fingerprint the sites compared.

    Raises
    ------
    ValueError
        If this site never joined from this state folder: joining here would make a new
        node the scheduler could pick for a round.
    """
    from models.export import Provenance
    from protos import common_pb2

    if not agent.identity.node_token:
        raise ValueError(
            f"site {agent.config.site_name} has not joined the federation from "
            f"{agent.config.state_dir}: use the agent's --state-dir"
        )
    task = agent.final_model_task(run_id)
    secure = task.secure == common_pb2.SECURE_SCHEME_PAILLIER
    final_sha = task.aggregates[-1].sha256 if secure and task.aggregates else task.model_sha256
    provenance = Provenance(
        run_id=run_id,
        site=agent.config.site_name,
        secure=secure,
        final_model_sha256=final_sha,
        key_fingerprint=task.encoding.key_fingerprint if secure else "",
    )
    return agent.global_model(task), json.loads(task.config_json or "{}"), provenance


def load_export_data(source: str, label_column: str = "label") -> Any:
    """A site's rows for an export: raw ``TabularData`` for tabular sources (CSV, Parquet,
    ``x``/``y`` ``.npz``, ``sklearn:NAME``), else a ``DictDataset`` of named inputs."""
    import numpy as np

    from client.data import load_tabular
    from client.model_trainer import LABEL_KEY, load_site_dataset

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


def change_cells(report: dict[str, Any]) -> dict[str, str]:
    """The INT8 table's "change" column, printed from the report's own numbers.

    The JSON and the table must never disagree: each cell formats one report field
    (``size_ratio``, ``speedup``, ``accuracy_delta_points`` = INT8 minus fp32) and never
    recomputes it, and says "slower" where INT8 is slower.
    """
    speed = report["speedup"]
    return {
        "size": f"{report['size_ratio']:.2f}x smaller",
        "latency": f"{speed:.2f}x " + ("faster" if report["faster"] else "(not faster)")
        if speed >= 1.0
        else f"{speed:.2f}x (slower)",
        "accuracy": f"{report['accuracy_delta_points']:+.2f} points",
    }


def report_table(report: dict[str, Any], run_id: str) -> Table:
    """fp32 against INT8, side by side: what quantisation costs and saves."""
    table = Table(title=f"Run {run_id} at {report['site']}: {report['model']} export")
    table.add_column("")
    table.add_column("fp32", justify="right")
    if report["mode"] == "fp32":
        table.add_row("size", f"{report['size_bytes_fp32'] / 1024:.1f} KiB")
        table.add_row(
            f"CPU latency (batch {report['latency_batch']})", f"{report['latency_ms_fp32']:.2f} ms"
        )
        table.add_row(
            f"accuracy ({report['holdout_rows']} held-out rows)", f"{report['accuracy_fp32']:.3f}"
        )
        return table
    cells = change_cells(report)
    table.add_column(f"INT8 ({report['mode']})", justify="right")
    table.add_column("change (INT8 vs fp32)", justify="right")
    table.add_row(
        "size",
        f"{report['size_bytes_fp32'] / 1024:.1f} KiB",
        f"{report['size_bytes_int8'] / 1024:.1f} KiB",
        cells["size"],
    )
    table.add_row(
        f"CPU latency (batch {report['latency_batch']})",
        f"{report['latency_ms_fp32']:.2f} ms",
        f"{report['latency_ms_int8']:.2f} ms",
        cells["latency"],
    )
    table.add_row(
        f"accuracy ({report['holdout_rows']} held-out rows)",
        f"{report['accuracy_fp32']:.3f}",
        f"{report['accuracy_int8']:.3f}",
        cells["accuracy"],
    )
    table.caption = report["speed_verdict"]
    return table


def export_run(
    run_id: str,
    out: Path,
    *,
    data: str,
    name: str,
    coordinator: str,
    state_dir: Path,
    ca: Path | None,
    insecure: bool,
    label_column: str = "label",
    measure: bool = False,
    int8: bool = False,
    seed: int = 0,
    model_config: dict[str, Any] | None = None,
    lora: str | None = None,
    policy: SitePolicy | None = None,
) -> dict[str, Any]:
    """Fetch a run's final model at this site and export it (both export commands).

    The site's ``policy`` decides, as at training time, what it decrypts and builds.
    """
    from flwr.client import NumPyClient

    from client.agent import AgentConfig, SiteAgent
    from client.policy import SitePolicy, TaskRefused, check_model
    from models.registry import available_models

    policy = policy or SitePolicy()

    if not name:
        fail("--name is required: the site whose key opens the model")
    if ca is None and not insecure:
        fail("TLS is on by default: pass --ca FILE (the federation's ca.pem) or --insecure")
    if not (state_dir / f"{name}.identity.json").exists():
        fail(f"no identity for site {name} in {state_dir}: run the agent there first")
    if not data:
        fail("--data is required: this site's rows name the features and classes of the export")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file: the export is a folder (model.ts, weights.pt, model.json)")
    dataset = load_export_data(data, label_column)
    agent = SiteAgent(
        AgentConfig(coordinator, name, state_dir, ca_file=ca, insecure=insecure, policy=policy),
        client=NumPyClient(),  # exporting trains nothing
    )
    try:
        weights, run_config, provenance = fetch_final_model(agent, run_id)
        check_model(policy, str(run_config.get("model", "")), tuple(available_models()))
    except TaskRefused as refusal:
        fail(f"refused ({refusal.code}): {refusal.reason}")
    finally:
        agent.close()
    return export_site_model(
        weights,
        run_config,
        dataset,
        out,
        int8=int8,
        measure=measure,
        site=name,
        seed=seed,
        model_config=model_config,
        lora=lora,
        provenance=provenance,
        extra={"run_id": run_id},
        trusted_specs=policy.extra_model_specs,
    )


@app.command("export")
@friendly_errors
def export(
    run_id: Annotated[str, typer.Argument(help="The completed run whose final model to export.")],
    out: Annotated[Path, typer.Option(help="Folder for the model and its report.")],
    data: Annotated[
        str,
        typer.Option(
            envvar="COHORT_DATA",
            help="This site's data: .npz of named inputs + label, or CSV/Parquet/sklearn:NAME",
        ),
    ],
    name: Annotated[str, typer.Option(envvar="COHORT_SITE_NAME", help="This site's name.")] = "",
    int8: Annotated[
        bool, typer.Option("--int8/--fp32", help="Quantise to INT8, or keep fp32.")
    ] = False,
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    state_dir: Annotated[
        Path,
        typer.Option(envvar="COHORT_STATE_DIR", help="The agent's state folder (its identity)."),
    ] = Path("cohort-site"),
    ca: CaOption = None,
    insecure: InsecureOption = False,
    label_column: Annotated[
        str, typer.Option(envvar="COHORT_LABEL_COLUMN", help="The label column of --data.")
    ] = "label",
    model_config: Annotated[
        str, typer.Option(help="JSON model kwargs, when the run's config lacks them")
    ] = "",
    lora: Annotated[
        str | None, typer.Option(help="LoRA spec (e.g. r=8,alpha=16), when the run's lacks it")
    ] = None,
    seed: Annotated[int, typer.Option(help="This site's seed (its held-out split).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    allow_model: policy_cli.AllowModel = None,
    min_aggregate_sites: policy_cli.MinAggregateSites = 3,
) -> None:
    """Fetch the final model here (decrypting it in secure runs), export it, measure it.

    The folder is self-contained (model.ts scores raw rows; see `cohort model predict`);
    the report compares fp32 with INT8 (--int8) on this site's held-out rows.
    """
    if not name:
        fail("--name is required: the site whose key opens the model")
    overrides = parse_json_option(model_config, "--model-config")
    report = export_run(
        run_id,
        out,
        data=data,
        name=name,
        coordinator=coordinator,
        state_dir=state_dir,
        ca=ca,
        insecure=insecure,
        label_column=label_column,
        measure=True,
        int8=int8,
        seed=seed,
        model_config=overrides or None,
        lora=lora,
        policy=policy_cli.build_policy(allow_model, False, min_aggregate_sites, None, False),
    )
    if as_json:
        print(json.dumps(report, default=str))
        return
    console.print(report_table(report, run_id))
    console.print(f"wrote the model and its report to [bold]{out}[/]")


@app.command("predict")
@friendly_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(help="An export folder (holds model.json).")],
    data: Annotated[Path, typer.Argument(help="CSV of raw rows; columns matched by name.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the probabilities here (CSV) instead of stdout.")
    ] = None,
    int8: Annotated[bool, typer.Option(help="Score with model_int8.ts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not CSV.")] = False,
) -> None:
    """Score raw CSV rows with an exported model: one probability column per class.

    Columns are matched by name (order is irrelevant, extra columns such as the label
    are ignored); the export applies the sites' preprocessing itself.
    """
    rows = score_csv(model_dir, data, int8=int8)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(out, index=False)
    if as_json:
        print(json.dumps({"classes": list(rows.columns[:-1]), "rows": rows.to_dict("records")}))
    elif out is None:
        print(rows.to_csv(index=False), end="")
    else:
        console.print(f"wrote {len(rows)} rows of probabilities to [bold]{out}[/]")


def score_csv(model_dir: Path, data: Path, *, int8: bool = False) -> Any:
    """Probabilities (one column per class name) and the predicted class for each CSV row.

    Raises
    ------
    ValueError
        A missing or non-numeric column, an empty or missing value, a missing file: one
        line naming it (``friendly_errors`` turns it into exit code 2).
    """
    import pandas as pd

    from models.export import load_model

    exported = load_model(model_dir, int8=int8)
    if not data.is_file():
        raise ValueError(f"no CSV at {data}")
    try:
        frame = pd.read_csv(data)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{data} is not a readable CSV: {str(exc).splitlines()[0]}") from exc
    columns = [str(c) for c in frame.columns]
    needed = exported.feature_names
    from models.export import column_order

    order = column_order(columns, needed)
    features = frame.iloc[:, order]
    for name in needed:
        if not pd.api.types.is_numeric_dtype(features[name]):
            raise ValueError(f"column {name!r} in {data} is not numeric")
    probabilities = exported.predict_proba(features.to_numpy(dtype="float32"))
    classes = exported.class_names
    result = pd.DataFrame(probabilities, columns=classes)
    result["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    return result


serve_cli.register(app)  # `model profile` and `model serve`
