"""Anchor the audit log at the sites: every unary reply to a site carries the log's head.

Sites keep these (seq, hash) receipts (client.receipts); `cohort audit verify --receipts`
then proves that no row a site was shown was later changed, removed or cut off. Done in
one server interceptor so every Federation reply that has a ``log_head`` field gets one,
whichever domain function made it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from sqlalchemy import event
from sqlalchemy.orm import Session

from coordinator import auditlog
from coordinator.db import Database
from coordinator.hub import Hub
from coordinator.schema import AuditEvent
from protos import common_pb2

FEDERATION_PREFIX = "/cohort.v1.Federation/"


def current_head(hub: Hub) -> common_pb2.LogHead:
    """The committed head of the log now (rows still in another transaction are not in it)."""
    with hub.db.transaction() as session:
        seq, digest = auditlog.head(session)
    return common_pb2.LogHead(seq=seq, hash=digest)


_NEW_ROWS = "cohort_new_audit_rows"


class CommittedHead:
    """The log's committed head, kept as transactions commit rows, read with no query.

    Stamping every reply used to cost a transaction and a query each (a fifth of the
    coordinator's CPU per update at 100 sites, issue 14). The rows this process appends
    are seen at flush and published only after COMMIT, so the head a reply carries is
    never a row that could still roll back; the first read asks the database (rows of an
    earlier process). The coordinator's process owns the database (coordinator.hub), so
    no other writer can move the head behind this cache's back.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None
        event.listen(db.sessions, "after_flush", self._collect)
        event.listen(db.sessions, "after_commit", self._publish)
        event.listen(db.sessions, "after_soft_rollback", self._forget)

    @staticmethod
    def _collect(session: Session, _context: object) -> None:
        rows = [obj for obj in session.new if isinstance(obj, AuditEvent)]
        if rows:
            last = max(rows, key=lambda row: row.seq)
            held = session.info.get(_NEW_ROWS)
            if held is None or last.seq > held[0]:
                session.info[_NEW_ROWS] = (int(last.seq), str(last.hash))

    def _publish(self, session: Session) -> None:
        row = session.info.pop(_NEW_ROWS, None)
        if row is not None:
            with self._lock:
                if self._head is not None and row[0] > self._head[0]:
                    self._head = row

    @staticmethod
    def _forget(session: Session, _previous: object) -> None:
        session.info.pop(_NEW_ROWS, None)

    def get(self) -> tuple[int, str]:
        """The latest committed (seq, hash), read from the database only the first time."""
        with self._lock:
            if self._head is not None:
                return self._head
        with self.db.transaction() as session:
            head = auditlog.head(session)
        with self._lock:
            # A row committed while we read is newer than what we read: keep the newer.
            if self._head is None or head[0] > self._head[0]:
                self._head = head
            return self._head


def stamp(hub: Hub, reply: Any, head: CommittedHead | None = None) -> Any:
    """Set ``reply.log_head`` where the message has that field; return the reply."""
    if reply is not None and "log_head" in reply.DESCRIPTOR.fields_by_name:
        if head is None:
            reply.log_head.CopyFrom(current_head(hub))
        else:
            seq, digest = head.get()
            reply.log_head.seq = seq
            reply.log_head.hash = digest
    return reply


class AnchorReplies(grpc.ServerInterceptor):
    """Stamp the log head on each unary Federation reply (Join, PullTask, Submit*, …)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.head = CommittedHead(hub.db)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap unary Federation handlers so their replies carry the log head."""
        handler = continuation(handler_call_details)
        if (
            handler is None
            or handler.response_streaming
            or not handler_call_details.method.startswith(FEDERATION_PREFIX)
        ):
            return handler
        hub, head = self.hub, self.head
        if handler.request_streaming:
            inner: Callable[..., Any] = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return stamp(hub, inner(requests, context), head)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        unary: Callable[..., Any] = handler.unary_unary

        def unary_unary(request: object, context: grpc.ServicerContext) -> Any:
            return stamp(hub, unary(request, context), head)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
