"""`cohort model export`: fetch a run's final model at a site (decrypting it in secure runs),
export it and compare fp32 with INT8 on the site's held-out rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli import policy as policy_cli
from cli.admin_link import CaOption, CoordinatorOption, InsecureOption
from cli.common import console, fail, friendly_errors, parse_json_option
from cli.site_export import export_site_model, load_export_data

if TYPE_CHECKING:
    import numpy as np

    from client.policy import SitePolicy
    from models.export import Provenance

# torch and flwr are imported inside the functions: `cohort --help` should not pay for them.


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
    from protos import serde

    if not agent.identity.node_token:
        raise ValueError(
            f"site {agent.config.site_name} has not joined the federation from "
            f"{agent.config.state_dir}: use the agent's --state-dir"
        )
    task = agent.final_model_task(run_id)
    secure = serde.scheme_from_proto(task.secure) is serde.SchemeName.PAILLIER
    final_sha = task.aggregates[-1].sha256 if secure and task.aggregates else task.model_sha256
    provenance = Provenance(
        run_id=run_id,
        site=agent.config.site_name,
        secure=secure,
        final_model_sha256=final_sha,
        key_fingerprint=task.encoding.key_fingerprint if secure else "",
    )
    return agent.global_model(task), json.loads(task.config_json or "{}"), provenance


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
