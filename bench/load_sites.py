"""bench/load.py's sites: raw Federation clients, one thread and one channel each.

Run in spawned worker processes so they do not share the coordinator's GIL. Each site
trains nothing: a small NumPyClient-like object adds a random float32 delta, but every
step is the real protocol (Join, PullTask long polls, FetchModel, SubmitUpdate streams),
called through the agent's own link (client/link.py), unsigned.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from client.link import Link, Timeouts, Update
from protos import federation_pb2, federation_pb2_grpc, wire

# Transport failures: the outcome of the call is unknown to the site.
TRANSPORT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


class RandomDeltaClient:
    """NumPyClient-like: one float32 tensor of ``floats`` values; ``fit`` adds noise."""

    def __init__(self, floats: int, seed: int) -> None:
        self.floats = floats
        self.rng = np.random.default_rng(seed)
        self.num_examples = int(self.rng.integers(50, 500))

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [np.zeros(self.floats, np.float32)]

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        delta = self.rng.standard_normal(self.floats).astype(np.float32) * 0.01
        loss = float(self.rng.uniform(0.1, 1.0))
        return [parameters[0] + delta], self.num_examples, {"train_loss": loss}


@dataclass(frozen=True)
class SiteSpec:
    """What a worker process needs to run its share of the sites (picklable)."""

    address: str
    prefix: str
    first: int
    count: int
    floats: int
    poll_seconds: float
    rpc_timeout: float
    deadline_unix: float
    seed: int


def _code(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else "UNKNOWN"


class LoadSite:
    """A FakeSite-style raw site: every step is a real Federation RPC on its own channel."""

    def __init__(self, spec: SiteSpec, index: int) -> None:
        self.spec = spec
        self.name = f"{spec.prefix}-{index:04d}"
        self.client = RandomDeltaClient(spec.floats, spec.seed + index)
        # A local subchannel pool: one TCP connection per site, as separate machines have.
        self.channel = grpc.insecure_channel(
            spec.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.token = ""
        self.link = Link(
            federation_pb2_grpc.FederationStub(self.channel),
            lambda: self.token,
            timeouts=Timeouts.every(spec.rpc_timeout),
        )
        self.joined = threading.Event()
        self.record: dict[str, Any] = {
            "name": self.name,
            "node_id": "",
            "join_seconds": None,
            "join_error": "",
            "pulls": 0,
            "pull_errors": Counter(),
            "tasks": [],
            "submits": [],
            "fetches": [],
            "errors": [],
        }

    def _left(self) -> float:
        return self.spec.deadline_unix - time.time()

    def main(self, stop: threading.Event) -> None:
        try:
            if self._join(stop):
                self._loop(stop)
        except Exception as exc:
            self.record["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            self.joined.set()

    def _join(self, stop: threading.Event) -> bool:
        started = time.perf_counter()
        backoff = 0.2
        while not stop.is_set() and self._left() > 0:
            try:
                reply = self.link.join(
                    federation_pb2.JoinRequest(
                        site_name=self.name,
                        x25519_public_key=os.urandom(32),
                        agent_version="cohort-load-bench",
                    )
                )
            except grpc.RpcError as exc:
                self.record["join_error"] = f"{_code(exc)}: {exc.details()}"
                if _code(exc) not in {c.name for c in TRANSPORT}:
                    return False
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.token = reply.node_token
            self.record["node_id"] = reply.node_id
            self.record["join_seconds"] = time.perf_counter() - started
            self.record["join_error"] = ""
            self.joined.set()
            return True
        return False

    def _loop(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set() and self._left() > 0:
            wait = max(0.0, min(self.spec.poll_seconds, self._left() - 1.0))
            try:
                self.record["pulls"] += 1
                task = self.link.pull(wait)
            except grpc.RpcError as exc:
                if stop.is_set():
                    return
                self.record["pull_errors"][_code(exc)] += 1
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            if task.kind == federation_pb2.TASK_KIND_NONE:
                continue
            self.record["tasks"].append(
                {"kind": int(task.kind), "round": int(task.round), "received_unix": time.time()}
            )
            if task.kind == federation_pb2.TASK_KIND_INIT:
                self._submit(task, self.client.get_parameters({}), num_examples=1, kind="init")
            elif task.kind == federation_pb2.TASK_KIND_TRAIN:
                self._train(task)
            # Nothing else is expected (audits are off); ignoring it is what a site may do.

    def _train(self, task: federation_pb2.Task) -> None:
        started = time.perf_counter()
        try:
            payload = self.link.fetch(task.run_id, task.model_sha256)
        except grpc.RpcError as exc:
            self.record["errors"].append(f"FetchModel {_code(exc)}: {exc.details()}")
            return
        self.record["fetches"].append(time.perf_counter() - started)
        weights = wire.decode_tensors(payload)
        config = json.loads(task.config_json or "{}")
        new_weights, num_examples, metrics = self.client.fit(weights, config)
        deltas = [(n - w).astype(np.float32) for n, w in zip(new_weights, weights, strict=True)]
        self._submit(task, deltas, num_examples=num_examples, kind="train", metrics=metrics)

    def _submit(
        self,
        task: federation_pb2.Task,
        arrays: list[np.ndarray],
        *,
        num_examples: int,
        kind: str,
        metrics: dict[str, float] | None = None,
    ) -> None:
        payload = wire.encode_tensors(arrays)
        update = Update(
            payload,
            wire.TENSORS_FLOAT32,
            num_examples=num_examples,
            weight=num_examples,
            metrics=metrics or {},
        )
        entry: dict[str, Any] = {
            "kind": kind,
            "round": int(task.round),
            "task_id": task.task_id,
            "bytes": len(payload),
            "started_unix": time.time(),
        }
        started = time.perf_counter()
        try:
            reply = self.link.submit_update(task, update)
            entry.update(code="OK", message=reply.message)
        except grpc.RpcError as exc:
            entry.update(code=_code(exc), message=str(exc.details()))
        entry["seconds"] = time.perf_counter() - started
        entry["ended_unix"] = time.time()
        self.record["submits"].append(entry)


def worker_main(spec: SiteSpec, stop: Any, out: Any) -> None:
    """One site process: ``spec.count`` sites, one thread each, until ``stop`` or the deadline."""
    cpu = time.process_time()
    local_stop = threading.Event()
    sites = [LoadSite(spec, spec.first + i) for i in range(spec.count)]
    threads = [
        threading.Thread(target=site.main, args=(local_stop,), name=site.name, daemon=True)
        for site in sites
    ]
    for thread in threads:
        thread.start()
    for site in sites:
        site.joined.wait(timeout=max(0.1, spec.deadline_unix - time.time()))
    out.put(("joined", spec.first, {s.name: s.record["node_id"] for s in sites}))
    while not stop.wait(0.2) and time.time() < spec.deadline_unix:
        pass
    local_stop.set()
    for site in sites:
        site.channel.close()  # cancels the parked long polls
    for thread in threads:
        thread.join(timeout=5)
    records = []
    for site in sites:
        record = dict(site.record)
        record["pull_errors"] = dict(record["pull_errors"])
        records.append(record)
    out.put(("done", spec.first, {"records": records, "cpu_seconds": time.process_time() - cpu}))
