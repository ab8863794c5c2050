"""Build and run the coordinator: gRPC services, health checking, the round scheduler."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.access import AccessControl
from coordinator.admin import AdminService
from coordinator.anchoring import AnchorReplies
from coordinator.call_limits import CapCalls
from coordinator.federation import FederationService
from coordinator.hub import Hub, Limits
from coordinator.interceptors import Behavior, HandlerInterceptor, PlainOnPool, rewrap, yields_async
from coordinator.metrics import CoordinatorMetrics, LatencyInterceptor, MetricsEndpoint
from coordinator.pki import FederationPki
from coordinator.scheduler import RoundScheduler
from coordinator.services import AdminServicer, FederationServicer
from protos import admin_pb2_grpc, federation_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = ("cohort.v1.Federation", "cohort.v1.Admin")
T = TypeVar("T")


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
    """``behavior`` (async: interceptors.PlainOnPool) refusing undecodable requests."""

    async def refuse(request: object, context: Any) -> object:
        if isinstance(request, _Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request does not parse as protobuf"
            )
        return request

    async def checked_requests(requests: AsyncIterator[object], context: Any) -> Any:
        async def checked() -> AsyncIterator[object]:
            async for request in requests:
                yield await refuse(request, context)

        return await behavior(checked(), context)

    async def checked(request: object, context: Any) -> Any:
        return await behavior(await refuse(request, context), context)

    async def checked_replies(request: object, context: Any) -> AsyncIterator[Any]:
        async for reply in behavior(await refuse(request, context), context):
            yield reply

    if streaming:
        return checked_requests
    return checked_replies if yields_async(behavior) else checked


class RefuseUndecodable(HandlerInterceptor):
    """Answer unparseable request bytes with INVALID_ARGUMENT, not grpcio's INTERNAL."""

    def wrap(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Wrap handlers so request bytes that do not parse are refused, not raised in grpcio."""
        if handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> object:
            try:
                return parse(data)
            except Exception:
                return _Undecodable()

        streaming = handler.request_streaming
        return rewrap(handler, lambda behavior: _refusing(behavior, streaming), deserialize)


class HealthServicer(health.aio.HealthServicer):
    """grpc_health's asyncio servicer, with a Watch that keeps its shared condition in use.

    Upstream's Watch deletes a service's condition when any one watcher leaves, so every
    other watcher of that service never hears of a change again, NOT_SERVING at stop
    included (review of issue 14's move to grpc.aio). Here the condition goes only with
    its last watcher. Built on upstream's ``_server_watchers`` and ``_server_status``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._watching: collections.Counter[str] = collections.Counter()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """Write the service's status now and at every change, until the caller leaves."""
        service = request.service
        condition = self._server_watchers[service]
        self._watching[service] += 1
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(
                        service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                    await condition.wait()
        finally:
            self._watching[service] -= 1
            if self._watching[service] <= 0:
                del self._watching[service]
                self._server_watchers.pop(service, None)


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
        # The asyncio servicer: a health Watch waits on the loop, not on a pool thread.
        self.health = HealthServicer()
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
        # grpc's asyncio server on its own event-loop thread: the long polls (PullTask,
        # FetchPartials, FetchEchoes) and WatchRun are coroutines, so a parked one holds no
        # thread (issue 14); every other handler is a plain function run on ``pool``,
        # which also takes the polls' database steps.
        self.pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc")
        self.loop = _LoopThread(self.pool)
        interceptors = [
            LatencyInterceptor(self.metrics.rpc_seconds),
            CapCalls(),
            RefuseUndecodable(),
            AnchorReplies(self.hub),
            PlainOnPool(self.hub.closing),
        ]
        self.server = self.loop.call(
            lambda: grpc.aio.server(migration_thread_pool=self.pool, interceptors=interceptors)
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
        tls = self.tls
        if tls is not None:
            self.port = self.loop.call(
                lambda: self.server.add_secure_port(self.address, tls.server_credentials())
            )
        else:
            self.port = self.loop.call(lambda: self.server.add_insecure_port(self.address))
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        self.loop.run(self.server.start())
        if self.metrics_endpoint is not None:
            self.metrics_port = self.metrics_endpoint.start()
        self.scheduler.start()
        for name in ("", *SERVICE_NAMES):
            self.loop.run(self.health.set(name, health_pb2.HealthCheckResponse.SERVING))
        self._log_lifecycle("coordinator.started", port=self.port)
        log.info("coordinator listening on port %d", self.port)
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        """Drain calls (``grace`` s), stop the scheduler and metrics, and close the database."""
        if not self.loop.closed:
            self.loop.run(self.health.enter_graceful_shutdown())
        self.hub.closing.set()
        self.scheduler.stop()
        self.hub.notify()
        if not self.loop.closed:  # a second stop finds the server stopped
            self.loop.run(self.server.stop(grace))
            self.loop.close()
            self.pool.shutdown(wait=True, cancel_futures=True)
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
        if not self.loop.closed:
            self.loop.run(self.server.wait_for_termination())


class _LoopThread:
    """An asyncio event loop on a daemon thread, and ways to run work on it and wait."""

    def __init__(self, executor: futures.Executor) -> None:
        self._loop = asyncio.new_event_loop()
        # The loop's executor is the server's pool: the polls' database steps share it.
        self._loop.set_default_executor(executor)
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self.closed = False

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and return its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call(self, function: Callable[[], T]) -> T:
        """Call ``function`` on the loop's thread (grpc binds its server to that loop)."""

        async def inside() -> T:
            return function()

        return self.run(inside())

    def close(self) -> None:
        """Stop the loop and its thread (after the server stopped)."""
        if self.closed:
            return
        self.closed = True
        # Calls the server's stop left behind (a plain handler still on the pool) are
        # cancelled and awaited, so none is destroyed pending with the loop.
        with contextlib.suppress(Exception):
            self.run(_cancel_the_rest(), timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_the_rest() -> None:
    """Cancel every other task on the running loop and wait for them to end."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
