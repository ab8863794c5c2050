"""Update intake limits: bounded header fields, declared sizes, one stream per task, rejections.

An update stream is the one call where a site sends the coordinator many bytes. Everything
here runs before a byte of payload is buffered: a header that names oversized ids, or a
secure update whose declared size differs from what the run's key and model need, is
refused at once, and a site cannot open a second stream for a task that is being received
or hold more than a few streams open at once (issue 11, item 8).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from coordinator import auditlog
from coordinator.errors import CohortError, InvalidArgument, ResourceExhausted
from coordinator.hub import Hub
from coordinator.schema import Run, Task, TaskKind
from coordinator.schemes import scheme_of
from protos import federation_pb2

# Widest value each header field can honestly hold (uuid ids, sha256 hex, key ids).
FIELD_LIMITS: dict[str, int] = {
    "task_id": 64,
    "run_id": 64,
    "payload_sha256": 64,
    "base_model_sha256": 64,
    "encoding": 32,
    "key_id": 128,
}
MAX_METRICS = 64
MAX_METRIC_NAME = 64
MAX_METRIC_TEXT = 256
MAX_SIGNATURE_BYTES = 128
# Update streams one node may have open at once (its own tasks are one per round).
MAX_STREAMS_PER_NODE = 2


MAX_PROOF_BYTES = 16_384
"""A crypto.plaintext_proof for an 8192-bit key is under 8 KiB; twice that is generous."""


def check_header_fields(header: federation_pb2.UpdateHeader) -> None:
    """INVALID_ARGUMENT for any header field wider than it can honestly be.

    Runs before anything is looked up or logged, so an oversized id never reaches the
    database or the audit log.
    """
    for name, limit in FIELD_LIMITS.items():
        value = getattr(header, name)
        if len(value) > limit:
            raise InvalidArgument(
                f"update header {name} is {len(value)} characters; at most {limit} are allowed"
            )
    if len(header.signature) > MAX_SIGNATURE_BYTES:
        raise InvalidArgument(f"update signature is over {MAX_SIGNATURE_BYTES} bytes")
    if len(header.plaintext_proof) > MAX_PROOF_BYTES:
        raise InvalidArgument(f"update plaintext_proof is over {MAX_PROOF_BYTES} bytes")
    if len(header.metrics) > MAX_METRICS:
        raise InvalidArgument(f"an update may report at most {MAX_METRICS} metrics")
    for key, value in header.metrics.items():
        if len(key) > MAX_METRIC_NAME:
            raise InvalidArgument(f"metric names are at most {MAX_METRIC_NAME} characters")
        if value.WhichOneof("value") == "text" and len(value.text) > MAX_METRIC_TEXT:
            raise InvalidArgument(f"metric {key!r} is over {MAX_METRIC_TEXT} characters")


def check_declared_size(run: Run, task: Task, header: federation_pb2.UpdateHeader) -> None:
    """INVALID_ARGUMENT when a TRAIN update declares a size its run cannot produce.

    Secure runs: exactly the ciphertexts of the model. Plaintext runs: at most the
    model's tensors at 8 bytes a value, so a stream never buffers more than that.
    """
    if task.kind == TaskKind.TRAIN:
        scheme_of(run).check_declared_size(run, header)


def receive(
    header: federation_pb2.UpdateHeader, messages: Iterable[federation_pb2.UpdateMessage]
) -> bytes:
    """The payload after the header, never more than the (already checked) declared size."""
    parts: list[bytes] = []
    size = 0
    for message in messages:
        if message.WhichOneof("msg") != "data":
            raise InvalidArgument("only one header per update; the rest must be data")
        size += len(message.data)
        if size > header.payload_size:
            raise InvalidArgument(
                f"update is longer than the {header.payload_size} bytes its header announced"
            )
        parts.append(message.data)
    payload = b"".join(parts)
    if len(payload) != header.payload_size:
        raise InvalidArgument(f"update ended after {len(payload)} of {header.payload_size} bytes")
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise InvalidArgument("update payload does not match its sha256 (chunk lost or changed)")
    return payload


class UpdateIntake:
    """Open update streams (one per task, a few per node) and rate-limited rejection rows."""

    def __init__(self, hub: Hub, max_streams_per_node: int = MAX_STREAMS_PER_NODE) -> None:
        self.hub = hub
        self.max_streams_per_node = max_streams_per_node
        self._lock = threading.Lock()
        self._tasks: set[str] = set()
        self._per_node: dict[str, int] = {}
        self.throttle = auditlog.RowThrottle(interval=1.0)

    @contextmanager
    def stream(self, node_id: str, task_id: str) -> Iterator[None]:
        """Hold the task's one stream slot while its update is received and stored."""
        with self._lock:
            if task_id in self._tasks:
                raise ResourceExhausted(
                    f"an update for task {task_id} is already being received; "
                    "send one stream per task"
                )
            if self._per_node.get(node_id, 0) >= self.max_streams_per_node:
                raise ResourceExhausted(
                    f"this node already has {self.max_streams_per_node} update streams open"
                )
            self._tasks.add(task_id)
            self._per_node[node_id] = self._per_node.get(node_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._tasks.discard(task_id)
                left = self._per_node.get(node_id, 1) - 1
                if left > 0:
                    self._per_node[node_id] = left
                else:
                    self._per_node.pop(node_id, None)

    def log_rejection(
        self, node_id: str, header: federation_pb2.UpdateHeader, exc: CohortError
    ) -> None:
        """One "update.rejected" row per node a second at most, saying how many were held."""
        held = self.throttle.admit("update.rejected", node_id)
        if held is None:
            return
        details: dict[str, object] = {
            "round": header.round,
            "status": exc.code.name,
            "reason": str(exc),
        }
        if held:
            details["similar_rows_held_back"] = held
        with self.hub.lock, self.hub.db.transaction() as session:
            auditlog.append(
                session,
                "update.rejected",
                run_id=header.run_id if len(header.run_id) <= 36 else "",
                actor=node_id,
                details=details,
            )
