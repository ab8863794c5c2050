"""The site agent: connects out, long-polls for tasks, and hands each to its handler.

Only the loop lives here: joining, the reconnect backoff, the worker thread and its
heartbeats, refusals and closing. The jobs it dispatches to:

- client/link.py: every call to the coordinator (token, deadlines, the update stream);
- client/sovereign.py: the site's gate on every task (policy, run pins);
- client/tasks.py: INIT, TRAIN and AUDIT; client/run_keys.py: KEYGEN and opening keys;
- client/schemes/: how the run's updates are encoded and its aggregates decoded.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
from flwr.client import NumPyClient

from client import prewarm, tasks
from client.custody import SiteIdentity
from client.link import Link, Update, connect
from client.peers import PeerStore
from client.pins import RunPins
from client.policy import TaskRefused
from client.run_keys import RunKeys
from client.schemes import site_scheme
from client.schemes.paillier_model import SecureRuns
from client.site import AgentConfig, AgentError, Listener
from protos import federation_pb2, federation_pb2_grpc, wire

__all__ = ["AgentConfig", "AgentError", "SiteAgent"]

log = logging.getLogger(__name__)
AGENT_VERSION = "cohort-agent/0.1"

# Codes after which the agent backs off and calls again rather than giving a task up; a
# coordinator at its call cap (RESOURCE_EXHAUSTED) is busy, not refusing.
_TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def _kind_name(task: federation_pb2.Task) -> str:
    return federation_pb2.TaskKind.Name(task.kind).removeprefix("TASK_KIND_").lower()


def _code_name(code: grpc.StatusCode | None) -> str:
    return code.name if code is not None else "UNKNOWN"


class SiteAgent:
    """Drives one site's ``NumPyClient`` through the federation's tasks.

    Only outbound calls: the coordinator never connects to a site. The agent holds the
    site's X25519 identity and the run keys it was sealed; nothing else leaves the site
    but updates (encrypted in secure runs), key bundles and attribution summaries.
    """

    def __init__(
        self, config: AgentConfig, client: NumPyClient, listener: Listener | None = None
    ) -> None:
        self.config = config
        self.client = client
        self.listener = listener or (lambda event, info: None)
        self.identity = SiteIdentity.load_or_create(config.state_dir, config.site_name)
        self.peers = PeerStore.load(config.state_dir, config.site_name, tofu=config.policy.tofu)
        self.pins = RunPins.load(config.state_dir, config.site_name)
        from client.dp_site import PrivacyGuard

        # The site's privacy ledger (its own budget, never the coordinator's say).
        self.privacy = PrivacyGuard(
            config.state_dir, config.site_name, self.identity, config.policy
        )
        self._closing = threading.Event()
        self.trained_any = False
        self._worker: threading.Thread | None = None
        self.channel = connect(config, self._closing)
        self.stub = federation_pb2_grpc.FederationStub(self.channel)
        self.link = Link(
            self.stub,
            lambda: self.identity.node_token,
            site_name=config.site_name,
            sign=self.identity.sign,
        )
        self.node_id = ""
        self.heartbeat_interval = 5.0
        self.custody = RunKeys(self, self.link)
        self.secure = SecureRuns(config.encrypt_workers)
        self._models: dict[str, list[np.ndarray]] = {}
        self.rng = rounding_generator(config)

    # -- connection ----------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return self.link.metadata()

    def join(self) -> str:
        """Join (or rejoin) the federation with this site's identity; return the node id."""
        reply = self.link.join(
            federation_pb2.JoinRequest(
                site_name=self.config.site_name,
                x25519_public_key=self.identity.x25519_public,
                ed25519_public_key=self.identity.ed25519_public,
                x25519_signature=self.identity.x25519_signature(),
                node_token=self.identity.node_token,
                enrolment_token="" if self.identity.node_token else self.config.enrolment_token,
                agent_version=AGENT_VERSION,
                capabilities=self._capabilities(),
            )
        )
        self.identity.remember_node(reply.node_id, reply.node_token)
        self.node_id = reply.node_id
        if reply.heartbeat_interval_seconds > 0:
            self.heartbeat_interval = float(reply.heartbeat_interval_seconds)
        self.listener("joined", {"node_id": reply.node_id, "site": self.config.site_name})
        log.info("%s joined as node %s", self.config.site_name, reply.node_id)
        return reply.node_id

    def _capabilities(self) -> dict[str, str]:
        """What the report may name about this site's data: fingerprints, rows and schema."""
        import torch

        from client.data_schema import capabilities

        caps = {"device": "cuda" if torch.cuda.is_available() else "cpu"}
        for attribute, key in (("data_fingerprint", "data_fingerprint"), ("num_rows", "rows")):
            value = getattr(self.client, attribute, None)
            if value is not None:
                caps[key] = str(value)
        caps.update(capabilities(self.client))
        return caps

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll and work until ``stop`` is set; reconnect with backoff when the link drops.

        A task this site cannot do (it failed here, or the coordinator refused its result)
        is given up: the agent does not retry it, and the coordinator's deadline leaves the
        site out of that round; the next task is taken as usual. ``stop`` is heeded within
        a fraction of a second, whatever the agent is doing: a long poll is cancelled and a
        task still running (training, an audit) is abandoned, not waited for.
        """
        stop = stop or threading.Event()
        backoff = 0.5
        joined = False
        disconnected = False
        given_up: set[str] = set()
        current = ""
        while not stop.is_set():
            try:
                if not joined:
                    self.join()
                    joined = True
                    # While the site waits for its first task: one-time process costs.
                    prewarm.warm_training()
                    prewarm.warm_forkserver()
                task = self.link.pull_or_stop(self.config.poll_seconds, stop)
                if task is None:
                    break
                backoff = 0.5
                if disconnected:
                    disconnected = False
                    self.listener("reconnected", {"coordinator": self.config.coordinator})
                if task.kind == federation_pb2.TASK_KIND_NONE:
                    continue
                if task.task_id in given_up:
                    stop.wait(min(self.config.poll_seconds, 5.0))
                    continue
                current = task.task_id
                try:
                    if not self._work(task, stop):
                        self.listener(
                            "abandoned", {"run_id": task.run_id, "kind": _kind_name(task)}
                        )
                        break
                except TaskRefused as refusal:
                    given_up.add(current)
                    self.refuse(task, refusal)
            except grpc.RpcError as exc:
                if stop.is_set():
                    break
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNAUTHENTICATED and joined:
                    log.warning("coordinator no longer knows this node; joining again")
                    self.identity.forget_node()
                    joined = False
                    continue
                if code in _TRANSIENT:
                    detail = exc.details() if hasattr(exc, "details") else ""
                    disconnected = True
                    self.listener(
                        "disconnected",
                        {"code": _code_name(code), "detail": detail or "", "retry_in": backoff},
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.config.max_backoff_seconds)
                    continue
                # The coordinator refused this task's result: give the task up, go on.
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                given_up.add(current)
                self.listener("rejected", {"code": _code_name(code), "detail": detail})
                log.warning("coordinator refused: %s %s", code, detail)
            except Exception as exc:  # whatever a task raised, the site stays up
                if stop.is_set():
                    break
                # One task that cannot be done (a bad config value, a client's own error)
                # must not take the site off the federation.
                log.exception("task failed")
                given_up.add(current)
                self.listener("task_failed", {"error": str(exc)})
        self.listener("shutting_down", {"site": self.config.site_name})

    def _work(self, task: federation_pb2.Task, stop: threading.Event) -> bool:
        """Do ``task`` in a worker thread; heartbeat meanwhile; False when stopped first.

        The worker is a daemon: a site asked to stop does not wait for a long training or
        audit to end (its result would be of no use to a coordinator it is leaving), and the
        heartbeats keep a busy site from showing as offline while it works.
        """
        outcome: list[BaseException | None] = []

        def work() -> None:
            try:
                self.handle(task)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=work, name=f"task-{_kind_name(task)}", daemon=True)
        self._worker = worker
        worker.start()
        beat = time.monotonic()
        while worker.is_alive():
            worker.join(0.1)
            if stop.is_set() and worker.is_alive():
                return False
            if time.monotonic() - beat >= self.heartbeat_interval:
                beat = time.monotonic()
                self.heartbeat()
        if outcome and outcome[0] is not None:
            raise outcome[0]
        return True

    def heartbeat(self) -> None:
        """Tell the coordinator this site is alive while a task keeps it from polling."""
        try:
            self.link.heartbeat()
        except grpc.RpcError as exc:
            # A missed beat is only a missed beat: the task goes on, the next poll says more.
            log.debug("heartbeat failed: %s", exc)

    def refuse(self, task: federation_pb2.Task, refusal: TaskRefused) -> None:
        """Say no to a task: a line in this site's log, and the reason to the operator."""
        log.warning(
            "refused %s task of run %s (%s): %s",
            _kind_name(task),
            task.run_id,
            refusal.code,
            refusal.reason,
        )
        self.listener(
            "refused",
            {
                "run_id": task.run_id,
                "kind": _kind_name(task),
                "round": task.round,
                "code": refusal.code,
                "reason": refusal.reason,
            },
        )
        try:
            self.link.refuse(task, refusal.code, refusal.reason)
        except grpc.RpcError as exc:
            # The refusal stands whether or not the coordinator hears of it.
            log.warning("could not report the refusal: %s", exc)

    def close(self, wait_seconds: float = 10.0) -> None:
        """Stop making calls, let an abandoned task end, then close the channel.

        A task still running after ``wait_seconds`` keeps the channel (and its randomness
        pools) open: closing them under it could crash the process, and a daemon thread
        ends with the process anyway.
        """
        self._closing.set()
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(wait_seconds)
            if worker.is_alive():
                log.warning("a %s task is still running; leaving its channel open", worker.name)
                return
        self.secure.close_randomness()
        self.channel.close()

    # -- tasks ---------------------------------------------------------------------------

    def handle(self, task: federation_pb2.Task) -> None:
        """Run one task through the site's gate and its handler; a refusal is reported."""
        handlers = {
            federation_pb2.TASK_KIND_INIT: tasks.init,
            federation_pb2.TASK_KIND_TRAIN: tasks.train,
            federation_pb2.TASK_KIND_KEYGEN: lambda _agent, task: self.custody.keygen(task),
            federation_pb2.TASK_KIND_AUDIT: tasks.audit,
        }
        handler = handlers.get(task.kind)
        if handler is None:
            log.warning("ignoring task of unknown kind %s", task.kind)
            return
        # The site's own policy and its pins of the run decide, before any handler runs.
        from client.sovereign import admit

        admit(self, task)
        handler(self, task)

    def submit(self, task: federation_pb2.Task, update: Update) -> None:
        """Send ``update`` for ``task``, naming the client's base model (LoRA runs)."""
        base = str(getattr(self.client, "base_model_hash", "") or "")
        self.link.submit_update(task, replace(update, base_model_sha256=base))

    def run_keys(self, task: federation_pb2.Task) -> tuple[Any, Any]:
        """The run's key pair, opened once (client/run_keys.py); private None for a share."""
        return self.custody.open(task)

    def fetch(self, run_id: str, sha256: str) -> bytes:
        """Download a model or aggregate blob (at most ``max_download_bytes``, hash checked)."""
        return self.link.fetch(run_id, sha256, self.config.max_download_bytes)

    def tensors(self, run_id: str, sha256: str) -> list[np.ndarray]:
        """Model blob ``sha256`` as tensors; the latest one fetched is kept."""
        if sha256 not in self._models:
            self._models = {sha256: wire.decode_tensors(self.fetch(run_id, sha256))}
        return [a.copy() for a in self._models[sha256]]

    def global_model(self, task: federation_pb2.Task) -> list[np.ndarray]:
        """The round's global weights, as the run's scheme gets them (client/schemes/)."""
        config = tasks.task_config(task)
        return site_scheme(task, config).global_model(self, task, config)

    def final_model_task(self, run_id: str) -> federation_pb2.Task:
        """Where a run's final model comes from, checked against this site's run pins."""
        return tasks.final_model_task(self, run_id)

    def export_model(self, run_id: str) -> list[np.ndarray]:
        """Final weights of a run, decrypted here for secure runs (`cohort client export-model`)."""
        return self.global_model(self.final_model_task(run_id))


def rounding_generator(config: AgentConfig) -> np.random.Generator:
    """The generator behind a site's stochastic rounding: OS entropy, or seeded per site.

    Seeded (``config.rounding_seed``), each site still draws its own stream, keyed by its
    name, so that sites in one process neither share nor interleave draws.
    """
    if config.rounding_seed is None:
        return np.random.default_rng()
    site_key = zlib.crc32(config.site_name.encode())
    return np.random.default_rng([config.rounding_seed, site_key])
