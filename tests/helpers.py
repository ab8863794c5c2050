"""Test helpers: sites on real data, a run started over real gRPC, waiting for states."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from client.agent import AgentConfig, SiteAgent
from client.data import dirichlet_split, load_sklearn
from client.trainer import TabularTrainer
from protos import admin_pb2, common_pb2

TEST_ENCODING = {"clip": 16.0, "bits": 20, "max_weight": 4096, "key_bits": 1024}


def breast_cancer_sites(count: int, seed: int = 0) -> list[TabularTrainer]:
    data = load_sklearn("breast_cancer")
    parts = dirichlet_split(data.y, count, 1.0, seed, min_rows=40)
    return [TabularTrainer(data.subset(index), seed=seed + i) for i, index in enumerate(parts)]


class AgentPool:
    """Agent threads that a test starts; ``close()`` stops and joins every one of them.

    Threads left in a gRPC call when the interpreter exits make grpc abort the process,
    so every test that starts agents must close them (the ``agents`` fixture does).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.agents: list[SiteAgent] = []

    def start(
        self,
        address: str,
        trainers: list,
        state_dir: Path,
        names: list[str] | None = None,
        **config: object,
    ) -> list[SiteAgent]:
        """One agent thread per trainer; ``config`` overrides AgentConfig fields."""
        started = []
        for index, trainer in enumerate(trainers):
            name = names[index] if names else f"site-{len(self.agents) + index}"
            agent = SiteAgent(
                AgentConfig(
                    address,
                    name,
                    state_dir / name,
                    poll_seconds=1.0,
                    encrypt_workers=1,
                    max_backoff_seconds=1.0,
                    **config,  # type: ignore[arg-type]
                ),
                trainer,
            )
            started.append(agent)
        # The institutions exchanged fingerprints out of band: every site pins every other.
        for agent in started:
            for other in self.agents + started:
                if other is not agent:
                    agent.peers.pin(other.config.site_name, other.identity.fingerprint)
                    other.peers.pin(agent.config.site_name, agent.identity.fingerprint)
        for agent in started:
            thread = threading.Thread(
                target=agent.run, args=(self.stop,), daemon=True, name=agent.config.site_name
            )
            thread.start()
            self.threads.append(thread)
            self.agents.append(agent)
        return started

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        for agent in self.agents:
            agent.close()


def create_run(
    admin,
    *,
    secure: bool = False,
    rounds: int = 2,
    min_clients: int = 3,
    deadline: float = 60.0,
    **config: object,
) -> admin_pb2.RunInfo:
    extra = {"audit": False, **config}  # SHAP audits are tested on their own
    if secure:
        extra.setdefault("encoding", TEST_ENCODING)
    return admin.CreateRun(
        admin_pb2.CreateRunRequest(
            model="tabular_mlp",
            rounds=rounds,
            min_clients=min_clients,
            local_epochs=2,
            lr=0.005,
            round_deadline_seconds=deadline,
            secure=common_pb2.SECURE_SCHEME_PAILLIER if secure else common_pb2.SECURE_SCHEME_NONE,
            config_json=json.dumps(extra),
        )
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_state(
    admin, run_id: str, states: tuple[int, ...], timeout: float = 120.0
) -> admin_pb2.RunInfo:
    result: list[admin_pb2.RunInfo] = []

    def reached() -> bool:
        info = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
        result[:] = [info]
        return info.state in states

    wait_for(reached, timeout, f"run {run_id} to reach {states}")
    return result[0]


def majority_accuracy(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))
