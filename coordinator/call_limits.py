"""Concurrency caps: calls per caller, and run watches overall.

The server runs plain handlers on one thread pool. Without caps, one site could hold
every thread with concurrent calls (issue 11, item 8). Long polls (PullTask, and a
threshold round's FetchPartials and FetchEchoes) and run watches park coroutines on the
event loop, not threads (issue 14): a poll is bounded by its caller's cap, watches also
by MAX_WATCHES overall. Past a cap the call is answered
at once with RESOURCE_EXHAUSTED, which a site's agent treats as "retry later".
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordinator.interceptors import (
    Behavior,
    HandlerInterceptor,
    rewrap,
    yields_async,
)
from protos import wire

# Run watches last as long as their run: capped overall (MAX_WATCHES) as well as per
# caller. A long poll parks a coroutine for at most max_poll_seconds (threshold polls 10 s):
# its caller's cap bounds it.
PARKED_METHODS = frozenset({"/cohort.v1.Admin/WatchRun"})
MAX_CALLS_PER_CALLER = 16
# Callers without a token (Join, health checks) share one budget per address.
MAX_CALLS_PER_ANONYMOUS_ADDRESS = 64
# Run watches open at once, over all callers: each is a coroutine and a snapshot read
# per change of anything, so their number is bounded, not the threads they hold (none).
MAX_WATCHES = 1024


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


class CapCalls(HandlerInterceptor):
    """Refuse a call past its caller's cap, or a run watch past MAX_WATCHES."""

    def __init__(self, max_watches: int = MAX_WATCHES) -> None:
        self.counter = CallCounter(max_watches)

    def wrap(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Wrap each handler so a call over its caller's or the parking cap is refused up front."""
        parks = handler_call_details.method in PARKED_METHODS
        metadata = handler_call_details.invocation_metadata
        counter = self.counter

        def enter(context: Any) -> tuple[str, str | None]:
            caller, limit = caller_key(metadata, context.peer())
            return caller, counter.enter(caller, limit, parks)

        def counted(behavior: Behavior) -> Behavior:
            async def unary(request: object, context: Any) -> Any:
                caller, refusal = enter(context)
                if refusal is not None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                try:
                    return await behavior(request, context)
                finally:
                    counter.leave(caller, parks)

            async def streaming(request: object, context: Any) -> AsyncIterator[Any]:
                caller, refusal = enter(context)
                if refusal is not None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                try:
                    async for reply in behavior(request, context):
                        yield reply
                finally:
                    counter.leave(caller, parks)

            # Every behaviour here is async (interceptors.PlainOnPool); enter() runs on
            # the event loop, where asking the call for its peer is safe.
            return streaming if yields_async(behavior) else unary

        return rewrap(handler, counted)
