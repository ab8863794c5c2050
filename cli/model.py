"""`cohort model …`: a site turns a run's final model into a deployable (INT8) artefact."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli import policy as policy_cli
from cli.admin import CaOption, CoordinatorOption, InsecureOption
from cli.common import console, fail, friendly_errors, parse_json_option

if TYPE_CHECKING:
    import numpy as np
    import torch

# torch is imported inside the functions: `cohort --help` should not pay for it.
app = typer.Typer(help="Export a run's final model at a site.", no_args_is_help=True)


@app.callback()
def model() -> None:
    """Export a run's final model at a site (INT8 with --int8)."""


FP32_MODEL_FILE = "model_fp32.pt"
FP32_REPORT_FILE = "fp32_report.json"


def fetch_final_model(agent: Any, run_id: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The run's final weights (decrypted here in secure runs) and the run's config.

    The config says which model the weights belong to (registry name, kwargs, LoRA and
    init seed): with LoRA only adapters travel, so the frozen base must be rebuilt
    exactly as the run built it.
    """
    from protos import federation_pb2

    if not agent.node_id:
        agent.join()
    task = agent.stub.GetFinalModel(
        federation_pb2.FinalModelRequest(run_id=run_id),
        metadata=agent._metadata(),
        timeout=60,
    )
    return agent.global_model(task), json.loads(task.config_json or "{}")


def export_site_model(
    weights: list[np.ndarray],
    run_config: dict[str, Any],
    data: Any,
    out_dir: Path,
    *,
    int8: bool = True,
    site: str = "site",
    seed: int = 0,
    model_config: dict[str, Any] | None = None,
    lora: str | None = None,
    extra: dict[str, Any] | None = None,
    trusted_specs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Rebuild the run's model, load ``weights`` and export it with a report.

    The held-out split is the site trainer's (same ``seed``), so the accuracy is
    measured on rows the site never trained on; its training rows calibrate the INT8
    activation ranges. ``model_config`` / ``lora`` override the run's when given.

    Returns
    -------
    dict
        The report written to ``out_dir``: sizes, CPU latencies and accuracies (fp32
        and INT8 with ``int8``), plus the run, site and model it describes.

    Raises
    ------
    ValueError
        If the weights do not fit the rebuilt model (wrong model, config or LoRA).
    """
    import torch

    import models
    from client.model_trainer import ModelTrainer
    from models.quantize import REPORT_FILE, export_int8

    config = dict(run_config)
    if model_config:
        config["model_config"] = model_config
        config.pop("model_config_json", None)
    if lora is not None:
        config["lora"] = lora
    if not config.get("model"):
        raise ValueError("the run's config names no model; is this a Cohort run?")
    # The run's model name came from the coordinator: code-importing specs are built only
    # when this site listed them (--allow-model), as at training time.
    trainer = ModelTrainer(
        data,
        site_name=site,
        seed=seed,
        device=torch.device("cpu"),
        trusted_specs=trusted_specs,
    )
    model = trainer.ensure_model(config)
    try:
        models.set_weights(model, weights)
    except ValueError as exc:
        raise ValueError(
            f"the final weights do not fit model {config['model']!r} as rebuilt here "
            f"(lora {config.get('lora') or 'none'!r}): {exc}; pass --model-config/--lora "
            "as the run used them"
        ) from exc
    out_dir = Path(out_dir)
    meta = {
        "site": site,
        "model": config["model"],
        "model_config": trainer.spec.config if trainer.spec else {},
        "lora": config.get("lora", ""),
        "base_model_hash": trainer.base_model_hash,
        "holdout_rows": len(trainer.holdout_data),
        "calibration_rows": len(trainer.train_data),
        **(extra or {}),
    }
    if int8:
        report = export_int8(
            model,
            calibration=trainer.train_data,
            evaluation=trainer.holdout_data,
            out_dir=out_dir,
        )
        report_file = REPORT_FILE
    else:
        report = _export_fp32(model, trainer.holdout_data, out_dir)
        report_file = FP32_REPORT_FILE
    report = {**report, **meta}
    (out_dir / report_file).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


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
    table.add_column(f"INT8 ({report['mode']})", justify="right")
    table.add_column("change", justify="right")
    table.add_row(
        "size",
        f"{report['size_bytes_fp32'] / 1024:.1f} KiB",
        f"{report['size_bytes_int8'] / 1024:.1f} KiB",
        f"{report['size_ratio']:.2f}x smaller",
    )
    table.add_row(
        f"CPU latency (batch {report['latency_batch']})",
        f"{report['latency_ms_fp32']:.2f} ms",
        f"{report['latency_ms_int8']:.2f} ms",
        f"{report['speedup']:.2f}x speed",
    )
    table.add_row(
        f"accuracy ({report['holdout_rows']} held-out rows)",
        f"{report['accuracy_fp32']:.3f}",
        f"{report['accuracy_int8']:.3f}",
        f"{100.0 * (report['accuracy_int8'] - report['accuracy_fp32']):+.1f} points",
    )
    return table


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
    state_dir: Annotated[Path, typer.Option(envvar="COHORT_STATE_DIR")] = Path("cohort-site"),
    ca: CaOption = None,
    insecure: InsecureOption = False,
    label_column: Annotated[str, typer.Option(envvar="COHORT_LABEL_COLUMN")] = "label",
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
    """Fetch the final model here (decrypting it in secure runs), rebuild, export, report."""
    from flwr.client import NumPyClient

    from client.agent import AgentConfig, SiteAgent
    from client.model_trainer import load_site_dataset
    from client.policy import TaskRefused, check_model

    if not name:
        fail("--name is required: the site whose key opens the model")
    if ca is None and not insecure:
        fail("TLS is on by default: pass --ca FILE (the federation's ca.pem) or --insecure")
    if not (state_dir / f"{name}.identity.json").exists():
        fail(f"no identity for site {name} in {state_dir}: run the agent there first")
    overrides = parse_json_option(model_config, "--model-config")
    policy = policy_cli.build_policy(allow_model, False, min_aggregate_sites, None, False)
    dataset = load_site_dataset(data, label_column)
    agent = SiteAgent(
        AgentConfig(coordinator, name, state_dir, ca_file=ca, insecure=insecure, policy=policy),
        client=NumPyClient(),  # exporting trains nothing
    )
    try:
        weights, run_config = fetch_final_model(agent, run_id)
    except TaskRefused as refusal:
        fail(f"refused ({refusal.code}): {refusal.reason}")
    finally:
        agent.close()
    from models.registry import available_models

    try:
        check_model(policy, str(run_config.get("model", "")), tuple(available_models()))
    except TaskRefused as refusal:
        fail(f"refused ({refusal.code}): {refusal.reason}")
    report = export_site_model(
        weights,
        run_config,
        dataset,
        out,
        int8=int8,
        site=name,
        seed=seed,
        model_config=overrides or None,
        lora=lora,
        extra={"run_id": run_id},
        trusted_specs=policy.extra_model_specs,
    )
    if as_json:
        print(json.dumps(report, default=str))
        return
    console.print(report_table(report, run_id))
    console.print(f"wrote the model and its report to [bold]{out}[/]")
