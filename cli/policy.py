"""A site's policy on the command line: the flags of `cohort client run` and `client policy`.

The same options (and the same ``[client.run]`` TOML keys) feed both commands, so
`cohort client policy` prints exactly the policy the agent would run with.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import click
import typer

from cli.common import console, friendly_errors

AllowModel = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-model",
        envvar="COHORT_ALLOW_MODEL",
        help="A model this site builds: a registry name (default: every built-in), or a "
        "module:factory / hf:/dir spec, which this site never builds unless named here. "
        "Repeat for several.",
    ),
]
RequireSecure = Annotated[
    bool,
    typer.Option(
        "--require-secure",
        envvar="COHORT_REQUIRE_SECURE",
        help="Refuse plaintext runs: send updates only under encryption.",
    ),
]
MinThreshold = Annotated[
    int,
    typer.Option(
        "--min-threshold",
        envvar="COHORT_MIN_THRESHOLD",
        min=0,
        help="Take secure runs only in t-of-n threshold mode with t at least this (0: any).",
    ),
]
MinAggregateSites = Annotated[
    int,
    typer.Option(
        "--min-aggregate-sites",
        envvar="COHORT_MIN_AGGREGATE_SITES",
        min=1,
        help="Decrypt only aggregates signed by at least this many distinct pinned sites.",
    ),
]
TrustCustodian = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-custodian",
        envvar="COHORT_TRUST_CUSTODIAN",
        help="A site whose key statements this site accepts (default: any pinned peer). "
        "Repeat for several.",
    ),
]
Tofu = Annotated[
    bool,
    typer.Option(
        "--tofu",
        envvar="COHORT_TOFU",
        help="Trust on first use: pin peers not pinned yet as first seen; refuse any change.",
    ),
]
PrivacyBudget = Annotated[
    float | None,
    typer.Option(
        "--privacy-budget",
        envvar="COHORT_PRIVACY_BUDGET",
        help="Most epsilon this site spends on its data across all runs (its ledger); "
        "runs that would exceed it, or that have no DP, are refused.",
    ),
]
PrivacyDelta = Annotated[
    float,
    typer.Option(
        "--delta",
        envvar="COHORT_PRIVACY_DELTA",
        help="The delta at which this site's ledger counts epsilon.",
    ),
]

DpRowsStep = Annotated[
    int,
    typer.Option(
        "--dp-rows-step",
        envvar="COHORT_DP_ROWS_STEP",
        min=1,
        help="Record-level DP: the step this site's row count is rounded up to for the "
        "DP-SGD schedule; its signed ledger then tells the coordinator the count only to "
        "that step.",
    ),
]


def build_policy(
    allow_model: list[str] | None,
    require_secure: bool,
    min_aggregate_sites: int,
    trust_custodian: list[str] | None,
    tofu: bool,
    privacy_budget: float | None = None,
    privacy_delta: float = 1e-5,
    min_threshold: int = 0,
    dp_rows_step: int = 16,
) -> Any:
    """The SitePolicy of these option values (ValueError → one-line CLI error)."""
    from client.policy import policy_from_options

    return policy_from_options(
        allow_model=tuple(allow_model or ()),
        require_secure=require_secure,
        min_aggregate_sites=min_aggregate_sites,
        trust_custodian=tuple(trust_custodian or ()),
        tofu=tofu,
        privacy_budget=privacy_budget,
        privacy_delta=privacy_delta,
        min_threshold=min_threshold,
        dp_rows_step=dp_rows_step,
    )


_POLICY_KEYS = (
    "allow_model",
    "require_secure",
    "min_aggregate_sites",
    "trust_custodian",
    "tofu",
    "privacy_budget",
    "privacy_delta",
    "min_threshold",
    "dp_rows_step",
)


def _run_section(ctx: typer.Context) -> dict[str, Any]:
    root = ctx.find_root().default_map or {}
    client = root.get("client", {}) if isinstance(root, dict) else {}
    run = client.get("run", {}) if isinstance(client, dict) else {}
    return run if isinstance(run, dict) else {}


def policy_command(
    ctx: typer.Context,
    allow_model: AllowModel = None,
    require_secure: RequireSecure = False,
    min_aggregate_sites: MinAggregateSites = 3,
    trust_custodian: TrustCustodian = None,
    tofu: Tofu = False,
    privacy_budget: PrivacyBudget = None,
    privacy_delta: PrivacyDelta = 1e-5,
    min_threshold: MinThreshold = 0,
    dp_rows_step: DpRowsStep = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the policy `cohort client run` would apply with these flags and ``[client.run]``."""
    values: dict[str, Any] = {
        "allow_model": allow_model,
        "require_secure": require_secure,
        "min_aggregate_sites": min_aggregate_sites,
        "trust_custodian": trust_custodian,
        "tofu": tofu,
        "privacy_budget": privacy_budget,
        "privacy_delta": privacy_delta,
        "min_threshold": min_threshold,
        "dp_rows_step": dp_rows_step,
    }
    section = _run_section(ctx)
    for key in _POLICY_KEYS:
        source = ctx.get_parameter_source(key)
        if source in (click.core.ParameterSource.DEFAULT, None) and key in section:
            values[key] = section[key]
    if isinstance(values["allow_model"], str):
        values["allow_model"] = [values["allow_model"]]
    if isinstance(values["trust_custodian"], str):
        values["trust_custodian"] = [values["trust_custodian"]]
    from client.policy import describe

    described = describe(build_policy(**values))
    if as_json:
        console.print_json(json.dumps(described))
        return
    for key, value in described.items():
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        console.print(f"{key:20} {shown or '-'}", highlight=False)


def register(client_app: typer.Typer) -> None:
    client_app.command("policy")(friendly_errors(policy_command))
