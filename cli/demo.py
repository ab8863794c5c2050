"""`cohort demo`: three hospitals, one coordinator, real gRPC on loopback, secure by default."""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from cli.progress import RoundProgress
from cli.scenarios import (
    SCENARIOS,
    DemoSettings,
    Scenario,
    build_scenario,
    evaluate_weights,
    prepare_sites,
    train_alone,
)
from client.agent import AgentConfig, SiteAgent
from client.policy import SitePolicy
from coordinator.server import CoordinatorServer
from protos import admin_pb2, admin_pb2_grpc, common_pb2, serde, wire

# prepare_sites / evaluate_weights / train_alone live with the tabular scenario; they are
# re-exported here because benchmarks import them from the demo.
__all__ = [
    "SCENARIOS",
    "DemoResult",
    "DemoSettings",
    "RoundProgress",
    "evaluate_weights",
    "prepare_sites",
    "run_demo",
    "train_alone",
]


DP_TABULAR_LR = 0.02


@dataclass
class DemoResult:
    run_id: str
    state: str
    federated: dict[str, float]
    centralised: dict[str, float]
    local_only: dict[str, dict[str, float]]
    rounds: list[dict[str, Any]]
    seconds: float
    secure: bool
    key_fingerprint: str
    report_path: str | None
    bytes_received: int
    data_dir: str
    sites: dict[str, int] = field(default_factory=dict)
    scenario: str = "tabular"
    title: str = ""
    model: str = "tabular_mlp"
    lora: str = ""
    exchanged_values: int = 0
    full_model_bytes: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # Per site, from its own signed ledger: what the run spent (record-level DP only).
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        best_local = max((m["accuracy"] for m in self.local_only.values()), default=float("nan"))
        return {
            "run_id": self.run_id,
            "state": self.state,
            "secure": self.secure,
            "scenario": self.scenario,
            "model": self.model,
            "lora": self.lora,
            "federated_accuracy": self.federated["accuracy"],
            "federated_roc_auc": self.federated["roc_auc"],
            "centralised_accuracy": self.centralised["accuracy"],
            "centralised_roc_auc": self.centralised["roc_auc"],
            "local_only_accuracy": {k: v["accuracy"] for k, v in self.local_only.items()},
            "local_only_roc_auc": {k: v["roc_auc"] for k, v in self.local_only.items()},
            "best_local_accuracy": best_local,
            "rounds": len(self.rounds),
            "seconds": round(self.seconds, 2),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "bytes_received": self.bytes_received,
            "exchanged_values": self.exchanged_values,
            "full_model_bytes": self.full_model_bytes,
            "key_fingerprint": self.key_fingerprint,
            "report_path": self.report_path,
            "sites": self.sites,
            "privacy": self.privacy,
        }


def pin_each_other(agents: list[SiteAgent]) -> None:
    """The demo's hospitals agreed their fingerprints out of band: each pins every other."""
    for agent in agents:
        for other in agents:
            if other is not agent:
                agent.peers.pin(other.config.site_name, other.identity.fingerprint)


def run_demo(
    settings: DemoSettings,
    console: Console,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Run ``settings.scenario`` end to end: coordinator, sites, rounds, audit, baselines.

    Everything is real: a coordinator on an ephemeral loopback port, one agent thread per
    site speaking gRPC, Paillier aggregation unless ``settings.secure`` is off. The final
    model is decrypted by the first site, as a real site would, and scored on the
    scenario's common test set next to the centralised and local-only baselines.

    Raises
    ------
    ValueError
        On an unknown scenario.
    RuntimeError
        If the run does not complete.
    """
    started = time.perf_counter()
    workdir = settings.data_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    if settings.dp_epsilon is not None and settings.lr is None and settings.scenario == "tabular":
        # DP-SGD's clipped, noised steps want a larger rate than plain training: of 0.001,
        # 0.005, 0.01, 0.02 and 0.05 (AdamW, ε 8, one site), 0.02 scored best.
        settings = replace(settings, lr=DP_TABULAR_LR)
    scenario = build_scenario(settings, workdir)
    site_names = list(scenario.sites)
    timings = {"setup": time.perf_counter() - started}
    run_started = time.perf_counter()
    server = CoordinatorServer(
        f"sqlite:///{workdir / 'cohort.db'}", workdir / "coordinator", port=0
    )
    address = f"127.0.0.1:{server.start()}"
    stop = threading.Event()
    agents: dict[str, SiteAgent] = {}
    threads = []
    try:
        for name, trainer in scenario.sites.items():
            agents[name] = SiteAgent(
                AgentConfig(
                    address,
                    name,
                    workdir / "sites" / name,
                    poll_seconds=5.0,
                    encrypt_workers=settings.encrypt_workers,
                    seed=settings.seed,
                    rounding_seed=settings.seed,
                    # The demo's operator owns the sites too: its --key-bits is theirs.
                    policy=SitePolicy(min_key_bits=min(settings.key_bits, 2048)),
                ),
                trainer,
                listener=on_event,
            )
        pin_each_other(list(agents.values()))
        for name, agent in agents.items():
            thread = threading.Thread(target=agent.run, args=(stop,), name=name, daemon=True)
            thread.start()
            threads.append(thread)
        channel = grpc.insecure_channel(address)
        admin = admin_pb2_grpc.AdminStub(channel)
        mark = time.perf_counter()
        run = admin.CreateRun(
            _create_run_request(settings, scenario), metadata=(("x-cohort-user", "demo"),)
        )
        with RoundProgress(console, settings.rounds) as progress:
            for event in admin.WatchRun(admin_pb2.GetRunRequest(run_id=run.run_id)):
                progress.update(event.run)
        final = admin.GetRun(admin_pb2.GetRunRequest(run_id=run.run_id))
        state = serde.run_state_name(final.state)
        if state != "completed":
            raise RuntimeError(f"demo run {state}: {final.failure_reason}")
        timings["federated"] = time.perf_counter() - mark
        # The final model is decrypted by a site, never by the coordinator.
        weights = agents[site_names[0]].export_model(run.run_id)
        # Coordinator up to the final model in a site's hands: what a run costs end to end.
        timings["run"] = time.perf_counter() - run_started
        federated = scenario.evaluate(weights)
        mark = time.perf_counter()
        report_path = None
        if settings.report:
            report = workdir / f"report-{run.run_id}.html"
            _wait_and_write_report(admin, run.run_id, len(site_names), settings, report)
            report_path = str(report)
        timings["audit_and_report"] = time.perf_counter() - mark
        mark = time.perf_counter()
        centralised = scenario.centralised()
        local_only = scenario.local_only()
        timings["baselines"] = time.perf_counter() - mark
        rounds = [
            {
                "round": r.number,
                "updates": r.submitted,
                "bytes": r.bytes_received,
                "seconds": r.closed_unix - r.opened_unix,
                "metrics": dict(r.metrics),
            }
            for r in final.round_infos
        ]
        privacy = {name: spend_of(agent, run.run_id) for name, agent in agents.items()}
        return DemoResult(
            privacy={k: v for k, v in privacy.items() if v},
            run_id=run.run_id,
            state=state,
            federated=federated,
            centralised=centralised,
            local_only=local_only,
            rounds=rounds,
            seconds=time.perf_counter() - started,
            secure=settings.secure,
            key_fingerprint=final.key_fingerprint,
            report_path=report_path,
            bytes_received=sum(r.bytes_received for r in final.round_infos),
            data_dir=str(workdir),
            sites=dict(scenario.site_rows),
            scenario=scenario.name,
            title=scenario.title,
            model=scenario.model,
            lora=scenario.lora,
            exchanged_values=int(sum(w.size for w in weights)),
            full_model_bytes=scenario.full_model_bytes(),
            timings=timings,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for agent in agents.values():
            agent.close()
        server.stop(grace=1.0)


def check_commands(run_id: str, data_dir: Path) -> list[str]:
    """The commands that verify the demo's audit log and rebuild its report as PDF offline.

    Paths are absolute and shell-quoted so a user can paste them from any folder; the
    caller prints each on one line (no console wrapping) so a copied path is whole.
    """
    folder = Path(data_dir).resolve()
    db = shlex.quote(f"sqlite:///{folder / 'cohort.db'}")
    pdf = shlex.quote(str(folder / f"report-{run_id}.pdf"))
    return [
        f"cohort audit verify {run_id} --db {db}",
        f"cohort audit report {run_id} --db {db} --format pdf --out {pdf}",
    ]


def spend_of(agent: SiteAgent, run_id: str) -> dict[str, Any]:
    """What a site's own ledger says the run cost it: last entry's run ε and the ledger total."""
    entries = [e.statement for e in agent.privacy.ledger.entries if e.run_id == run_id]
    if not entries:
        return {}
    last = entries[-1]
    return {
        "epsilon": float(last["run_epsilon"]),
        "delta": float(last["run_delta"]),
        "noise_multiplier": float(last["event"]["noise_multiplier"]),
        "sample_rate": float(last["event"]["sample_rate"]),
        "accountant": str(last["accountant"]),
        "rounds_charged": len(entries),
        "ledger_epsilon": float(last["ledger_epsilon_after"]),
        "ledger_delta": float(last["ledger_delta"]),
    }


def _create_run_request(settings: DemoSettings, scenario: Scenario) -> admin_pb2.CreateRunRequest:
    """The run every site trains: the scenario's model, LoRA and encoding in config_json."""
    config = scenario.run_config()
    if not settings.audit:
        config["audit"] = False
    if settings.secure:
        config["encoding"] = {
            **scenario.encoding,
            "max_weight": 4096,
            "key_bits": settings.key_bits,
        }
    sites = list(scenario.sites)
    return admin_pb2.CreateRunRequest(
        model=scenario.model,
        rounds=settings.rounds,
        min_clients=len(sites),
        local_epochs=settings.local_epochs,
        lr=scenario.lr,
        round_deadline_seconds=settings.round_deadline,
        name=f"demo-{scenario.name}",
        secure=serde.scheme_to_proto("paillier" if settings.secure else "none"),
        custodian=sites[0] if settings.secure else "",
        config_json=json.dumps(config),
        threshold=settings.threshold if settings.secure else 0,
        privacy=(
            common_pb2.PrivacyPlan(
                mode="record",
                epsilon=settings.dp_epsilon,
                delta=settings.dp_delta,
                max_grad_norm=settings.dp_max_grad_norm,
                accountant="rdp",
            )
            if settings.dp_epsilon is not None
            else None
        ),
    )


def _wait_and_write_report(
    admin: admin_pb2_grpc.AdminStub,
    run_id: str,
    sites: int,
    settings: DemoSettings,
    out: Path,
) -> None:
    """Wait (bounded) for every site's audit, then export the HTML compliance report."""
    deadline = time.monotonic() + settings.audit_wait_seconds
    while time.monotonic() < deadline:
        info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
        if info.audits_received >= sites:
            break
        time.sleep(0.5)
    payload = wire.join_chunks(
        admin.ExportReport(admin_pb2.ExportReportRequest(run_id=run_id, format="html"))
    )
    out.write_bytes(payload)
