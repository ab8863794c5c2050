"""Load the site's client: the built-in trainer, or any Flower ``NumPyClient`` a user names."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from flwr.client import NumPyClient


class AppError(ValueError):
    """A ``--app`` reference that does not lead to a NumPyClient; the message says why."""


def load_app(reference: str, **context: Any) -> NumPyClient:
    """Import ``package.module:factory`` and call it to get a ``NumPyClient``.

    The factory is called with the keyword arguments it declares out of ``context``
    (``data``, ``site_name``, ``seed``…), or with none: existing Flower code runs
    unchanged. A factory may also return a ``flwr.client.Client`` built with
    ``NumPyClient.to_client()``; its NumPyClient is used.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppError(f"--app must look like package.module:factory, not {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if factory is None:
        raise AppError(f"{module_name} has no attribute {attribute!r}")
    if isinstance(factory, NumPyClient):
        return factory
    if not callable(factory):
        raise AppError(f"{reference} is neither a NumPyClient nor a factory")
    parameters = inspect.signature(factory).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in context.items() if accepts_any or k in parameters}
    client = factory(**kwargs)
    inner = getattr(client, "numpy_client", None)
    if isinstance(inner, NumPyClient):
        client = inner
    if not isinstance(client, NumPyClient):
        raise AppError(f"{reference} returned {type(client).__name__}, not a flwr NumPyClient")
    return client
