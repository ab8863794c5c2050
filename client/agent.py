"""The site agent: connects out, long-polls for tasks, trains, encrypts and submits."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
from flwr.client import NumPyClient

import crypto
from client import dp_site_scheme, keys, prewarm
from client.custody import SiteIdentity
from client.peers import PeerStore
from client.pins import RunPins
from client.policy import TaskRefused
from client.receipts import ReceiptBook
from client.secure import (
    SecureModelState,
    ServerOptimiser,
    clip_metrics,
    codec_for,
    decrypt_aggregate,
    encrypt_proven_update,
    flatten,
)
from client.site import AgentConfig, Listener
from client.trainer import scalar_config
from crypto import identity as site_identity
from protos import common_pb2, federation_pb2, federation_pb2_grpc, wire
from protos.transport import open_channel

log = logging.getLogger(__name__)
AGENT_VERSION = "cohort-agent/0.1"

# Events the agent reports to whoever runs it (CLI progress, demo table, tests).
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


class AgentError(RuntimeError):
    """The agent cannot go on (rejected credentials, a key that will not open)."""


class _StopGuard(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Refuses new calls once the agent is closing.

    A task abandoned on stop keeps running in its daemon thread; its next call must not
    reach a channel that is being closed (gRPC's C core does not survive that race).
    """

    def __init__(self, closing: threading.Event) -> None:
        self.closing = closing

    def _check(self) -> None:
        if self.closing.is_set():
            raise AgentError("the agent is stopping")

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self._check()
        return continuation(client_call_details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        self._check()
        return continuation(client_call_details, request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        self._check()
        return continuation(client_call_details, request_iterator)


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
        self.channel = open_channel(
            config.coordinator,
            ca_file=config.ca_file,
            insecure=config.insecure,
            options=config.channel_options,
        )
        self.channel = ReceiptBook.for_site(config.state_dir, config.site_name).attach(self.channel)
        self._closing = threading.Event()
        self._trained_any = False
        self._worker: threading.Thread | None = None
        self.channel = grpc.intercept_channel(self.channel, _StopGuard(self._closing))
        self.stub = federation_pb2_grpc.FederationStub(self.channel)
        self.node_id = ""
        self.heartbeat_interval = 5.0
        self._secure_state: dict[str, SecureModelState] = {}
        self._run_keys: dict[str, tuple[Any, Any]] = {}
        self._threshold_keys: dict[str, Any] = {}  # run → client.threshold.ThresholdKey
        self._models: dict[str, list[np.ndarray]] = {}
        self._pools: dict[str, crypto.RandomnessPool] = {}
        self.rng = np.random.default_rng()

    # -- connection ----------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((wire.NODE_TOKEN_HEADER, f"Bearer {self.identity.node_token}"),)

    def join(self) -> str:
        """Join (or rejoin) the federation with this site's identity; return the node id."""
        reply = self.stub.Join(
            federation_pb2.JoinRequest(
                site_name=self.config.site_name,
                x25519_public_key=self.identity.x25519_public,
                ed25519_public_key=self.identity.ed25519_public,
                x25519_signature=self.identity.x25519_signature(),
                node_token=self.identity.node_token,
                enrolment_token="" if self.identity.node_token else self.config.enrolment_token,
                agent_version=AGENT_VERSION,
                capabilities=self._capabilities(),
            ),
            timeout=30,
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
                task = self._pull(stop)
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

    def _pull(self, stop: threading.Event) -> federation_pb2.Task | None:
        """One long poll, cancelled when ``stop`` is set (then None)."""
        call = self.stub.PullTask.future(
            federation_pb2.PullTaskRequest(wait_seconds=self.config.poll_seconds),
            metadata=self._metadata(),
            timeout=self.config.poll_seconds + 30,
        )
        # Woken the moment the reply lands (a task opens a round for every site at once):
        # sleeping between checks would add its interval to every round.
        answered = threading.Event()
        call.add_done_callback(lambda _call: answered.set())
        while not answered.wait(0.1):
            if stop.is_set():
                call.cancel()
                return None
        if stop.is_set():
            return None
        return call.result()

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
            self.stub.Heartbeat(
                federation_pb2.HeartbeatRequest(), metadata=self._metadata(), timeout=5
            )
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
            self.stub.RefuseTask(
                federation_pb2.TaskRefusal(
                    task_id=task.task_id,
                    run_id=task.run_id,
                    code=refusal.code,
                    reason=refusal.reason[:1000],
                ),
                metadata=self._metadata(),
                timeout=30,
            )
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
        for run_id in list(self._pools):
            self._close_randomness(run_id)
        self.channel.close()

    # -- tasks ---------------------------------------------------------------------------

    def handle(self, task: federation_pb2.Task) -> None:
        """Run one task through the site's gate and its handler; a refusal is reported."""
        handlers = {
            federation_pb2.TASK_KIND_INIT: self._init,
            federation_pb2.TASK_KIND_TRAIN: self._train,
            federation_pb2.TASK_KIND_KEYGEN: self._keygen,
            federation_pb2.TASK_KIND_AUDIT: self._audit,
        }
        handler = handlers.get(task.kind)
        if handler is None:
            log.warning("ignoring task of unknown kind %s", task.kind)
            return
        # The site's own policy and its pins of the run decide, before any handler runs.
        from client.sovereign import admit

        admit(self, task)
        handler(task)

    def _config(self, task: federation_pb2.Task) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(task.config_json or "{}")
        config["round"] = task.round
        config["run_id"] = task.run_id
        # Flower configs hold scalars: nested model settings travel as JSON text.
        config["model_config_json"] = json.dumps(config.get("model_config", {}))
        config.setdefault("lora", "")
        return config

    def _init(self, task: federation_pb2.Task) -> None:
        # INIT is sent in plaintext. Cohort's trainers always return fresh weights; any other
        # client may return what it last trained, so after training it is not asked.
        if self._trained_any and not getattr(self.client, "fresh_start_points", False):
            raise TaskRefused(
                "policy",
                "this site's client has trained since the agent started and may return "
                "trained weights: it sends initial weights only from a fresh start",
            )
        weights = self.client.get_parameters(scalar_config(self._config(task)))
        self._submit(
            task,
            wire.encode_tensors([np.asarray(w, np.float32) for w in weights]),
            wire.TENSORS_FLOAT32,
            num_examples=1,
            weight=1,
            metrics={},
        )
        self.listener("initialised", {"run_id": task.run_id, "tensors": len(weights)})

    def _keygen(self, task: federation_pb2.Task) -> None:
        """Custodian: make the run's Paillier key here, seal it to pinned sites, sign the deal.

        Only participants whose identity this site pinned, and whose sealing key that
        identity signed, get the key (client/keys.py); fewer than the policy's minimum and
        the task is refused before any key is made.
        """
        recipients, refused = keys.trusted_recipients(task.participants, self.identity, self.peers)
        for reason in refused:
            log.warning("run %s: not sealing the key to %s", task.run_id, reason)
        if task.threshold:
            self._deal_threshold(task, recipients, refused)
            return
        keys.check_enough(task.run_id, recipients, self.config.policy, refused)
        bits = int(task.encoding.key_bits) or 2048
        if bits < self.config.policy.min_key_bits:
            raise TaskRefused(
                "policy",
                f"the run asks for a {bits}-bit key; this site deals keys of at least "
                f"{self.config.policy.min_key_bits} bits (COHORT_MIN_KEY_BITS)",
            )
        started = time.perf_counter()
        public_key, private_key = crypto.generate_keypair(bits, insecure_test_size=bits < 2048)
        private_bytes = crypto.private_key_to_bytes(private_key)
        public_bytes = crypto.public_key_to_bytes(public_key)
        fingerprint = crypto.key_fingerprint(public_key)
        bundle = federation_pb2.KeyBundle(
            task_id=task.task_id,
            run_id=task.run_id,
            public_key=public_bytes,
            key_fingerprint=fingerprint,
            key_bits=public_key.n.bit_length(),
        )
        for recipient in recipients:
            sealed = crypto.seal(
                recipient.x25519_public, private_bytes, self._key_context(task.run_id, fingerprint)
            )
            bundle.sealed.add(node_id=recipient.node_id, sealed_private_key=sealed)
        bundle.statement.CopyFrom(
            keys.deal(
                task.run_id, fingerprint, self.identity, recipients, self.config.policy, refused
            )
        )
        self.stub.SubmitKeys(bundle, metadata=self._metadata(), timeout=60)
        self._run_keys[task.run_id] = (public_key, private_key)
        prewarm.warm_crypto(self.config.encrypt_workers)
        self.listener(
            "keygen",
            {
                "run_id": task.run_id,
                "fingerprint": fingerprint,
                "seconds": time.perf_counter() - started,
                "sealed_for": len(recipients),
            },
        )
        log.info("run %s key fingerprint %s (compare out of band)", task.run_id, fingerprint)

    def _deal_threshold(
        self, task: federation_pb2.Task, recipients: list[keys.Recipient], refused: list[str]
    ) -> None:
        """Custodian of a t-of-n run: deal the shares and erase the key (client/threshold.py)."""
        from client import threshold

        started = time.perf_counter()
        bundle = threshold.deal(self, task, recipients, refused)
        self.stub.SubmitKeys(bundle, metadata=self._metadata(), timeout=60)
        self.listener(
            "keygen",
            {
                "run_id": task.run_id,
                "fingerprint": bundle.key_fingerprint,
                "seconds": time.perf_counter() - started,
                "sealed_for": len(bundle.sealed),
                "threshold": task.threshold,
            },
        )

    @staticmethod
    def _key_context(run_id: str, fingerprint: str) -> bytes:
        # Binds a sealed key to its run and public key: a blob replayed for another run fails.
        return f"cohort/run-key/{run_id}/{fingerprint}".encode()

    def run_keys(self, task: federation_pb2.Task) -> tuple[Any, Any]:
        """Open (once) the run's private key sealed to this site, and check it is the run's."""
        if task.run_id in self._run_keys:
            return self._run_keys[task.run_id]
        if task.threshold:
            # t-of-n: this site holds a share, never the private key (client/threshold.py).
            from client import threshold

            key = threshold.open_key(self, task)
            self._threshold_keys[task.run_id] = key
            self._run_keys[task.run_id] = (key.public_key, None)
            self.listener(
                "key", {"run_id": task.run_id, "fingerprint": task.encoding.key_fingerprint}
            )
            return self._run_keys[task.run_id]
        if not task.sealed_private_key:
            raise AgentError(f"no sealed key for this site in run {task.run_id}")
        public_key = crypto.public_key_from_bytes(bytes(task.encoding.public_key))
        if public_key.n.bit_length() < self.config.policy.min_key_bits - 1:
            raise TaskRefused(
                "policy",
                f"the run's key has {public_key.n.bit_length()} bits; this site accepts keys of "
                f"at least {self.config.policy.min_key_bits} bits (COHORT_MIN_KEY_BITS)",
            )
        fingerprint = crypto.key_fingerprint(public_key)
        if fingerprint != task.encoding.key_fingerprint:
            raise AgentError("the run's public key does not match its announced fingerprint")
        # The key is opened only as a trusted, pinned custodian dealt it to this identity.
        dealing = keys.check_statement(
            task, fingerprint, self.identity, self.peers, self.config.policy
        )
        if dealing.threshold:  # a coordinator that drops the task's threshold
            raise TaskRefused(
                "verify", f"run {task.run_id}'s key was dealt {dealing.threshold}-of-n shares"
            )
        try:
            private_bytes = crypto.open_sealed(
                self.identity.x25519_private,
                bytes(task.sealed_private_key),
                self._key_context(task.run_id, fingerprint),
            )
        except ValueError as exc:
            raise AgentError(
                f"the sealed run key does not open with this site's key: {exc}"
            ) from exc
        private_key = crypto.private_key_from_bytes(private_bytes, public_key)
        self._run_keys[task.run_id] = (public_key, private_key)
        prewarm.warm_crypto(self.config.encrypt_workers)  # ready by the first aggregate
        self.listener("key", {"run_id": task.run_id, "fingerprint": fingerprint})
        log.info("run %s key fingerprint %s (compare out of band)", task.run_id, fingerprint)
        return public_key, private_key

    def fetch(self, run_id: str, sha256: str) -> bytes:
        """Download a model or aggregate blob (at most ``max_download_bytes``, hash checked)."""
        chunks = self.stub.FetchModel(
            federation_pb2.FetchModelRequest(run_id=run_id, sha256=sha256),
            metadata=self._metadata(),
            timeout=300,
        )
        return wire.join_chunks(chunks, max_size=self.config.max_download_bytes)

    def _tensors(self, run_id: str, sha256: str) -> list[np.ndarray]:
        if sha256 not in self._models:
            self._models = {sha256: wire.decode_tensors(self.fetch(run_id, sha256))}
        return [a.copy() for a in self._models[sha256]]

    def global_model(self, task: federation_pb2.Task) -> list[np.ndarray]:
        """The round's global weights: fetched (plaintext) or rebuilt from aggregates (secure)."""
        if task.secure != common_pb2.SECURE_SCHEME_PAILLIER:
            return self._tensors(task.run_id, task.model_sha256)
        public_key, private_key = self.run_keys(task)
        config = self._config(task)
        state = self._secure_state.get(task.run_id)
        if state is None or state.applied_round > (
            task.aggregates[-1].round if task.aggregates else 0
        ):
            initial = self._tensors(task.run_id, task.model_sha256)
            optimiser = ServerOptimiser(
                strategy=str(config.get("strategy", "fedavg")),
                server_lr=float(config.get("server_lr", 1.0)),
            )
            state = SecureModelState(flatten(initial), initial, optimiser)
            self._secure_state[task.run_id] = state
        codec = codec_for(task.encoding, public_key)
        from client.sovereign import checked_aggregate

        # Site-level DP (client/dp_site_scheme.py): its own layout; None for other runs.
        layout = dp_site_scheme.run_layout(
            self.privacy, task, config, state.weights.size, public_key.n.bit_length()
        )
        for aggregate in task.aggregates:
            if aggregate.round <= state.applied_round:
                continue
            payload = checked_aggregate(self, task, aggregate, public_key)
            if layout is not None:  # site-level DP: no sum of fewer than the quorum is decrypted
                dp_site_scheme.check_contributions(aggregate, layout)
            sums = self._threshold_sums(task, aggregate, payload) if private_key is None else None
            try:
                if layout is not None:  # site-level DP: the noisy sum's mean over the sites
                    mean = dp_site_scheme.decode_aggregate(
                        layout, aggregate, payload, private_key, sums
                    )
                else:
                    codec.check_total_weight(int(aggregate.total_weight))
                    mean = (
                        decrypt_aggregate(
                            payload,
                            codec,
                            private_key,
                            int(aggregate.total_weight),
                            int(aggregate.count),
                            clip=state.clip_for(codec),
                        )
                        if sums is None
                        else codec.decode(
                            sums,
                            int(aggregate.total_weight),
                            int(aggregate.count),
                            state.clip_for(codec),
                        )
                    )
            except (OverflowError, ValueError, ArithmeticError) as exc:
                # Signed by enough sites, yet it does not decode: one of them sent garbage.
                # A failed task, never a dead agent (every later task carries this round).
                raise TaskRefused(
                    "decode", f"the aggregate of round {aggregate.round} does not decode: {exc}"
                ) from exc
            state.weights = state.optimiser.step(state.weights, mean)
            state.carry_bounds(mean, codec)  # every site derives the next round's clip bounds alike
            state.applied_round = aggregate.round
        return state.arrays()

    def _threshold_sums(
        self, task: federation_pb2.Task, aggregate: federation_pb2.AggregateRef, payload: bytes
    ) -> list[int]:
        """A t-of-n run's plaintext sums of a checked aggregate, from t verified partials."""
        from client import threshold_partials

        key = self._threshold_keys[task.run_id]
        width = crypto.ciphertext_width(key.public_key)
        ciphertexts = crypto.ciphertexts_from_bytes(payload, width)
        return threshold_partials.decrypt(
            self, task, key, int(aggregate.round), aggregate.sha256, ciphertexts
        )

    def _train(self, task: federation_pb2.Task) -> None:
        config = self._config(task)
        # Budget first: a refused round touches none of this site's data.
        privacy = self.privacy.before_round(task, config, self.client)
        if privacy is not None:
            self._submit_ledger(task.run_id, privacy.entry)
        started = time.perf_counter()
        weights = self.global_model(task)
        fetched = time.perf_counter()
        flower_config = scalar_config(config)
        metrics: dict[str, Any] = {}
        try:
            loss, n_eval, eval_metrics = self.client.evaluate(weights, flower_config)
            metrics.update({"eval_loss": float(loss), "eval_examples": int(n_eval)})
            metrics.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        except NotImplementedError:
            pass
        secure = task.secure == common_pb2.SECURE_SCHEME_PAILLIER
        if secure:
            public_key, private_key = self.run_keys(task)
            codec = codec_for(task.encoding, public_key)
            needed = codec.num_plaintexts(int(sum(np.prod(w.shape) for w in weights)))
            pool = self._randomness(task.run_id, public_key, private_key, needed)
        fit_started = time.perf_counter()
        # From here the local weights hold this site's data: no INIT of this run is answered.
        self.pins.mark_trained(task.run_id)
        self._trained_any = True
        if privacy is not None and privacy.plan.mode == "record":
            fit_private = self.client.fit_private  # type: ignore[attr-defined]
            new_weights, num_examples, fit_metrics = fit_private(weights, flower_config, privacy)
        else:
            new_weights, num_examples, fit_metrics = self.client.fit(weights, flower_config)
        if privacy is not None:
            fit_metrics = {**fit_metrics, **self.privacy.after_round(privacy)}
        metrics.update({k: v for k, v in fit_metrics.items()})
        trained = time.perf_counter()
        deltas = [
            np.asarray(n, np.float64) - np.asarray(w, np.float64)
            for n, w in zip(new_weights, weights, strict=True)
        ]
        proof = b""  # secure runs: crypto.plaintext_proof of the update
        if secure and privacy is not None and privacy.plan.mode == "site":
            # Site-level DP (client/dp_site_scheme.py): clipped, noised, weight 1 per site.
            weight = 1
            payload, proof = dp_site_scheme.encode_update(
                flatten(deltas),
                privacy.noise,  # type: ignore[union-attr]
                public_key,
                private_key,
                run_id=task.run_id,
                round_number=task.round,
                site=self.config.site_name,
                pool=pool,
            )
            encoding = wire.PAILLIER_PACKED
            if task.round < int(config.get("rounds", 0)):
                pool.start(privacy.noise.num_plaintexts)  # type: ignore[union-attr]
            else:
                self._close_randomness(task.run_id)
        elif secure:
            weight = max(1, min(int(num_examples), int(config.get("weight_cap", 1))))
            clip = self._secure_state[task.run_id].clip_for(codec)
            metrics.update(clip_metrics(flatten(deltas), codec, clip))
            payload, proof = encrypt_proven_update(
                flatten(deltas),
                weight,
                codec,
                public_key,
                private_key,
                self.rng,
                run_id=task.run_id,
                round_number=task.round,
                site=self.config.site_name,
                pool=pool,
                clip=clip,
            )
            encoding = wire.PAILLIER_PACKED
            if task.round < int(config.get("rounds", 0)):
                pool.start(needed)  # next round's obfuscators, made while others train
            else:
                self._close_randomness(task.run_id)
        elif (bits := wire.update_quantisation(config)) is not None:
            weight = int(num_examples)
            payload = wire.encode_tensors(crypto.compress_update(deltas, bits, self.rng))
            encoding = wire.TENSORS_Q8
        else:
            weight = int(num_examples)
            payload = wire.encode_tensors([d.astype(np.float32) for d in deltas])
            encoding = wire.TENSORS_FLOAT32
        encrypted = time.perf_counter()
        # Where a round's time goes at this site: getting the global model (fetching, and
        # in secure runs decrypting the aggregate), local training, encoding/encrypting.
        metrics.update(
            {
                "model_seconds": fetched - started,
                "train_seconds": trained - fit_started,
                "encode_seconds": encrypted - trained,
            }
        )
        self._submit(
            task,
            payload,
            encoding,
            num_examples=int(num_examples),
            weight=weight,
            metrics=metrics,
            proof=proof,
        )
        self.listener(
            "trained",
            {"run_id": task.run_id, "round": task.round, "bytes": len(payload), "metrics": metrics},
        )

    def _submit_ledger(self, run_id: str, entry: Any) -> None:
        """Send the coordinator a copy of a signed ledger entry (the report verifies it)."""
        from client.ledger import canonical

        self.stub.LedgerSubmit(
            federation_pb2.LedgerEntry(
                run_id=run_id, statement=canonical(entry.statement), signature=entry.signature
            ),
            metadata=self._metadata(),
            timeout=30,
        )
        self.listener("privacy", {"run_id": run_id, "statement": entry.statement})

    def _randomness(
        self, run_id: str, public_key: Any, private_key: Any, needed: int
    ) -> crypto.RandomnessPool:
        """The run's pool of precomputed obfuscators, topped up to ``needed`` in the background.

        Training runs while the pool's workers compute ``r^n``; after each submission the
        next round's share is queued, so encryption waits on nothing once training ends.
        """
        pool = self._pools.get(run_id)
        if pool is None:
            pool = crypto.RandomnessPool(
                public_key, private_key, workers=self.config.encrypt_workers
            )
            self._pools[run_id] = pool
            pool.start(needed)
        return pool

    def _close_randomness(self, run_id: str) -> None:
        pool = self._pools.pop(run_id, None)
        if pool is not None:
            pool.close()

    def _submit(
        self,
        task: federation_pb2.Task,
        payload: bytes,
        encoding: str,
        *,
        num_examples: int,
        weight: int,
        metrics: dict[str, Any],
        proof: bytes = b"",
    ) -> None:
        header = federation_pb2.UpdateHeader(
            task_id=task.task_id,
            run_id=task.run_id,
            round=task.round,
            num_examples=num_examples,
            weight=weight,
            metrics=wire.metrics_to_proto(metrics),
            payload_size=len(payload),
            payload_sha256=wire.sha256_hex(payload),
            encoding=encoding,
            key_id=task.encoding.key_id,
            base_model_sha256=str(getattr(self.client, "base_model_hash", "") or ""),
            plaintext_proof=proof,
        )
        # The site vouches for exactly this update: the coordinator can relay it, not forge,
        # alter or re-weight it, nor count it for another run or round.
        header.signature = self.identity.sign(
            site_identity.update_statement(
                run_id=task.run_id,
                round_number=task.round,
                site_name=self.config.site_name,
                payload_sha256=header.payload_sha256,
                weight=weight,
                key_id=task.encoding.key_id,
                encoding=encoding,
                proof_sha256=hashlib.sha256(proof).hexdigest() if proof else "",
            )
        )

        def messages() -> Iterator[federation_pb2.UpdateMessage]:
            yield federation_pb2.UpdateMessage(header=header)
            for _, piece in wire.iter_chunks(payload):
                if piece:
                    yield federation_pb2.UpdateMessage(data=piece)

        self.stub.SubmitUpdate(messages(), metadata=self._metadata(), timeout=600)

    def _audit(self, task: federation_pb2.Task) -> None:
        """SHAP audit of the final model on held-out rows, with the model's score on them.

        Only the summary leaves: aggregate attributions and the held-out metrics. A site
        that cannot audit says so (a refusal the run shows), so the run need not wait for
        its audit deadline.
        """
        from dataclasses import replace

        from client.audit import run_site_audit

        weights = self.global_model(task)
        # A DP run's summary is noised and charged first (client/dp_audit.py); else None.
        privacy = self.privacy.before_audit(task, self.client)
        if privacy is not None:
            self._submit_ledger(task.run_id, privacy.entry)
        try:
            if privacy is not None:
                from client.dp_audit import private_site_audit

                summary = private_site_audit(
                    self.client,
                    weights,
                    site=self.config.site_name,
                    rows=self.config.audit_rows,
                    seed=self.config.seed,
                    multiplier=privacy.noise_multiplier,
                )
            else:
                summary = run_site_audit(
                    self.client,
                    weights,
                    site=self.config.site_name,
                    rows=self.config.audit_rows,
                    seed=self.config.seed,
                )
        except (ValueError, RuntimeError, TypeError) as exc:
            raise TaskRefused("error", f"the audit failed at this site: {exc}") from exc
        if summary is None:
            self.listener("audit_skipped", {"run_id": task.run_id})
            raise TaskRefused("error", "this site's client offers no audit hook")
        holdout = self._holdout_metrics(weights, task)
        if holdout:
            summary = replace(summary, holdout_metrics=holdout)
        self.stub.SubmitAudit(
            federation_pb2.AuditSubmission(
                task_id=task.task_id, run_id=task.run_id, summary_json=summary.to_json()
            ),
            metadata=self._metadata(),
            timeout=60,
        )
        self.listener(
            "audited", {"run_id": task.run_id, "rows": summary.row_count, "holdout": holdout}
        )

    def _holdout_metrics(
        self, weights: list[np.ndarray], task: federation_pb2.Task
    ) -> dict[str, float]:
        """The final model scored by the client's own ``evaluate`` on its held-out rows."""
        try:
            loss, examples, metrics = self.client.evaluate(
                weights, scalar_config(self._config(task))
            )
        except NotImplementedError:
            return {}
        numbers = {
            str(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
        }
        if np.isfinite(loss):
            numbers["loss"] = float(loss)
        numbers["examples"] = float(examples)
        return dict(list(numbers.items())[:32])

    def final_model_task(self, run_id: str) -> federation_pb2.Task:
        """Where a run's final model comes from, checked against this site's run pins.

        What a site exports or serves must be the run it took part in: the same scheme,
        model, sites, key and initial model as it pinned while training.

        Raises
        ------
        AgentError
            If this site never joined from this state folder.
        TaskRefused
            If the reply disagrees with the site's policy or the run's pins.
        """
        if not self.identity.node_token:
            # Joining here would make a new node that the scheduler could pick for a round.
            raise AgentError(
                f"site {self.config.site_name} has not joined the federation from "
                f"{self.config.state_dir}: use the agent's --state-dir"
            )
        from client.sovereign import admit

        task = self.stub.GetFinalModel(
            federation_pb2.FinalModelRequest(run_id=run_id), metadata=self._metadata(), timeout=60
        )
        admit(self, task)
        return task

    def export_model(self, run_id: str) -> list[np.ndarray]:
        """Final weights of a run, decrypted here for secure runs (`cohort client export-model`)."""
        return self.global_model(self.final_model_task(run_id))
