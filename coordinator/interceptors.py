"""One way to put a wrapper around a gRPC method handler (used by every server interceptor).

The coordinator serves on grpc's asyncio server (issue 14: a parked long poll is a
coroutine, not a thread). Most handlers stay plain functions, which that server runs on
its thread pool; PullTask is a coroutine. Each interceptor therefore wraps either kind,
keeping its kind (:func:`is_coroutine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
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


class SyncCallContext:
    """A plain handler's context on the asyncio server, with the sync server's two extras.

    grpc's asyncio server hands a plain (thread-pool) handler a context without
    ``code()`` (the metrics label and the error mapping read it) and without
    ``is_active()`` (the partial and echo waits and WatchRun poll it). Here ``code()`` is
    what the handler set or aborted with, and a call stays active until its deadline
    passes or the coordinator stops (a caller that leaves without a deadline is noticed
    at the next reply written to it).
    """

    def __init__(self, context: Any, closing: threading.Event) -> None:
        self._context = context
        self._closing = closing
        self._code: grpc.StatusCode | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        """Record the status, then end the call with it (raises)."""
        self._code = code
        self._context.abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        """Record the status and set it on the call."""
        self._code = code
        self._context.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        """The status set or aborted with so far (None: none yet)."""
        return self._code

    def is_active(self) -> bool:
        """False once the call's deadline passed or the coordinator is stopping."""
        if self._closing.is_set():
            return False
        remaining = self._context.time_remaining()
        return remaining is None or remaining > 0


class Aborted(Exception):
    """A plain streaming handler's abort, carried from its pool thread to the event loop."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ThreadSideContext:
    """What a plain response-streaming handler sees while it runs on the pool.

    Its ``abort`` raises :class:`Aborted`, which :func:`stream_on_pool` turns into the
    real abort on the event loop; ``is_active`` is False once the caller left.
    """

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None
        self.left = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        """End the call with ``code`` (raises)."""
        self._code = code
        raise Aborted(code, details)

    def code(self) -> grpc.StatusCode | None:
        """The status aborted with so far (None: none yet)."""
        return self._code

    def is_active(self) -> bool:
        """False once the caller left or the call ended."""
        return not self.left.is_set()


_END = object()


def stream_on_pool(
    behavior: Callable[[Any, Any], Iterator[Any]],
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
        side = ThreadSideContext(context)
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


class StreamsOnPool(HandlerInterceptor):
    """The innermost interceptor: every plain response stream is driven from the loop."""

    def wrap(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Turn a plain generator handler with a streamed reply into an async one."""
        if not handler.response_streaming or handler.request_streaming:
            return handler
        if is_coroutine(handler.unary_stream):
            return handler
        return rewrap(handler, stream_on_pool)
