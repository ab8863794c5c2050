"""Build and run the coordinator: gRPC services, health checking, the round scheduler."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.access import AccessControl
from coordinator.admin import AdminService
from coordinator.anchoring import AnchorReplies
from coordinator.call_limits import CapCalls
from coordinator.federation import FederationService
from coordinator.hub import Hub, Limits
from coordinator.interceptors import Behavior, rewrap
from coordinator.metrics import CoordinatorMetrics, LatencyInterceptor, MetricsEndpoint
from coordinator.pki import FederationPki
from coordinator.scheduler import RoundScheduler
from coordinator.services import AdminServicer, FederationServicer
from protos import admin_pb2_grpc, federation_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = ("cohort.v1.Federation", "cohort.v1.Admin")


PLAINTEXT_FLAG = "--i-understand-plaintext-off-loopback"


def is_loopback(host: str) -> bool:
    """True only for addresses no other machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a hostname or a wildcard: reachable from elsewhere


def exposure_problem(host: str, tls: bool, auth: bool) -> str | None:
    """Why serving on ``host`` would expose the federation, or None when it would not.

    Off loopback, plaintext gRPC shows every token and update to the network, and no auth
    lets anyone enrol a site or start a run.
    """
    if is_loopback(host):
        return None
    missing = [what for what, on in (("TLS", tls), ("authentication", auth)) if not on]
    if not missing:
        return None
    return (
        f"refusing to serve on {host} without {' and '.join(missing)}: anyone on the network "
        "could read tokens and updates or act as an operator. Serve with --tls-dir (auth is "
        f"then on), bind 127.0.0.1, or pass {PLAINTEXT_FLAG} to accept that risk"
    )


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""


def _refusing(behavior: Behavior, streaming: bool) -> Behavior:
    def check(request: object, context: grpc.ServicerContext) -> object:
        if isinstance(request, _Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request does not parse as protobuf")
        return request

    def checked_stream(requests: Iterator[object], context: grpc.ServicerContext) -> Any:
        return behavior((check(r, context) for r in requests), context)

    def checked(request: object, context: grpc.ServicerContext) -> Any:
        return behavior(check(request, context), context)

    return checked_stream if streaming else checked


class RefuseUndecodable(grpc.ServerInterceptor):
    """Answer unparseable request bytes with INVALID_ARGUMENT, not grpcio's INTERNAL."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap handlers so request bytes that do not parse are refused, not raised in grpcio."""
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> object:
            try:
                return parse(data)
            except Exception:
                return _Undecodable()

        streaming = handler.request_streaming
        return rewrap(handler, lambda behavior: _refusing(behavior, streaming), deserialize)


class CoordinatorServer:
    """One coordinator process: ``start()`` binds and returns the port, ``stop()`` drains."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        max_workers: int = 256,
        tick_seconds: float = 0.25,
        tls: FederationPki | None = None,
        auth: bool = False,
        allow_exposed: bool = False,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_token: str = "",
    ) -> None:
        problem = exposure_problem(host, tls is not None, auth)
        if problem is not None and not allow_exposed:
            raise ValueError(problem)
        self.hub = Hub.open(database_url, Path(data_dir), limits)
        self.access = AccessControl(self.hub, enabled=auth)
        self.tls = tls
        if auth and tls is not None and tls.admin_token.exists():
            self.access.bootstrap_admin(tls.admin_token.read_text().strip())
        self.scheduler = RoundScheduler(self.hub, tick_seconds=tick_seconds)
        self.health = health.HealthServicer()
        self.metrics = CoordinatorMetrics(self.hub)
        # Off by default; TLS with the coordinator's own certificate when it has one.
        self.metrics_endpoint = (
            MetricsEndpoint(
                self.metrics,
                host=metrics_host,
                port=metrics_port,
                token=metrics_token,
                certfile=tls.server_cert if tls is not None else None,
                keyfile=tls.server_key if tls is not None else None,
            )
            if metrics_port is not None
            else None
        )
        self.metrics_port = 0
        # Long polls park a thread each: size the pool for every site plus admin calls.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[
                LatencyInterceptor(self.metrics.rpc_seconds),
                CapCalls(max_workers),
                RefuseUndecodable(),
                AnchorReplies(self.hub),
            ],
        )
        federation_pb2_grpc.add_FederationServicer_to_server(
            FederationServicer(FederationService(self.hub, self.access)), self.server
        )
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(
                AdminService(self.hub, enrolment_required=auth, metrics=self.metrics), self.access
            ),
            self.server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"{host}:{port}"
        self.port = 0

    def start(self) -> int:
        """Listen, start the scheduler and metrics, mark the services SERVING; return the port."""
        if self.tls is not None:
            self.port = self.server.add_secure_port(self.address, self.tls.server_credentials())
        else:
            self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        self.server.start()
        if self.metrics_endpoint is not None:
            self.metrics_port = self.metrics_endpoint.start()
        self.scheduler.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._log_lifecycle("coordinator.started", port=self.port)
        log.info("coordinator listening on port %d", self.port)
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        """Drain calls (``grace`` s), stop the scheduler and metrics, and close the database."""
        self.health.enter_graceful_shutdown()
        self.hub.closing.set()
        self.scheduler.stop()
        self.hub.notify()
        self.server.stop(grace).wait()
        self.hub.presence.flush(self.hub.db, force=True)  # the last signs of life
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        # After the last call has drained, so it is the process's last row.
        self._log_lifecycle("coordinator.stopped")
        self.hub.db.close()

    def _log_lifecycle(self, kind: str, **details: object) -> None:
        """Starts and stops in the audit log: a crash shows as a start with no stop before it."""
        from coordinator import auditlog
        from coordinator.report import code_version

        facts = {
            "version": code_version(),
            "db": self.hub.db.engine.dialect.name,
            "tls": self.tls is not None,
            "auth": self.access.enabled,
            **details,
        }
        try:
            with self.hub.lock, self.hub.db.transaction() as session:
                auditlog.append(session, kind, details=facts)
        except Exception:
            log.exception("could not write %s to the audit log", kind)

    def wait(self) -> None:
        """Block until the server stops."""
        self.server.wait_for_termination()
