"""Concurrency caps: calls per caller, and parked calls (long polls, watches) overall.

The server has one thread pool. Without caps, one site could hold every thread with
concurrent calls, and long polls and watches alone could leave no thread for an
operator's admin call (issue 11, item 8). Past a cap the call is answered at once with
RESOURCE_EXHAUSTED, which a site's agent treats as "retry later".
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from coordinator.interceptors import Behavior, rewrap
from protos import wire

# Calls that park a thread for up to their whole wait.
PARKED_METHODS = frozenset({"/cohort.v1.Federation/PullTask", "/cohort.v1.Admin/WatchRun"})
MAX_CALLS_PER_CALLER = 16
# Callers without a token (Join, health checks) share one budget per address.
MAX_CALLS_PER_ANONYMOUS_ADDRESS = 64
# Threads never given to parked calls, so admin and update calls always find one.
RESERVED_THREADS = 32


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.5:5123" -> "10.0.0.5")."""
    _, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0].strip("[]") if rest else peer


def caller_key(metadata: Any, peer: str) -> tuple[str, int | None]:
    """Who is calling and their cap: a hash of the bearer token, else the peer's address.

    Anonymous calls from loopback are not capped: a process on the coordinator's own
    machine (a load test, the demo, a local dashboard) is no remote party to bound.
    """
    for key, value in metadata or ():
        if key == wire.NODE_TOKEN_HEADER and isinstance(value, str) and value:
            return "token:" + hashlib.sha256(value.encode()).hexdigest()[:32], MAX_CALLS_PER_CALLER
    address = peer_address(peer)
    if address == "localhost" or _is_loopback_ip(address):
        return "peer:" + address, None
    return "peer:" + address, MAX_CALLS_PER_ANONYMOUS_ADDRESS


def _is_loopback_ip(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class CallCounter:
    """Thread-safe counts of calls in flight, by caller and of parked calls."""

    def __init__(self, max_parked: int) -> None:
        self.max_parked = max_parked
        self.parked = 0
        self.by_caller: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, caller: str, limit: int | None, parks: bool) -> str | None:
        """Count a call in; a sentence saying why not when a cap is reached."""
        with self._lock:
            if limit is not None and self.by_caller.get(caller, 0) >= limit:
                return f"too many concurrent calls from this caller (at most {limit})"
            if parks and self.parked >= self.max_parked:
                return "the coordinator is at its limit of waiting calls; retry shortly"
            self.by_caller[caller] = self.by_caller.get(caller, 0) + 1
            if parks:
                self.parked += 1
            return None

    def leave(self, caller: str, parks: bool) -> None:
        """Count a call out (it ended, however it ended)."""
        with self._lock:
            left = self.by_caller.get(caller, 1) - 1
            if left > 0:
                self.by_caller[caller] = left
            else:
                self.by_caller.pop(caller, None)
            if parks:
                self.parked -= 1


class CapCalls(grpc.ServerInterceptor):
    """Refuse a call past its caller's cap, or a parked call past the pool's share."""

    def __init__(self, max_workers: int) -> None:
        self.counter = CallCounter(max(max_workers - RESERVED_THREADS, 1))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap each handler so a call over its caller's or the parking cap is refused up front."""
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        parks = handler_call_details.method in PARKED_METHODS
        metadata = handler_call_details.invocation_metadata
        counter = self.counter

        def admit(context: grpc.ServicerContext) -> str:
            caller, limit = caller_key(metadata, context.peer())
            refusal = counter.enter(caller, limit, parks)
            if refusal is not None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            return caller

        def counted(behavior: Behavior) -> Behavior:
            def streaming(request: object, context: grpc.ServicerContext) -> Iterator[Any]:
                caller = admit(context)
                try:
                    yield from behavior(request, context)
                finally:
                    counter.leave(caller, parks)

            def unary(request: object, context: grpc.ServicerContext) -> Any:
                caller = admit(context)
                try:
                    return behavior(request, context)
                finally:
                    counter.leave(caller, parks)

            return streaming if handler.response_streaming else unary

        return rewrap(handler, counted)
