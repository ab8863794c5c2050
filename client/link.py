"""A site's typed link to the coordinator: every Federation call a site makes, in one place.

The agent (client/agent.py), the load benchmark's sites (bench/load_sites.py) and the
tests' fake sites (tests/fuzzing.py) call the coordinator through :class:`Link`: the node
token travels as metadata on every call, each call has its deadline here
(:class:`Timeouts`), and an update's header and chunk stream (with the site's signature
over it) are built only by :func:`update_header` and :func:`update_messages`.
The threshold steps (client/threshold_partials.py) still call the stub the link wraps.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from client.receipts import ReceiptBook
from client.site import AgentConfig, AgentError
from crypto import identity
from protos import federation_pb2, federation_pb2_grpc, wire
from protos.transport import open_channel


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


def connect(config: AgentConfig, closing: threading.Event) -> grpc.Channel:
    """The agent's channel: TLS or loopback, receipts of every reply, no calls once closing."""
    channel = open_channel(
        config.coordinator,
        ca_file=config.ca_file,
        insecure=config.insecure,
        options=config.channel_options,
    )
    channel = ReceiptBook.for_site(config.state_dir, config.site_name).attach(channel)
    return grpc.intercept_channel(channel, _StopGuard(closing))


@dataclass(frozen=True)
class Timeouts:
    """Deadline of each call, in seconds (a long poll waits ``pull_margin`` past its wait)."""

    join: float = 30.0
    pull_margin: float = 30.0
    heartbeat: float = 5.0
    refuse: float = 30.0
    fetch: float = 300.0
    submit: float = 600.0
    keys: float = 60.0
    audit: float = 60.0
    ledger: float = 30.0
    final_model: float = 60.0

    @classmethod
    def every(cls, seconds: float) -> Timeouts:
        """The same deadline for every call (the load benchmark's sites)."""
        return cls(**{name: seconds for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Update:
    """One update a site sends for a task: its bytes and what the header says of them."""

    payload: bytes
    encoding: str
    num_examples: int
    weight: int
    metrics: dict[str, Any] = field(default_factory=dict)
    proof: bytes = b""  # secure runs: crypto.plaintext_proof of the update
    base_model_sha256: str = ""


Signer = Callable[[bytes], bytes]
"""Signs a statement with the site's Ed25519 key (client.custody.SiteIdentity.sign)."""


def update_header(
    task: federation_pb2.Task,
    update: Update,
    *,
    site_name: str = "",
    sign: Signer | None = None,
) -> federation_pb2.UpdateHeader:
    """The header of ``update`` for ``task``, signed when ``sign`` is given.

    The signature (crypto.identity.update_statement) lets the coordinator relay the
    update, never forge, alter or re-weight it, nor count it for another run or round.
    """
    header = federation_pb2.UpdateHeader(
        task_id=task.task_id,
        run_id=task.run_id,
        round=task.round,
        num_examples=update.num_examples,
        weight=update.weight,
        metrics=wire.metrics_to_proto(update.metrics),
        payload_size=len(update.payload),
        payload_sha256=wire.sha256_hex(update.payload),
        encoding=update.encoding,
        key_id=task.encoding.key_id,
        base_model_sha256=update.base_model_sha256,
        plaintext_proof=update.proof,
    )
    if sign is not None:
        header.signature = sign(
            identity.update_statement(
                run_id=task.run_id,
                round_number=task.round,
                site_name=site_name,
                payload_sha256=header.payload_sha256,
                weight=update.weight,
                key_id=task.encoding.key_id,
                encoding=update.encoding,
                proof_sha256=hashlib.sha256(update.proof).hexdigest() if update.proof else "",
            )
        )
    return header


def update_messages(
    header: federation_pb2.UpdateHeader, pieces: Iterable[bytes]
) -> Iterator[federation_pb2.UpdateMessage]:
    """The SubmitUpdate stream: the header, then each non-empty piece of the payload."""
    yield federation_pb2.UpdateMessage(header=header)
    for piece in pieces:
        if piece:
            yield federation_pb2.UpdateMessage(data=piece)


def payload_pieces(payload: bytes) -> Iterator[bytes]:
    """``payload`` cut into the wire's chunk size (protos.wire.iter_chunks)."""
    return (piece for _, piece in wire.iter_chunks(payload))


class Link:
    """The Federation stub with this site's token and deadlines on every call.

    ``token`` is read at each call: a site that joins again gets a new one.
    """

    def __init__(
        self,
        stub: federation_pb2_grpc.FederationStub,
        token: Callable[[], str],
        *,
        site_name: str = "",
        sign: Signer | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.stub = stub
        self.token = token
        self.site_name = site_name
        self.sign = sign
        self.timeouts = timeouts or Timeouts()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The node token as gRPC metadata (protos.wire.NODE_TOKEN_HEADER)."""
        return ((wire.NODE_TOKEN_HEADER, f"Bearer {self.token()}"),)

    def join(self, request: federation_pb2.JoinRequest) -> federation_pb2.JoinReply:
        """Join (or rejoin) the federation; the only call without a node token."""
        reply: federation_pb2.JoinReply = self.stub.Join(request, timeout=self.timeouts.join)
        return reply

    def pull(self, wait_seconds: float) -> federation_pb2.Task:
        """One long poll for a task (TASK_KIND_NONE when none came within the wait)."""
        task: federation_pb2.Task = self.stub.PullTask(
            federation_pb2.PullTaskRequest(wait_seconds=wait_seconds),
            metadata=self.metadata(),
            timeout=wait_seconds + self.timeouts.pull_margin,
        )
        return task

    def pull_or_stop(
        self, wait_seconds: float, stop: threading.Event
    ) -> federation_pb2.Task | None:
        """:meth:`pull`, cancelled the moment ``stop`` is set (then None)."""
        call = self.stub.PullTask.future(
            federation_pb2.PullTaskRequest(wait_seconds=wait_seconds),
            metadata=self.metadata(),
            timeout=wait_seconds + self.timeouts.pull_margin,
        )
        # Woken the moment the reply lands (a task opens a round for every site at once):
        # sleeping between checks would add its interval to every round.
        answered = threading.Event()
        call.add_done_callback(lambda _call: answered.set())
        while not answered.wait(0.1):
            if stop.is_set():
                call.cancel()
                return None
        return None if stop.is_set() else call.result()

    def heartbeat(self) -> None:
        """Tell the coordinator this site is alive while a task keeps it from polling."""
        self.stub.Heartbeat(
            federation_pb2.HeartbeatRequest(),
            metadata=self.metadata(),
            timeout=self.timeouts.heartbeat,
        )

    def refuse(self, task: federation_pb2.Task, code: str, reason: str) -> None:
        """Report that this site refuses ``task`` (the reason cut to 1,000 characters)."""
        self.stub.RefuseTask(
            federation_pb2.TaskRefusal(
                task_id=task.task_id, run_id=task.run_id, code=code, reason=reason[:1000]
            ),
            metadata=self.metadata(),
            timeout=self.timeouts.refuse,
        )

    def fetch(self, run_id: str, sha256: str, max_bytes: int | None = None) -> bytes:
        """Download a model or aggregate blob: at most ``max_bytes``, its sha256 checked."""
        chunks = self.stub.FetchModel(
            federation_pb2.FetchModelRequest(run_id=run_id, sha256=sha256),
            metadata=self.metadata(),
            timeout=self.timeouts.fetch,
        )
        return wire.join_chunks(chunks, max_size=max_bytes, expected_sha256=sha256)

    def header(self, task: federation_pb2.Task, update: Update) -> federation_pb2.UpdateHeader:
        """:func:`update_header` as this site (signed when the link has a signer)."""
        return update_header(task, update, site_name=self.site_name, sign=self.sign)

    def submit_update(
        self, task: federation_pb2.Task, update: Update
    ) -> federation_pb2.SubmitReply:
        """Stream ``update`` for ``task``: this site's header, then the payload's chunks."""
        return self.send(self.header(task, update), payload_pieces(update.payload))

    def send(
        self, header: federation_pb2.UpdateHeader, pieces: Iterable[bytes]
    ) -> federation_pb2.SubmitReply:
        """Stream ``header`` and ``pieces`` as they are (tests send malformed ones)."""
        reply: federation_pb2.SubmitReply = self.stub.SubmitUpdate(
            update_messages(header, pieces),
            metadata=self.metadata(),
            timeout=self.timeouts.submit,
        )
        return reply

    def submit_keys(self, bundle: federation_pb2.KeyBundle) -> None:
        """Hand the coordinator a run's key bundle (public key, sealed keys or shares)."""
        self.stub.SubmitKeys(bundle, metadata=self.metadata(), timeout=self.timeouts.keys)

    def submit_audit(self, task: federation_pb2.Task, summary_json: str) -> None:
        """Send an audit task's attribution summary."""
        self.stub.SubmitAudit(
            federation_pb2.AuditSubmission(
                task_id=task.task_id, run_id=task.run_id, summary_json=summary_json
            ),
            metadata=self.metadata(),
            timeout=self.timeouts.audit,
        )

    def submit_ledger(self, run_id: str, statement: bytes, signature: bytes) -> None:
        """Send a copy of a signed privacy-ledger entry (the report verifies it)."""
        self.stub.LedgerSubmit(
            federation_pb2.LedgerEntry(run_id=run_id, statement=statement, signature=signature),
            metadata=self.metadata(),
            timeout=self.timeouts.ledger,
        )

    def final_model(self, run_id: str) -> federation_pb2.Task:
        """Where a run's final model comes from (a task-shaped reply, checked by the caller)."""
        task: federation_pb2.Task = self.stub.GetFinalModel(
            federation_pb2.FinalModelRequest(run_id=run_id),
            metadata=self.metadata(),
            timeout=self.timeouts.final_model,
        )
        return task
