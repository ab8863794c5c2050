"""`cohort client run` and `cohort client export-model`: a site's agent and its export."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import policy as policy_cli
from cli.common import console, err_console, fail, friendly_errors


@friendly_errors
def client_run(
    coordinator: Annotated[
        str, typer.Option(envvar="COHORT_COORDINATOR", help="HOST:PORT of the coordinator.")
    ] = "127.0.0.1:50051",
    name: Annotated[str, typer.Option(envvar="COHORT_SITE_NAME", help="This site's name.")] = "",
    data: Annotated[
        str, typer.Option(envvar="COHORT_DATA", help="CSV/Parquet/.npz/.npy file or sklearn:NAME")
    ] = "",
    label_column: Annotated[
        str, typer.Option(envvar="COHORT_LABEL_COLUMN", help="The column holding the label.")
    ] = "label",
    app_ref: Annotated[
        str,
        typer.Option(
            "--app",
            envvar="COHORT_APP",
            help="Flower code run unchanged: package.module:attribute naming a NumPyClient, "
            "a factory of one, or a ClientApp",
        ),
    ] = "",
    initial_model: Annotated[
        str,
        typer.Option(
            envvar="COHORT_INITIAL_MODEL",
            help="For a message-API ClientApp: package.module:factory of the model the "
            "ServerApp would start from (nn.Module, state dict, ArrayRecord or arrays)",
        ),
    ] = "",
    node_config: Annotated[
        str,
        typer.Option(
            envvar="COHORT_NODE_CONFIG",
            help="The ClientApp's context.node_config, as Flower takes it: "
            "'partition-id=0 num-partitions=3'",
        ),
    ] = "",
    state_dir: Annotated[
        Path,
        typer.Option(
            envvar="COHORT_STATE_DIR", help="This site's keys and pins (as for `client run`)."
        ),
    ] = Path("cohort-site"),
    model_config: Annotated[str, typer.Option(help="JSON for the built-in model")] = "",
    seed: Annotated[int, typer.Option(help="Seed for the data split and training.")] = 0,
    ca: Annotated[
        Path | None, typer.Option(envvar="COHORT_CA", help="Federation CA (ca.pem)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(envvar="COHORT_INSECURE", help="Plaintext transport (no TLS)")
    ] = False,
    enrolment_token: Annotated[
        str, typer.Option(envvar="COHORT_ENROLMENT_TOKEN", help="One-time token for the first join")
    ] = "",
    enrolment_token_file: Annotated[
        Path | None,
        typer.Option(envvar="COHORT_ENROLMENT_TOKEN_FILE", help="File holding the one-time token"),
    ] = None,
    allow_model: policy_cli.AllowModel = None,
    require_secure: policy_cli.RequireSecure = False,
    min_aggregate_sites: policy_cli.MinAggregateSites = 3,
    trust_custodian: policy_cli.TrustCustodian = None,
    tofu: policy_cli.Tofu = False,
    privacy_budget: policy_cli.PrivacyBudget = None,
    privacy_delta: policy_cli.PrivacyDelta = 1e-5,
    min_threshold: policy_cli.MinThreshold = 0,
    dp_rows_step: policy_cli.DpRowsStep = 16,
    peers_file: Annotated[
        Path | None,
        typer.Option(
            envvar="COHORT_PEERS_FILE",
            help="TOML/JSON of name = fingerprint, pinned at start (agreed out of band)",
        ),
    ] = None,
) -> None:
    """Connect out to the coordinator and work on the tasks it hands this site."""
    if ca is None and not insecure:
        fail("TLS is on by default: pass --ca FILE (the federation's ca.pem) or --insecure")
    # The site's own rules: nothing the coordinator sends can widen them.
    policy = policy_cli.build_policy(
        allow_model,
        require_secure,
        min_aggregate_sites,
        trust_custodian,
        tofu,
        privacy_budget,
        privacy_delta,
        min_threshold,
        dp_rows_step,
    )
    if enrolment_token_file is not None:
        enrolment_token = enrolment_token_file.read_text().strip()
    from client.agent import AgentConfig, SiteAgent

    if not name:
        fail("--name is required (this site's name, e.g. hospital-a)")
    client = _site_client(
        app_ref,
        data,
        label_column,
        model_config,
        seed,
        name,
        initial_model,
        node_config,
        trusted_specs=policy.extra_model_specs,
    )
    agent = SiteAgent(
        AgentConfig(
            coordinator,
            name,
            state_dir,
            seed=seed,
            ca_file=ca,
            insecure=insecure,
            enrolment_token=enrolment_token,
            policy=policy,
        ),
        client,
        listener=_print_event,
    )
    if peers_file is not None:
        from client.peers import load_peers_file

        for peer, fingerprint in load_peers_file(peers_file).items():
            agent.peers.pin(peer, fingerprint)
    err_console.print(f"site {name} → {coordinator} (outbound only); state in {state_dir}")
    from cli.events import data_summary

    summary = data_summary(client)
    if summary is not None:
        err_console.print(summary, highlight=False, markup=False)
    if hasattr(client, "predict_proba") and hasattr(client, "holdout_data"):
        from client.audit import warm_explainer

        # While the site waits and trains: its audit then starts without compiling.
        threading.Thread(target=warm_explainer, name="warm-explainer", daemon=True).start()
    stop = threading.Event()

    def on_signal(number: int, _frame: object) -> None:
        if stop.is_set():
            # A second signal: the operator wants out now, whatever is still closing.
            os._exit(128 + number)
        err_console.print(
            f"{signal.Signals(number).name}: stopping (any task in progress is abandoned)",
            highlight=False,
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    agent.run(stop)
    _close_within(agent, seconds=5.0)


def _close_within(agent: Any, seconds: float) -> None:
    """Close the agent, but never let a pool still busy with an abandoned task hold the exit."""
    closer = threading.Thread(target=agent.close, name="agent-close", daemon=True)
    closer.start()
    closer.join(seconds)


def _site_client(
    app_ref: str,
    data: str,
    label_column: str,
    model_config: str,
    seed: int,
    name: str,
    initial_model: str = "",
    node_config: str = "",
    trusted_specs: tuple[str, ...] = (),
):
    from cli.common import parse_json_option
    from client.apps import load_app
    from client.data import load_tabular
    from client.trainer import TabularTrainer

    if app_ref:
        return load_app(
            app_ref,
            initial_model=initial_model,
            node_config=_flower_node_config(node_config),
            data=data or None,
            site_name=name,
            seed=seed,
        )
    if not data:
        fail("--data is required (a CSV/Parquet/.npz/.npy file or sklearn:NAME), or give --app")
    if _named_inputs(data):
        # Images, notes, audio: any registry model (the run's config names it), LoRA too.
        from client.model_trainer import ModelTrainer
        from client.site_dataset import load_site_dataset

        return ModelTrainer(
            load_site_dataset(data, label_column),
            model_config=parse_json_option(model_config, "--model-config"),
            site_name=name,
            seed=seed,
            trusted_specs=trusted_specs,
        )
    return TabularTrainer(
        load_tabular(data, label_column),
        model_config=parse_json_option(model_config, "--model-config"),
        seed=seed,
    )


_KEY_VALUE = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")


def _flower_node_config(text: str) -> dict[str, Any]:
    """Parse ``'partition-id=0 num-partitions=3'`` with Flower's own parser.

    Flower's parser skips words that are not ``key=value``; here they are an error.
    """
    import click
    from flwr.common.config import parse_config_args

    if not text.strip():
        return {}
    leftover = _KEY_VALUE.sub("", text).strip()
    if leftover:
        fail(f"--node-config: {leftover.split()[0]!r} is not key=value")
    try:
        return dict(parse_config_args([text]))
    except (ValueError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        fail(f"--node-config: {message.splitlines()[0]}")


def _named_inputs(data: str) -> bool:
    """True for an .npz of named model inputs (image, input_ids, …) rather than x/y rows."""
    import numpy as np

    path = Path(data)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as archive:
        return set(archive.files) - {"label", "y"} != {"x"}


def _print_event(event: str, info: dict[str, object]) -> None:
    from cli.events import event_line

    if event in ("key", "keygen"):
        err_console.print(
            f"run {info['run_id']}: key fingerprint [cyan]{info['fingerprint']}[/] "
            "— compare it with the other sites out of band"
        )
        return
    line = event_line(event, info)
    if line is not None:
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)


@friendly_errors
def export_model(
    run_id: Annotated[str, typer.Argument(help="The run whose final model to export.")],
    out: Annotated[
        Path, typer.Option(help="Folder for the export (model.ts, weights.pt, model.json).")
    ],
    data: Annotated[
        str,
        typer.Option(
            envvar="COHORT_DATA",
            help="This site's data (as for `client run`): names the features and classes",
        ),
    ] = "",
    label_column: Annotated[
        str, typer.Option(envvar="COHORT_LABEL_COLUMN", help="The column holding the label.")
    ] = "label",
    coordinator: Annotated[
        str, typer.Option(envvar="COHORT_COORDINATOR", help="HOST:PORT of the coordinator.")
    ] = "127.0.0.1:50051",
    name: Annotated[
        str, typer.Option(envvar="COHORT_SITE_NAME", help="This site's name (as for `client run`).")
    ] = "",
    state_dir: Annotated[
        Path,
        typer.Option(
            envvar="COHORT_STATE_DIR", help="This site's keys and pins (as for `client run`)."
        ),
    ] = Path("cohort-site"),
    ca: Annotated[
        Path | None, typer.Option(envvar="COHORT_CA", help="Federation CA (ca.pem).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(envvar="COHORT_INSECURE", help="Plaintext transport (no TLS).")
    ] = False,
) -> None:
    """Decrypt (secure runs) and export a run's final model here, at the site.

    The folder is self-contained: model.ts scores raw rows without Cohort, and
    model.json names the features, classes, preprocessing, run and hashes. The same
    export as `cohort model export`, without measuring it (so it takes seconds).
    """
    from cli.model import export_run

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
    )
    files = ", ".join(report["export"]["files"])
    console.print(f"wrote {files} and model.json to {out}")
