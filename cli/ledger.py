"""`cohort client ledger`: the ε this site has spent per dataset, from its signed ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import policy as policy_cli
from cli.common import console, fail, friendly_errors
from cli.site import SiteName, StateDir, _site


@friendly_errors
def ledger(
    name: SiteName = "",
    state_dir: StateDir = Path("cohort-site"),
    privacy_budget: policy_cli.PrivacyBudget = None,
    privacy_delta: policy_cli.PrivacyDelta = 1e-5,
    entries: Annotated[bool, typer.Option("--entries", help="List every entry too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print this site's privacy ledger: ε spent per dataset (all runs composed), checked.

    Every line's signature and the chain are checked on load; a changed ledger is an error.
    """
    from client.custody import SiteIdentity
    from client.ledger import Ledger, LedgerError

    site = _site(name)
    identity_path = Path(state_dir) / f"{site}.identity.json"
    if not identity_path.exists():
        fail(f"no identity for site {site} in {state_dir}: use the agent's --state-dir and --name")
    try:
        book = Ledger.for_site(state_dir, site, SiteIdentity.load_or_create(state_dir, site))
    except LedgerError as exc:
        fail(f"the ledger does not verify: {exc}")
    rows = book.summary(privacy_delta, privacy_budget)
    listed: list[dict[str, Any]] = [e.statement for e in book.entries] if entries else []
    if as_json:
        print(
            json.dumps({"site": site, "path": str(book.path), "datasets": rows, "entries": listed})
        )
        return
    if not rows:
        console.print(f"site {site}: no privacy spent yet ({book.path})")
        return
    table = Table(title=f"privacy ledger of {site} (ε at δ={privacy_delta:g}, RDP composition)")
    for column in ("dataset", "runs", "entries", "ε spent", "budget", "left"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["dataset"][:16],
            str(len(row["runs"])),
            str(row["entries"]),
            f"{row['epsilon_spent']:.3f}",
            "-" if row["budget"] is None else f"{row['budget']:g}",
            "-" if row["remaining"] is None else f"{row['remaining']:.3f}",
        )
    console.print(table)
    for statement in listed:
        console.print(
            f"{statement['run_id']} round {statement['round']}: "
            f"run ε {statement['run_epsilon']:.3f} at δ {statement['run_delta']:g}; "
            f"ledger ε {statement['ledger_epsilon_after']:.3f}",
            highlight=False,
        )


def register(client_app: typer.Typer) -> None:
    client_app.command("ledger")(ledger)
