"""`cohort admin runs …`: start, list, show, watch and stop runs."""

from __future__ import annotations

import itertools
import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.admin_link import (
    Admin,
    CaOption,
    CoordinatorOption,
    InsecureOption,
    JsonOption,
    TokenFileOption,
    run_dict,
)
from cli.common import console, err_console, fail, friendly_errors, parse_json_option
from protos import admin_pb2, common_pb2
from protos.serde import (
    SchemeName,
    config_from_json,
    run_state_name,
    scheme_from_proto,
    scheme_to_proto,
)

runs_app = typer.Typer(help="Start, list, show, watch and stop runs.", no_args_is_help=True)


@runs_app.command("start")
@friendly_errors
def start(
    model: Annotated[
        str,
        typer.Option(
            help="Built-in model (tabular_mlp, image_cnn, text_transformer, audio_encoder, "
            "multimodal) or site:SPEC for one the sites provide (built only where their "
            "policy lists SPEC)"
        ),
    ] = "tabular_mlp",
    rounds: Annotated[int, typer.Option(help="Training rounds, at least 1")] = 5,
    min_clients: Annotated[int, typer.Option(help="Sites needed to start and per round")] = 2,
    max_clients: Annotated[int, typer.Option(help="0 = no cap")] = 0,
    fraction: Annotated[float, typer.Option(help="Share of online sites asked each round")] = 1.0,
    deadline: Annotated[float, typer.Option(help="Seconds a round waits for its sites")] = 300.0,
    local_epochs: Annotated[
        int, typer.Option(help="Passes over its data a site makes a round")
    ] = 1,
    lr: Annotated[float, typer.Option(help="Local learning rate")] = 0.01,
    secure: Annotated[str, typer.Option(help="paillier or none")] = "none",
    custodian: Annotated[str, typer.Option(help="Site that makes the run's key")] = "",
    strategy: Annotated[
        str,
        typer.Option(
            help="fedavg, fedavgm, fedadam (secure) or median, krum, trimmed_mean (plaintext)"
        ),
    ] = "fedavg",
    quorum: Annotated[
        int, typer.Option(help="Updates that close a round at its deadline; 0 = min-clients")
    ] = 0,
    config: Annotated[str, typer.Option(help="Extra trainer config as JSON")] = "",
    name: Annotated[str, typer.Option(help="A name for the run, shown in lists")] = "",
    intended_use: Annotated[
        str, typer.Option(help="What the model is for, in the report's model card")
    ] = "",
    limitations: Annotated[
        str, typer.Option(help="Known limitations, in the report's model card")
    ] = "",
    allow_two_site_secure: Annotated[
        bool,
        typer.Option(
            help="Let a secure run have 2 sites a round: each then learns the other's update "
            "from the decrypted mean"
        ),
    ] = False,
    threshold: Annotated[
        int,
        typer.Option(
            help="Secure runs: t of the run's sites must join to decrypt; no site holds the "
            "whole key (0: single custodian, every site holds the key)"
        ),
    ] = 0,
    dp: Annotated[
        str,
        typer.Option(
            help="Differential privacy: record (DP-SGD at each site, Opacus) or site (with "
            "--secure paillier: each site clips its whole update and adds its share of "
            "discrete Gaussian noise inside the encrypted sum, calibrated for the run's "
            "quorum); empty = none"
        ),
    ] = "",
    epsilon: Annotated[float, typer.Option(help="DP: target epsilon for the whole run")] = 0.0,
    delta: Annotated[float, typer.Option(help="DP: target delta")] = 1e-5,
    noise_multiplier: Annotated[
        float, typer.Option(help="DP record mode: a fixed noise multiplier instead of --epsilon")
    ] = 0.0,
    max_grad_norm: Annotated[
        float, typer.Option(help="DP: per-sample (record) or per-update (site) L2 clip")
    ] = 1.0,
    dp_accountant: Annotated[str, typer.Option(help="DP record mode: rdp or prv")] = "rdp",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Create a run; it starts as soon as enough sites are online."""
    if secure not in tuple(SchemeName):
        fail(f"--secure must be paillier or none, not {secure!r}")
    if rounds < 1:
        fail(f"--rounds must be at least 1, not {rounds}")
    if threshold < 0:
        fail(f"--threshold must be 0 (single custodian) or at least 2, not {threshold}")
    extra = parse_json_option(config, "--config")
    card = {k: v for k, v in (("intended_use", intended_use), ("limitations", limitations)) if v}
    if card:
        if any(len(v) > 2000 for v in card.values()):
            fail("--intended-use and --limitations take at most 2000 characters each")
        # In the run's config: hashed into config_sha256 and the run.created audit row.
        extra["model_card"] = {**extra.get("model_card", {}), **card}
    if quorum:
        extra["quorum"] = quorum
    run = Admin(coordinator, ca, token_file, insecure).CreateRun(
        admin_pb2.CreateRunRequest(
            model=model,
            rounds=rounds,
            min_clients=min_clients,
            max_clients=max_clients,
            fraction=fraction,
            round_deadline_seconds=deadline,
            local_epochs=local_epochs,
            lr=lr,
            secure=scheme_to_proto(secure),
            custodian=custodian,
            strategy=strategy,
            config_json=json.dumps(extra),
            name=name,
            allow_two_site_secure=allow_two_site_secure,
            threshold=threshold,
            privacy=(
                common_pb2.PrivacyPlan(
                    mode=dp,
                    epsilon=epsilon,
                    delta=delta,
                    noise_multiplier=noise_multiplier,
                    max_grad_norm=max_grad_norm,
                    accountant=dp_accountant,
                )
                if dp
                else None
            ),
        ),
        timeout=30,
    )
    if as_json:
        print(json.dumps(run_dict(run)))
        return
    console.print(
        f"run [bold]{run.run_id}[/] created ({run_state_name(run.state)}); "
        f"watch it with `cohort admin runs watch {run.run_id}`"
    )


@runs_app.command("list")
@friendly_errors
def list_runs(
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """All runs, newest first."""
    reply = Admin(coordinator, ca, token_file, insecure).ListRuns(
        admin_pb2.ListRunsRequest(), timeout=30
    )
    if as_json:
        print(json.dumps([run_dict(r) for r in reply.runs]))
        return
    table = Table(title="runs")
    table.add_column("run", no_wrap=True, min_width=36)
    for column in ("name", "state", "model", "round", "secure", "strategy"):
        table.add_column(column)
    for run in reply.runs:
        table.add_row(
            run.run_id,
            escape(run.name),
            run_state_name(run.state),
            escape(run.model),
            f"{run.current_round}/{run.rounds}",
            scheme_from_proto(run.secure),
            run.strategy,
        )
    console.print(table)


def print_run(run: admin_pb2.RunInfo) -> None:
    console.print(
        f"[bold]run {escape(run.run_id)}[/] {escape(run.name)} — {run_state_name(run.state)}, "
        f"round {run.current_round}/{run.rounds}, model {escape(run.model)}, "
        f"strategy {escape(run.strategy)}",
        highlight=False,
    )
    if scheme_from_proto(run.secure) is SchemeName.PAILLIER:
        console.print(
            f"secure aggregation: Paillier; key fingerprint "
            f"[cyan]{run.key_fingerprint or '(not yet generated)'}[/] "
            f"— compare with each site out of band"
        )
        print_custody(run)
    if run.failure_reason:
        # Site-supplied words (refusal reasons) are text, never markup.
        console.print(f"[red]reason:[/] {escape(run.failure_reason)}", highlight=False)
    if run.waiting_for:
        console.print(f"[yellow]waiting for:[/] {escape(run.waiting_for)}", highlight=False)
    secure = scheme_from_proto(run.secure) is SchemeName.PAILLIER
    # A DP run's sites send no count or metric (client/tasks.py withheld): say so.
    dp = bool(config_from_json(run.config_json).get("privacy"))
    table = Table()
    # Secure runs weigh updates by capped, encoded weights (e.g. 4095): show examples.
    for column in ("round", "state", "sites", "examples", "bytes", "metrics"):
        table.add_column(column)
    for info in run.round_infos:
        metrics = ", ".join(
            f"{k}={v:.4g}"
            for k, v in sorted(info.metrics.items())
            if k.startswith(("eval_", "train_loss"))
        )
        table.add_row(
            str(info.number),
            info.state,
            f"{info.submitted}/{info.selected}",
            "withheld (DP)" if dp else _examples(info, secure),
            str(info.bytes_received),
            "withheld under DP" if dp else metrics,
        )
    console.print(table)
    if dp:
        console.print(
            "under DP each site withholds its example count, its training and evaluation "
            "metrics and its held-out scores: an exact figure of its data is a release "
            "no ε covers"
        )
    print_sites(run)
    print_refusals(run)


def print_custody(run: admin_pb2.RunInfo) -> None:
    """Threshold runs: t of N, the share holders and the custodian's erasure statement."""
    custody = run.threshold_custody
    if custody.problem:
        console.print(
            "custody: threshold, UNVERIFIED: the dealer's custody statement on record "
            f"(sha256 {custody.statement_sha256[:16]}…) does not verify "
            f"({escape(custody.problem)}); none of its claims is shown",
            highlight=False,
        )
        return
    if not custody.threshold:
        threshold = config_from_json(run.config_json).get("threshold")
        custody_line = f"{threshold} of the run's sites (not yet dealt)" if threshold else ""
        if custody_line:
            console.print(f"custody: threshold, {custody_line}", highlight=False)
        return
    console.print(
        f"custody: threshold, {custody.threshold} of {custody.parties} share holders must "
        f"join to decrypt; dealt by {escape(custody.custodian)} "
        f"(statement sha256 {custody.statement_sha256[:16]}…, its signature re-verified "
        "by the coordinator just now against the custodian's registered identity key)",
        highlight=False,
    )
    console.print(
        f"  a round decrypts once {custody.echo_quorum} of {custody.parties} holders echo the "
        f"same aggregate: up to {custody.parties - custody.echo_quorum} may be gone",
        highlight=False,
    )
    for holder in custody.holders:
        index, site, fingerprint = holder.split(":", 2)
        console.print(f"  share {index}: {escape(site)} ({fingerprint})", highlight=False)
    console.print(f"  erasure (signed): {escape(custody.erasure)}", highlight=False)


def _examples(info: admin_pb2.RoundInfo, secure: bool) -> str:
    if "examples" in info.metrics:
        return str(int(info.metrics["examples"]))
    return "—" if secure else str(info.total_weight)


def print_sites(run: admin_pb2.RunInfo) -> None:
    """Per site: its audit, and the final model on the site's own held-out rows."""
    if not run.site_results:
        return
    table = Table(title="final model on each site's held-out rows")
    for column in ("site", "audit", "rows", "accuracy", "loss", "other"):
        table.add_column(column)
    for site in run.site_results:
        metrics = dict(site.holdout_metrics)
        rows = metrics.pop("examples", None)
        accuracy = metrics.pop("accuracy", None)
        loss = metrics.pop("loss", None)
        table.add_row(
            escape(site.site_name),
            site.audit,
            "" if rows is None else str(int(rows)),
            "" if accuracy is None else f"{accuracy:.3f}",
            "" if loss is None else f"{loss:.4f}",
            escape(", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))),
        )
    console.print(table)


def print_refusals(run: admin_pb2.RunInfo) -> None:
    """What sites refused, and why, in their own words."""
    if not run.refusals:
        return
    table = Table(title="refusals")
    for column in ("site", "round", "code", "reason"):
        table.add_column(column)
    for refusal in run.refusals:
        # A site's own words: shown as text, never read as console markup.
        table.add_row(
            escape(refusal.site_name),
            str(refusal.round),
            escape(refusal.code),
            escape(refusal.reason),
        )
    console.print(table)


@runs_app.command("show")
@friendly_errors
def show(
    run_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """One run: state, key fingerprint, rounds and their metrics."""
    run = Admin(coordinator, ca, token_file, insecure).GetRun(
        admin_pb2.GetRunRequest(run_id=run_id), timeout=30
    )
    if as_json:
        print(json.dumps(run_dict(run)))
        return
    print_run(run)


@runs_app.command("watch")
@friendly_errors
def watch(
    run_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Live progress until the run ends."""
    from cli.progress import RoundProgress

    events = Admin(coordinator, ca, token_file, insecure).WatchRun(
        admin_pb2.GetRunRequest(run_id=run_id)
    )
    last = None
    if as_json:
        for event in events:
            print(json.dumps(run_dict(event.run)), flush=True)
        return
    first = next(events)
    last = first.run
    waiting = ""
    with RoundProgress(err_console, first.run.rounds) as progress:
        for event in itertools.chain([first], events):
            progress.update(event.run)
            last = event.run
            # Printed when what it waits for changes, not as its deadline counts down.
            now_waiting = event.run.waiting_for.split(" (deadline")[0]
            if now_waiting and now_waiting != waiting:
                waiting = now_waiting
                progress.progress.console.print(
                    f"waiting for: {event.run.waiting_for}", highlight=False
                )
    print_run(last)


@runs_app.command("stop")
@friendly_errors
def stop(
    run_id: str,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log")] = "",
    coordinator: CoordinatorOption = "127.0.0.1:50051",
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Stop a run; its open tasks are cancelled."""
    run = Admin(coordinator, ca, token_file, insecure).StopRun(
        admin_pb2.StopRunRequest(run_id=run_id, reason=reason), timeout=30
    )
    if as_json:
        print(json.dumps(run_dict(run)))
        return
    console.print(f"run {run.run_id} {run_state_name(run.state)}")
