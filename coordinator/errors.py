"""Domain exceptions and the one place that maps them to gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from coordinator.interceptors import Aborted, CallerLeft

log = logging.getLogger(__name__)


class CohortError(Exception):
    """Base of the errors a caller can act on; the message says what was wrong."""

    code = grpc.StatusCode.INTERNAL


class Unauthenticated(CohortError):
    """The caller's token is missing, unknown, expired or revoked (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CohortError):
    """The caller is known but its role or node may not do this (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(CohortError):
    """No run, node, task or blob by that id (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(CohortError):
    """A request field is malformed or out of range; the message names it (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(CohortError):
    """The request is well formed but the run or task is not in a state to take it.

    Answered FAILED_PRECONDITION: retrying the same request will not help.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(CohortError):
    """The thing the request would create is already there (ALREADY_EXISTS)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(CohortError):
    """The coordinator cannot serve this now (stopping); the caller may retry (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(CohortError):
    """A size or concurrency limit was reached (RESOURCE_EXHAUSTED); the caller may retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


F = TypeVar("F", bound=Callable[..., Any])


def maps_domain_errors(method: F) -> F:
    """Turn a domain exception raised by a servicer method into ``context.abort``.

    Unary methods and server-streaming generators both pass through here, so every RPC
    answers a :class:`CohortError` with its status code and message and anything else
    with INTERNAL (logged), never a raw traceback to the caller.
    """

    def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, CohortError):
            context.abort(exc.code, str(exc))
        log.exception("unexpected error in %s", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    async def _abort_async(context: Any, exc: Exception) -> None:
        if isinstance(exc, CohortError):
            await context.abort(exc.code, str(exc))
        log.exception("unexpected error in %s", method.__name__)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def async_stream_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                async for reply in method(self, request, context):
                    yield reply
            except Exception as exc:
                if _is_abort(exc, context):
                    raise
                await _abort_async(context, exc)

        return async_stream_wrapper  # type: ignore[return-value]

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                return await method(self, request, context)
            except Exception as exc:
                if _is_abort(exc, context):
                    raise
                await _abort_async(context, exc)

        return async_wrapper  # type: ignore[return-value]

    if _is_generator(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                if _is_abort(exc, context):
                    raise
                _abort(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            if _is_abort(exc, context):
                raise
            _abort(context, exc)

    return unary_wrapper  # type: ignore[return-value]


def _is_generator(method: Callable[..., Any]) -> bool:
    return inspect.isgeneratorfunction(method)


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    """True for the bare ``Exception`` that ``context.abort`` raises once it set a status.

    It can come from inside a handler (a request stream that a server interceptor
    refused); re-raising it keeps the status that abort chose.
    """
    if isinstance(exc, Aborted | CallerLeft) or type(exc).__module__.startswith("grpc"):
        return True
    code = context.code() if hasattr(context, "code") else None
    return type(exc) is Exception and code not in (None, grpc.StatusCode.OK)
