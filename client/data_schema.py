"""A site's side of schema agreement and model choice: what it reports, what it refuses.

The schema a site reports (at join) and checks (at every task) comes from its own data;
the pinned schema comes with the task. A site whose columns are only in another order
reorders them to the pinned order; any other difference is a refusal (code ``schema``)
naming the columns, before anything is trained. A trainer that cannot build the run's
model refuses with code ``model``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from client.data import TabularData
from client.policy import TaskRefused
from protos.data_schema import DataSchema, column_order, from_dict

# Registry models that read one row of numeric features (``x``): what a table can train.
TABULAR_MODELS = ("tabular_mlp",)


def schema_of(data: TabularData) -> DataSchema:
    """Column names and types in the data's order, and the label classes present."""
    types = data.column_types or ["float"] * len(data.feature_names)
    present = sorted(int(label) for label in np.unique(data.y))
    names = list(data.class_names or [])
    classes = {str(i): (names[i] if 0 <= i < len(names) else str(i)) for i in present}
    return DataSchema(
        tuple(zip(data.feature_names, types, strict=True)),
        tuple(classes.items()),
    )


def capabilities(client: Any) -> dict[str, str]:
    """The schema capabilities of a client that exposes ``data_schema`` (else none)."""
    schema = getattr(client, "data_schema", None)
    return schema.capabilities() if isinstance(schema, DataSchema) else {}


def pinned_order(run_schema: object, mine: DataSchema) -> list[int] | None:
    """Where each pinned column is in this site's data; None when the task pins none.

    Raises
    ------
    TaskRefused
        ``schema``: the pinned schema does not read, or this site's data differs from it
        beyond column order (missing, extra or differently typed columns are named).
    """
    if run_schema in (None, "", {}):
        return None
    try:
        pinned = from_dict(run_schema)
    except ValueError as exc:
        raise TaskRefused("schema", f"the run's data schema does not read: {exc}") from exc
    try:
        return column_order(pinned, mine)
    except ValueError as exc:
        raise TaskRefused(
            "schema",
            f"this site's data does not match the run's schema ({pinned.fingerprint()[:12]}): "
            f"{exc}",
        ) from exc


def tabular_model(name: str) -> str:
    """The run's model as a table-trained site builds it, or a refusal naming it.

    Raises
    ------
    TaskRefused
        ``model``: the run names a model that does not read a row of features.
    """
    bare = name.removeprefix("site:")
    if bare in TABULAR_MODELS:
        return bare
    raise TaskRefused(
        "model",
        f"this site holds a table and builds {', '.join(TABULAR_MODELS)}; it cannot build "
        f"model {bare[:200]!r} (run it on sites with data for that model, or run a tabular model)",
    )
