"""`cohort demo` and `cohort simulate`: the bundled workloads, end to end on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import console, err_console, fail, friendly_errors


@friendly_errors
def demo(
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Training rounds.")] = 5,
    local_epochs: Annotated[
        int, typer.Option(min=1, max=100, help="Passes over its data each site makes a round.")
    ] = 5,
    plaintext: Annotated[bool, typer.Option(help="Turn secure aggregation off.")] = False,
    key_bits: Annotated[int, typer.Option(help="Paillier key size.")] = 2048,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="COHORT_DATA_DIR", help="Folder for the database, models and report."),
    ] = Path("cohort-data"),
    seed: Annotated[int, typer.Option(help="Seed for data splits and training.")] = 0,
    report: Annotated[bool, typer.Option(help="Run SHAP audits and write the report.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line.")] = False,
    scenario: Annotated[
        str,
        typer.Option(
            help="tabular (breast cancer, MLP) or multimodal (clinic scans + notes, LoRA)"
        ),
    ] = "tabular",
    dp: Annotated[
        bool, typer.Option("--dp", help="Record-level DP (DP-SGD, Opacus) at every site.")
    ] = False,
    epsilon: Annotated[float, typer.Option(help="With --dp: the run's target epsilon.")] = 8.0,
    delta: Annotated[float, typer.Option(help="With --dp: the run's delta.")] = 1e-5,
) -> None:
    """Three sites train over real gRPC on 127.0.0.1 (breast cancer, or clinics with LoRA)."""
    from cli.demo import DemoSettings, check_commands, run_demo
    from cli.scenarios import SCENARIOS

    if key_bits not in (1024, 2048, 3072):
        fail("--key-bits must be 1024 (tests only), 2048 or 3072")
    if scenario not in SCENARIOS:
        fail(f"--scenario must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    settings = DemoSettings(
        scenario=scenario,
        rounds=rounds,
        local_epochs=local_epochs,
        secure=not plaintext,
        key_bits=key_bits,
        data_dir=data_dir,
        seed=seed,
        report=report,
        dp_epsilon=epsilon if dp else None,
        dp_delta=delta,
    )
    mode = f"Paillier {key_bits}-bit" if settings.secure else "plaintext"
    if dp:
        mode += f", DP-SGD ε={epsilon:g} δ={delta:g}"
    err_console.print(
        f"[bold]Cohort demo[/] ({scenario}): 3 sites, {rounds} rounds, {mode} aggregation"
    )

    def on_event(event: str, info: dict[str, object]) -> None:
        if event in ("keygen", "key") and "fingerprint" in info:
            err_console.print(f"  key fingerprint ({event}): [cyan]{info['fingerprint']}[/]")

    result = run_demo(settings, err_console, on_event)
    table = Table(title=f"{result.title} ({len(result.rounds)} rounds)")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_column("ROC-AUC", justify="right")
    lora = f", LoRA: {result.exchanged_values} values sent" if result.lora else ""
    table.add_row(
        f"federated ({mode}{lora})",
        f"{result.federated['accuracy']:.3f}",
        f"{result.federated['roc_auc']:.3f}",
    )
    table.add_row(
        "centralised (pooled data)",
        f"{result.centralised['accuracy']:.3f}",
        f"{result.centralised['roc_auc']:.3f}",
    )
    for name, scores in result.local_only.items():
        table.add_row(
            f"{name} alone ({result.sites[name]} rows)",
            f"{scores['accuracy']:.3f}",
            f"{scores['roc_auc']:.3f}",
        )
    out = err_console if as_json else console
    if result.privacy:
        from rich.columns import Columns

        out.print(Columns([table, privacy_table(result.privacy)]))
    else:
        out.print(table)
    out.print(
        f"run {result.run_id} in {result.seconds:.1f} s; "
        f"{result.bytes_received / 1024:.0f} KiB of updates received"
    )
    if result.report_path:
        out.print(f"compliance report: [bold]{result.report_path}[/]", soft_wrap=True)
    out.print("check it without the coordinator:")
    for line in check_commands(result.run_id, Path(result.data_dir)):
        # One line each, never wrapped: a path cut in two cannot be pasted.
        out.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)
    if as_json:
        print(json.dumps(result.summary()))


def privacy_table(privacy: dict[str, dict[str, Any]]) -> Table:
    """What each site's own ledger says the run spent (beside the accuracy table)."""
    table = Table(title="privacy spent (each site's signed ledger)")
    for column in ("site", "ε (run)", "δ", "σ", "accountant", "ledger ε"):
        table.add_column(column, justify="right" if column != "site" else "left")
    for name, spend in privacy.items():
        table.add_row(
            name,
            f"{spend['epsilon']:.2f}",
            f"{spend['delta']:g}",
            f"{spend['noise_multiplier']:.2f}",
            spend["accountant"],
            f"{spend['ledger_epsilon']:.2f}",
        )
    return table


@friendly_errors
def simulate(
    sites: Annotated[int, typer.Option(help="Virtual sites.")] = 10,
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 5,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    lr: Annotated[float, typer.Option(help="Local learning rate.")] = 0.005,
    dataset: Annotated[
        str,
        typer.Option(
            help="synthetic, breast_cancer, digits, wine, iris, or a CSV/Parquet/.npz file"
        ),
    ] = "synthetic",
    label_column: Annotated[str, typer.Option(help="Label column of a data file.")] = "label",
    rows_per_site: Annotated[
        int, typer.Option(help="Rows per site of the synthetic set (its size follows).")
    ] = 50,
    partition: Annotated[
        str, typer.Option(help="dirichlet, label (by label) or iid")
    ] = "dirichlet",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (label skew).")] = 0.5,
    labels_per_site: Annotated[int, typer.Option(help="Labels per site (--partition label).")] = 2,
    secure: Annotated[
        bool, typer.Option("--secure/--plaintext", help="Paillier secure aggregation or not.")
    ] = False,
    key_bits: Annotated[int, typer.Option(help="Paillier key size (secure runs).")] = 2048,
    workers: Annotated[int, typer.Option(help="Ray workers hosting the sites.")] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="An existing Ray cluster (default: a local one).")
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(envvar="COHORT_DATA_DIR", help="Folder for the database and sites.")
    ] = Path("cohort-data"),
    seed: Annotated[int, typer.Option(help="Seed for data, partitions and training.")] = 0,
    report: Annotated[bool, typer.Option(help="Audit at every site and write the report.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line.")] = False,
) -> None:
    """N virtual sites on Ray against a real coordinator (gRPC on 127.0.0.1, SQLite)."""
    from cli.simulate import SimulateSettings, fail_on_problems, run_simulation

    settings = SimulateSettings(
        sites=sites,
        rounds=rounds,
        local_epochs=local_epochs,
        lr=lr,
        dataset=dataset,
        label_column=label_column,
        rows_per_site=rows_per_site,
        partition=partition,
        alpha=alpha,
        labels_per_site=labels_per_site,
        secure=secure,
        key_bits=key_bits,
        workers=workers,
        ray_address=ray_address,
        data_dir=data_dir,
        seed=seed,
        report=report,
    )
    fail_on_problems(settings)
    mode = f"Paillier {key_bits}-bit" if settings.secure else "plaintext"
    err_console.print(
        f"[bold]Cohort simulate[/]: {sites} sites ({partition} partitions of {dataset}) on "
        f"{workers} Ray workers, {rounds} rounds, {mode} aggregation"
    )
    result = run_simulation(settings, err_console)
    summary = result.summary()
    out = err_console if as_json else console
    out.print(
        f"run {result.run_id}: accuracy {result.accuracy:.3f}, ROC-AUC {result.roc_auc:.3f}; "
        f"median round {summary['round_seconds_median']:.2f} s; {result.seconds:.1f} s in all"
    )
    if result.report_path:
        out.print(f"compliance report: [bold]{result.report_path}[/]")
    if as_json:
        print(json.dumps(summary))
