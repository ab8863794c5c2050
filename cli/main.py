"""The `cohort` console script: wires each command group and command to its module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import admin as admin_cli
from cli import audit as audit_cli
from cli import ledger as ledger_cli
from cli import model as model_cli
from cli import policy as policy_cli
from cli import site as site_cli
from cli.client_run import client_run, export_model
from cli.common import fail, load_config, setup_logging
from cli.coordinator import serve
from cli.workloads import demo, simulate

app = typer.Typer(
    help="Cohort: federated learning with Paillier-encrypted aggregation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)
client_app = typer.Typer(help="Run a site's agent.", no_args_is_help=True)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(client_app, name="client")
app.add_typer(admin_cli.app, name="admin")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(model_cli.app, name="model")
site_cli.register(client_app)  # client identity, client peers
policy_cli.register(client_app)  # client policy
ledger_cli.register(client_app)  # client ledger
app.command()(demo)
app.command()(simulate)
coordinator_app.command("serve")(serve)
client_app.command("run")(client_run)
client_app.command("export-model")(export_model)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="COHORT_CONFIG",
            help="TOML file of defaults (\\[client.run], \\[admin.runs.start], …); "
            "./cohort.toml when present.",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(envvar="COHORT_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    ] = "WARNING",
    log_format: Annotated[
        str, typer.Option(envvar="COHORT_LOG_FORMAT", help="text or json")
    ] = "text",
) -> None:
    if log_format not in ("text", "json"):
        fail("--log-format must be text or json")
    setup_logging(log_level, log_format)
    ctx.default_map = load_config(config)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
