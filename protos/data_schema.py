"""A site's data schema (column names, order, types, label classes; never values) and its checks.

Sites report their schema when they join (``Join`` capabilities ``schema`` and
``schema_fingerprint``); the run pins one and sends it with every task (config
``schema``). Both sides compare with :func:`differences`, so the coordinator excludes a
site for exactly the reasons the site itself would refuse: columns are matched by name
(order is free: a site reorders its columns to the pinned order), every pinned column
must exist with the same type and no other column may be present, and a label id the
site shares with the run must name the same class. A site may lack a class or hold one
the first site lacked (non-IID data is normal); the model's class count, which the run
fixes, bounds the labels (the trainer refuses labels beyond it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COLUMN_TYPES = ("integer", "float", "boolean")
CAPABILITY = "schema"
FINGERPRINT_CAPABILITY = "schema_fingerprint"
MAX_JSON_CHARS = 256 * 1024
MAX_COLUMNS = 10_000
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class DataSchema:
    """Columns in order as ``(name, type)`` and label classes as ``id → name``."""

    columns: tuple[tuple[str, str], ...]
    classes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a data schema needs at least one column")
        if len(self.columns) > MAX_COLUMNS:
            raise ValueError(f"a data schema may have at most {MAX_COLUMNS} columns")
        names = [name for name, _ in self.columns]
        for name, kind in self.columns:
            if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
                raise ValueError(f"column names must be 1-{MAX_NAME_CHARS} characters")
            if kind not in COLUMN_TYPES:
                raise ValueError(
                    f"column {name!r} has type {kind!r}; types are {', '.join(COLUMN_TYPES)}"
                )
        if len(set(names)) != len(names):
            raise ValueError("duplicate column names: columns are matched by name")
        for label, class_name in self.classes:
            if not isinstance(label, str) or not isinstance(class_name, str):
                raise ValueError("label classes map a label id to a class name, both text")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [{"name": name, "type": kind} for name, kind in self.columns],
            "classes": dict(self.classes),
        }

    def canonical(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what the fingerprint hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def capabilities(self) -> dict[str, str]:
        return {CAPABILITY: self.canonical(), FINGERPRINT_CAPABILITY: self.fingerprint()}


def _sorted_classes(classes: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    def key(item: tuple[str, str]) -> tuple[int, str]:
        # Label ids in numeric order; any other text after them, in text order.
        try:
            return (int(item[0]), "")
        except ValueError:
            return (1 << 62, item[0])

    return tuple(sorted(((str(k), str(v)) for k, v in classes.items()), key=key))


def from_dict(value: object) -> DataSchema:
    """Read a schema as JSON decoded it (an operator's run config, a task, a join).

    Raises
    ------
    ValueError
        Naming what is wrong with it.
    """
    if not isinstance(value, Mapping):
        raise ValueError("a data schema is a JSON object with 'columns' (and 'classes')")
    unknown = set(value) - {"columns", "classes"}
    if unknown:
        raise ValueError(f"a data schema has only 'columns' and 'classes', not {sorted(unknown)}")
    columns = value.get("columns")
    if not isinstance(columns, list):
        raise ValueError("schema 'columns' must be a list of {'name', 'type'}")
    out: list[tuple[str, str]] = []
    for column in columns:
        if isinstance(column, str):
            column = {"name": column, "type": "float"}
        if not isinstance(column, Mapping) or set(column) != {"name", "type"}:
            raise ValueError("each schema column is {'name': ..., 'type': ...}")
        out.append((column["name"], column["type"]))
    classes = value.get("classes", {})
    if isinstance(classes, list):
        classes = {str(i): str(c) for i, c in enumerate(classes)}
    if not isinstance(classes, Mapping):
        raise ValueError("schema 'classes' must map label ids to class names")
    return DataSchema(tuple(out), _sorted_classes(classes))


def from_json(text: str) -> DataSchema:
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"a data schema is at most {MAX_JSON_CHARS} characters of JSON")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the data schema is not JSON: {exc}") from exc
    return from_dict(value)


def from_capabilities(capabilities: Mapping[str, str]) -> DataSchema | None:
    """The schema a site reported at its join; None when it reported none.

    Raises
    ------
    ValueError
        When it reported one that does not read.
    """
    text = capabilities.get(CAPABILITY)
    if not text:
        return None
    return from_json(str(text))


def _listed(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def differences(pinned: DataSchema, seen: DataSchema) -> list[str]:
    """Why ``seen`` cannot be read as ``pinned`` (empty when it can, whatever its order)."""
    want = dict(pinned.columns)
    have = dict(seen.columns)
    problems: list[str] = []
    missing = [name for name in pinned.names if name not in have]
    extra = [name for name in seen.names if name not in want]
    if missing:
        problems.append(f"missing columns {_listed(missing)}")
    if extra:
        problems.append(f"extra columns {_listed(extra)}")
    typed = [
        f"{name} is {have[name]}, not {kind}"
        for name, kind in pinned.columns
        if name in have and have[name] != kind
    ]
    if typed:
        problems.append(f"column types differ ({_listed(typed, 5)})")
    pinned_classes = dict(pinned.classes)
    clashing = [
        f"label {label} is {name!r}, not {pinned_classes[label]!r}"
        for label, name in seen.classes
        if label in pinned_classes and pinned_classes[label] != name
    ]
    if clashing:
        problems.append(f"label classes differ ({_listed(clashing, 5)})")
    return problems


def column_order(pinned: DataSchema, seen: DataSchema) -> list[int]:
    """Index into ``seen``'s columns of each pinned column, in pinned order.

    Raises
    ------
    ValueError
        When the schemas differ beyond order (the message lists the differences).
    """
    problems = differences(pinned, seen)
    if problems:
        raise ValueError("; ".join(problems))
    position = {name: index for index, name in enumerate(seen.names)}
    return [position[name] for name in pinned.names]
