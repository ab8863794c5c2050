"""Conversions between Python values and the protos: the one place each mapping lives.

As Flower's ``flwr/common/serde.py``: every enum, scalar and JSON-config conversion the
coordinator, the sites and the CLI share is written here once. The wire formats of payloads
(chunks, tensors) are protos/wire.py's.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping

from protos import common_pb2

Scalar = bool | int | float | str


class SchemeName(enum.StrEnum):
    """How a run protects its updates, by name: what ``Run.secure`` stores and sites pin."""

    NONE = "none"
    PAILLIER = "paillier"


_SCHEME_TO_PROTO = {
    SchemeName.NONE: common_pb2.SECURE_SCHEME_NONE,
    SchemeName.PAILLIER: common_pb2.SECURE_SCHEME_PAILLIER,
}
# proto3 cannot tell an unset scheme from 0: an unset one means no encryption.
_SCHEME_FROM_PROTO = {
    common_pb2.SECURE_SCHEME_UNSPECIFIED: SchemeName.NONE,
    **{value: name for name, value in _SCHEME_TO_PROTO.items()},
}


def scheme_to_proto(name: str) -> common_pb2.SecureScheme:
    """The ``SecureScheme`` of a scheme name ("none" or "paillier"); ValueError otherwise."""
    try:
        return _SCHEME_TO_PROTO[SchemeName(name)]
    except ValueError:
        raise ValueError(f"unknown secure scheme {name!r}") from None


def scheme_from_proto(value: int) -> SchemeName:
    """The name of a ``SecureScheme`` value (unset: none); ValueError for one we do not know."""
    try:
        return _SCHEME_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown secure scheme {value}") from None


def run_state_to_proto(state: str) -> common_pb2.RunState:
    """The ``RunState`` of a run state's value ("pending", "running", …)."""
    value: common_pb2.RunState = common_pb2.RunState.Value(f"RUN_STATE_{state.upper()}")
    return value


def run_state_name(value: int) -> str:
    """A ``RunState`` as a run state's value: "running", "completed", …"""
    name: str = common_pb2.RunState.Name(value)
    return name.removeprefix("RUN_STATE_").lower()


def config_from_json(text: str, field: str = "config_json") -> dict[str, object]:
    """A run's JSON config as a dict ("" is {}); ValueError naming ``field`` otherwise."""
    try:
        config = json.loads(text) if text else {}
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{field} is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{field} must be a JSON object")
    return config


def scalar_to_proto(value: Scalar) -> common_pb2.Scalar:
    """A bool, int, float or str as a ``Scalar``; TypeError for anything else."""
    if isinstance(value, bool):
        return common_pb2.Scalar(bool_value=value)
    if isinstance(value, int):
        return common_pb2.Scalar(int_value=value)
    if isinstance(value, float):
        return common_pb2.Scalar(double_value=value)
    if isinstance(value, str):
        return common_pb2.Scalar(string_value=value)
    raise TypeError(f"metric values must be bool, int, float or str, not {type(value).__name__}")


def scalar_from_proto(message: common_pb2.Scalar) -> Scalar:
    """The value a ``Scalar`` holds; ValueError when it holds none."""
    kind = message.WhichOneof("value")
    if kind is None:
        raise ValueError("empty scalar")
    value: Scalar = getattr(message, kind)
    return value


def metrics_to_proto(metrics: Mapping[str, object]) -> dict[str, common_pb2.Scalar]:
    """Keep the metrics a wire scalar can hold; numpy numbers become Python numbers."""
    out: dict[str, common_pb2.Scalar] = {}
    for key, value in metrics.items():
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()  # a numpy scalar, without importing numpy
        if isinstance(value, bool | int | float | str):
            out[key] = scalar_to_proto(value)
    return out


def plan_digest(plan: common_pb2.PrivacyPlan | None) -> str:
    """sha256 of a run's differential-privacy plan in canonical JSON; "" for a run without.

    The custodian binds it into the key statement it signs (crypto.identity.KeyDealing), so
    every key holder decrypts under the same plan: a coordinator cannot show one holder no
    plan (and so no site-level DP quorum check) while the others see one.
    """
    if plan is None or plan.ByteSize() == 0:
        return ""
    from google.protobuf.json_format import MessageToDict

    fields = MessageToDict(plan, preserving_proto_field_name=True)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
