"""The `cohort` console script: demo, coordinator, client, admin, audit."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import admin as admin_cli
from cli import audit as audit_cli
from cli import ledger as ledger_cli
from cli import model as model_cli
from cli import policy as policy_cli
from cli import site as site_cli
from cli.common import console, err_console, fail, friendly_errors, load_config, setup_logging

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


@app.command()
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


@app.command()
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


@coordinator_app.command("serve")
@friendly_errors
def serve(
    db: Annotated[
        str | None,
        typer.Option(
            envvar="COHORT_DATABASE_URL", help="SQLAlchemy URL; default SQLite in data dir"
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="COHORT_DATA_DIR", help="Folder for the database and model blobs."),
    ] = Path("cohort-data"),
    host: Annotated[
        str, typer.Option(envvar="COHORT_HOST", help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(envvar="COHORT_PORT", min=0, max=65535, help="Port to listen on (0: any)."),
    ] = 50051,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="COHORT_TLS_DIR", help="Folder from `cohort admin init` (TLS certificate)"
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="COHORT_INSECURE", help="Serve plaintext gRPC (no TLS): loopback and tests only"
        ),
    ] = False,
    auth: Annotated[
        bool | None,
        typer.Option(help="Require enrolment tokens and operator roles (default: on with TLS)"),
    ] = None,
    plaintext_off_loopback: Annotated[
        bool,
        typer.Option(
            "--i-understand-plaintext-off-loopback",
            help="Serve off loopback without TLS or auth: anyone on the network can read "
            "tokens and updates and act as an operator",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="COHORT_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve Prometheus /metrics on this port (off unless given; TLS with --tls-dir)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(envvar="COHORT_METRICS_HOST", help="Address /metrics listens on")
    ] = "127.0.0.1",
    metrics_token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="COHORT_METRICS_TOKEN_FILE",
            help="File with the bearer token a scraper must send (needed off loopback)",
        ),
    ] = None,
) -> None:
    """Serve the federation and admin services (plus gRPC health) until interrupted."""
    from coordinator.db import default_database_url
    from coordinator.pki import FederationPki
    from coordinator.server import CoordinatorServer, exposure_problem

    if tls_dir is None and not insecure:
        fail(
            "TLS is on by default: pass --tls-dir DIR (made by `cohort admin init --dir DIR`) "
            "or --insecure"
        )
    if tls_dir is not None and insecure:
        fail("--tls-dir and --insecure contradict each other")
    pki = FederationPki(tls_dir) if tls_dir is not None else None
    auth_on = (pki is not None) if auth is None else auth
    problem = exposure_problem(host, pki is not None, auth_on)
    if problem is not None and not plaintext_off_loopback:
        fail(problem)
    if problem is not None:
        err_console.print(f"[bold red]warning[/]: {problem.split(':')[0]}, as asked")
    metrics_token = metrics_token_file.read_text().strip() if metrics_token_file else ""
    if metrics_port is not None and not metrics_token and not _loopback(metrics_host):
        fail(
            f"/metrics on {metrics_host} would be readable by anyone on the network: "
            "pass --metrics-token-file FILE (and --tls-dir) or keep --metrics-host 127.0.0.1"
        )
    url = db or default_database_url(data_dir)
    server = CoordinatorServer(
        url,
        data_dir,
        host=host,
        port=port,
        tls=pki,
        auth=auth_on,
        allow_exposed=plaintext_off_loopback,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        metrics_token=metrics_token,
    )
    bound = server.start()
    transport = "TLS" if pki else "plaintext (--insecure)"
    err_console.print(
        f"coordinator on {host}:{bound} ({transport}, auth "
        f"{'on' if server.access.enabled else 'off'}), database {_redact(url)}, "
        f"data {data_dir}"
        + (
            f", metrics on {metrics_host}:{server.metrics_port}/metrics"
            if metrics_port is not None
            else ""
        ),
        soft_wrap=True,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@client_app.command("run")
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
        from client.model_trainer import ModelTrainer, load_site_dataset

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


@client_app.command("export-model")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
