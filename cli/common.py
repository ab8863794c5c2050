"""What every command shares: the config file, one-line errors with exit code 2, logging."""

from __future__ import annotations

import functools
import json
import logging
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = Path("cohort.toml")


def load_config(path: Path | None) -> dict[str, Any]:
    """Read the TOML config into click's ``default_map`` shape.

    Sections follow the command path, e.g. ``[client.run]`` sets ``cohort client run``'s
    options and ``[admin.runs.start]`` those of ``cohort admin runs start``; keys are the
    option names with ``_`` for ``-``. Flags beat ``COHORT_*`` variables, which beat this file.
    """
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return {}
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        fail(f"config file {path} does not exist")
    except tomllib.TOMLDecodeError as exc:
        fail(f"config file {path} is not valid TOML: {exc}")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line saying what was wrong and exit (2 for bad input by default)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(command: F) -> F:
    """Turn the errors a user can fix into one line and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                from protos.transport import transport_mismatch

                mismatch = transport_mismatch(detail or "")
                if mismatch is not None:
                    fail(mismatch)
                fail(
                    f"cannot reach the coordinator ({detail}); is `cohort coordinator serve` "
                    "running at that address?"
                )
            name = code.name if code is not None else "ERROR"
            fail(f"{detail} [{name}]")
        except (ValueError, KeyError, FileNotFoundError, PermissionError) as exc:
            fail(str(exc).strip("'\""))

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """The one logging setup: plain text, or one JSON object a line for log collectors."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def parse_json_option(text: str | None, name: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"{name} must be a JSON object: {exc}")
    if not isinstance(value, dict):
        fail(f"{name} must be a JSON object")
    return value
