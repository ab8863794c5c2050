"""Request bodies of the serving API as model inputs, or an HTTP error naming the field.

JSON rows keyed by the training feature names (any order), a CSV body with a header row,
or named nested lists for models that are not tabular; every check answers 4xx with the
field it is about, before anything reaches the batcher.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt

from models.predictor import Inputs

Number = StrictFloat | StrictInt


class RowsBody(BaseModel):
    """Tabular rows as JSON objects keyed by the training feature names."""

    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Number]]


class NamedBody(BaseModel):
    """Named inputs of a non-tabular model: each a nested list with rows first."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, list[Any]]


def bad_request(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def parse_rows(rows: list[dict[str, Any]], features: tuple[str, ...]) -> np.ndarray:
    """JSON rows (any key order) as a float32 matrix in the model's feature order.

    Raises HTTP 422 naming the first missing, unknown or non-finite field.
    """
    wanted = set(features)
    out = np.empty((len(rows), len(features)), dtype=np.float32)
    for i, row in enumerate(rows):
        missing = [f for f in features if f not in row]
        if missing:
            raise bad_request(
                422, f"rows[{i}] lacks feature {missing[0]!r} ({len(missing)} missing)"
            )
        unknown = [k for k in row if k not in wanted]
        if unknown:
            raise bad_request(
                422, f"rows[{i}] has unknown field {unknown[0]!r}: not a model feature"
            )
        for j, name in enumerate(features):
            value = float(row[name])
            if not math.isfinite(value):
                raise bad_request(422, f"rows[{i}].{name} is not a finite number")
            out[i, j] = value
    return out


def parse_csv(text: str, features: tuple[str, ...]) -> np.ndarray:
    """A CSV body with a header row: columns matched by name, extra columns ignored."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise bad_request(400, "the CSV body is empty: send a header row and data rows")
    header = [h.strip() for h in header]
    missing = [f for f in features if f not in header]
    if missing:
        raise bad_request(422, f"the CSV lacks column {missing[0]!r} ({len(missing)} missing)")
    if len(set(header)) != len(header):
        raise bad_request(422, "the CSV header names a column twice")
    index = [header.index(f) for f in features]
    rows = []
    for line, record in enumerate(reader, start=2):
        if not record:
            continue
        if len(record) != len(header):
            raise bad_request(
                422, f"CSV line {line} has {len(record)} fields, the header {len(header)}"
            )
        values = []
        for name, j in zip(features, index, strict=True):
            try:
                value = float(record[j])
            except ValueError:
                raise bad_request(
                    422, f"CSV line {line}: {name} = {record[j]!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise bad_request(422, f"CSV line {line}: {name} is not a finite number")
            values.append(value)
        rows.append(values)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(features))


def parse_named(
    inputs: dict[str, list[Any]], names: tuple[str, ...], required: tuple[str, ...]
) -> Inputs:
    """Named nested lists as arrays; required inputs present, none unknown, same rows.

    Token ids and masks (``*_ids``, ``*_mask``) are int64, as the model's embedding
    needs; every other input is float32, as in training.
    """
    missing = [n for n in required if n not in inputs]
    if missing:
        raise bad_request(422, f"inputs lacks {missing[0]!r}; the model takes {', '.join(names)}")
    unknown = [k for k in inputs if k not in names]
    if unknown:
        raise bad_request(
            422, f"inputs has unknown input {unknown[0]!r}; the model takes {', '.join(names)}"
        )
    out: Inputs = {}
    for name, value in inputs.items():
        try:
            array = np.asarray(value)
        except ValueError:
            raise bad_request(422, f"inputs.{name} is ragged: rows must share one shape") from None
        if array.dtype.kind not in "biuf" or array.ndim < 1:
            raise bad_request(422, f"inputs.{name} must be a numeric array with rows first")
        if not np.isfinite(array.astype(float)).all():
            raise bad_request(422, f"inputs.{name} holds a value that is not a finite number")
        integral = name.endswith(("_ids", "_mask"))
        if integral and array.dtype.kind == "f" and not (array == np.round(array)).all():
            raise bad_request(422, f"inputs.{name} must hold integers")
        out[name] = array.astype(np.int64 if integral else np.float32)
    if len({len(a) for a in out.values()}) != 1:
        raise bad_request(422, "every input must have the same number of rows")
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise bad_request(413, f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise bad_request(413, f"the body passes the {limit}-byte limit")
    return bytes(body)
