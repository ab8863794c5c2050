"""Update schemes at a site: how a run's updates are encoded here and its aggregates decoded.

One module per wire encoding, each with the site's faces of its scheme (the coordinator's
faces, validate and aggregate, are coordinator/schemes.py):

- client/schemes/plain.py: float32 tensors, or 8-bit ones when the run quantises
  updates (crypto/compress.py); the global model is fetched as it is.
- client/schemes/paillier.py: packed Paillier ciphertexts, with a single custodian's key
  or a t-of-n threshold key; its docstring walks through a secure round. The run's model
  state, server optimiser and obfuscator pools are client/schemes/paillier_model.py.

A scheme's methods (:class:`SiteScheme`) and what they read of the agent
(:class:`SchemeSite`) are client/schemes/base.py. The agent's handlers (client/tasks.py)
call :func:`site_scheme` and then the scheme's methods; nothing else compares a task's
scheme.
"""

from __future__ import annotations

from typing import Any

from client.schemes.base import SchemeSite, SiteScheme
from client.schemes.paillier import PaillierScheme, ThresholdPaillierScheme
from client.schemes.plain import Float32Scheme, Int8Scheme
from protos import federation_pb2, serde, wire

__all__ = ["SchemeSite", "SiteScheme", "site_scheme"]


FLOAT32 = Float32Scheme()
PAILLIER = PaillierScheme()
THRESHOLD_PAILLIER = ThresholdPaillierScheme()


def site_scheme(task: federation_pb2.Task, config: dict[str, Any]) -> SiteScheme:
    """The scheme of ``task``'s run: its secure scheme, threshold and update quantisation."""
    if serde.scheme_from_proto(task.secure) is serde.SchemeName.PAILLIER:
        return THRESHOLD_PAILLIER if task.threshold else PAILLIER
    bits = wire.update_quantisation(config)
    return FLOAT32 if bits is None else Int8Scheme(bits)
