"""One way to put a wrapper around a gRPC method handler (used by every server interceptor).

The coordinator serves on grpc's asyncio server (issue 14: a parked long poll is a
coroutine, not a thread). PullTask, FetchPartials, FetchEchoes and WatchRun are written
async; every other handler is a plain function, which the innermost interceptor
(:class:`PlainOnPool`) runs on the server's thread pool from the event loop. Every
interceptor outside it therefore wraps coroutines (one reply, or a coroutine that writes
its replies) and async generators (streamed replies) only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.ServicerContext], Any]
"""A handler's behaviour: (request or request iterator, context) -> reply or reply iterator."""


def is_coroutine(behavior: Callable[..., Any]) -> bool:
    """True for a handler that runs on the event loop (a coroutine or async generator)."""
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def yields_async(behavior: Callable[..., Any]) -> bool:
    """True for an async generator: its replies are iterated, not awaited.

    A streaming handler may also be a coroutine that writes its replies itself
    (``context.write``, as grpc_health's asyncio servicer does): that one is awaited.
    """
    return inspect.isasyncgenfunction(behavior)


def rewrap(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior], Behavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour passed through ``wrap``, of the same streaming kind.

    grpcio keeps the behaviour in one of four attributes (unary_unary, unary_stream, …)
    and builds a handler with the matching factory; this picks both from the handler.
    """
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        wrap(getattr(handler, kind)),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that serves a wrapper of the method handler grpc found."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Look the handler up (None for an unknown method) and serve :meth:`wrap`'s."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler, handler_call_details)

    def wrap(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """The handler to serve in ``handler``'s place (or ``handler`` itself)."""
        raise NotImplementedError


class Aborted(Exception):
    """A plain handler's abort, carried from its pool thread to the event loop."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallerLeft(Exception):
    """Raised into a plain handler reading a request stream whose caller has gone."""


class PoolContext:
    """What a plain handler sees while it runs on the pool: read on the loop at the start.

    grpc.aio releases a call as soon as its caller leaves; a pool thread that then asks
    the call anything (``peer()``) reads freed memory (review: a segfault). So the peer,
    the metadata and the deadline are read on the event loop when the call begins, and
    ``abort`` raises :class:`Aborted`, which the loop turns into the real abort.
    """

    def __init__(self, context: Any, closing: threading.Event) -> None:
        self._metadata = tuple(context.invocation_metadata() or ())
        self._peer: str = context.peer()
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._closing = closing
        self._code: grpc.StatusCode | None = None
        self.left = threading.Event()

    def invocation_metadata(self) -> tuple[Any, ...]:
        """The call's metadata, as received."""
        return self._metadata

    def peer(self) -> str:
        """The caller's address, as grpc names it."""
        return self._peer

    def time_remaining(self) -> float | None:
        """Seconds to the call's deadline (None: it has none)."""
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        """End the call with ``code`` (raises)."""
        self._code = code
        raise Aborted(code, details)

    def code(self) -> grpc.StatusCode | None:
        """The status aborted with so far (None: none yet)."""
        return self._code

    def is_active(self) -> bool:
        """False once the caller left, its deadline passed or the coordinator is stopping."""
        if self.left.is_set() or self._closing.is_set():
            return False
        return self._deadline is None or time.monotonic() < self._deadline


_END = object()


def unary_on_pool(behavior: Behavior, closing: threading.Event) -> Behavior:
    """A plain handler with one reply as a coroutine: the reply is made on the pool."""

    async def call(request: Any, context: Any) -> Any:
        side = PoolContext(context, closing)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, behavior, request, side)
        except Aborted as exc:
            await context.abort(exc.code, exc.details)
        finally:
            side.left.set()

    return call


def client_stream_on_pool(behavior: Behavior, closing: threading.Event) -> Behavior:
    """A plain handler of a request stream (an update upload) as a coroutine.

    It runs on the pool and reads each request from the loop.
    """

    async def call(requests: AsyncIterator[Any], context: Any) -> Any:
        loop = asyncio.get_running_loop()
        side = PoolContext(context, closing)

        def pulled() -> Iterator[Any]:
            while True:
                future = asyncio.run_coroutine_threadsafe(_next_or_end(requests), loop)
                while True:
                    try:
                        message = future.result(timeout=1.0)
                        break
                    except concurrent.futures.TimeoutError:
                        if side.left.is_set():
                            future.cancel()
                            raise CallerLeft("the caller left mid-stream") from None
                if message is _END:
                    return
                yield message

        try:
            return await loop.run_in_executor(None, behavior, pulled(), side)
        except Aborted as exc:
            await context.abort(exc.code, exc.details)
        finally:
            side.left.set()

    return call


async def _next_or_end(requests: AsyncIterator[Any]) -> Any:
    try:
        return await anext(requests)
    except StopAsyncIteration:
        return _END


def stream_on_pool(
    behavior: Callable[[Any, Any], Iterator[Any]], closing: threading.Event
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A plain generator handler as an async generator: each reply is made on the pool.

    grpc's asyncio server runs a plain streaming handler on one pool thread and hands each
    reply to the loop through a one-slot queue that nobody reads once the caller leaves:
    the thread then blocks for good, and the server's stop waits for it (review of issue
    14's move to grpc.aio). Driven from the loop instead, a caller that leaves cancels
    this coroutine between two replies and the pool thread is free.
    """

    async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        side = PoolContext(context, closing)
        replies = behavior(request, side)
        try:
            while True:
                try:
                    reply = await loop.run_in_executor(None, next, replies, _END)
                except Aborted as exc:
                    await context.abort(exc.code, exc.details)
                if reply is _END:
                    return
                yield reply
        finally:
            side.left.set()
            # Closed on the pool: a generator's cleanup may touch the database. A pool
            # already shut down (the server stopped) leaves it to the collector.
            with contextlib.suppress(RuntimeError):
                loop.run_in_executor(None, _close, replies)

    return streamed


def _close(replies: Iterator[Any]) -> None:
    # ValueError: still running on another pool thread (its caller left mid-reply); the
    # generator ends there, and is closed when collected.
    with contextlib.suppress(ValueError):
        replies.close()  # type: ignore[attr-defined]


class PlainOnPool(HandlerInterceptor):
    """The innermost interceptor: every plain handler is driven from the event loop.

    grpc.aio can run plain handlers itself (its migration thread pool), but then a caller
    that leaves a streamed reply wedges a pool thread for good, and a pool thread may ask
    a call grpc has already released (reviews of issue 14's move). Here each plain
    handler runs on the pool under a :class:`PoolContext` read on the loop, and every
    interceptor outside this one sees coroutines and async generators only.
    """

    def __init__(self, closing: threading.Event) -> None:
        self.closing = closing

    def wrap(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """The handler's plain behaviour as a coroutine or an async generator."""
        if handler.request_streaming and handler.response_streaming:
            return handler  # no such method; grpc.aio would run it on the pool itself
        closing = self.closing

        def on_pool(behavior: Behavior) -> Behavior:
            if is_coroutine(behavior):
                return behavior
            if handler.response_streaming:
                return stream_on_pool(behavior, closing)
            if handler.request_streaming:
                return client_stream_on_pool(behavior, closing)
            return unary_on_pool(behavior, closing)

        return rewrap(handler, on_pool)
