"""Plaintext schemes at a site: updates as float32 or 8-bit tensors, the model fetched as is.

The coordinator's faces (check the tensors, aggregate with the run's Flower strategy) are
``PlaintextScheme`` in coordinator/schemes.py; the tensor wire format is protos/wire.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

import crypto
from client.link import Update
from protos import federation_pb2, wire
from protos.wire import NDArrays

if TYPE_CHECKING:
    from client.schemes.base import SchemeSite


class Float32Scheme:
    """Deltas as float32 tensors, weighted by the site's example count."""

    encoding = wire.TENSORS_FLOAT32

    def global_model(
        self, site: SchemeSite, task: federation_pb2.Task, config: dict[str, Any]
    ) -> NDArrays:
        """The latest global model, fetched: the coordinator aggregated it in the clear."""
        return site.tensors(task.run_id, task.model_sha256)

    def prepare(self, site: SchemeSite, task: federation_pb2.Task, weights: NDArrays) -> None:
        """Nothing to start before training."""

    def encode(
        self,
        site: SchemeSite,
        task: federation_pb2.Task,
        config: dict[str, Any],
        deltas: NDArrays,
        num_examples: int,
    ) -> Update:
        """The deltas as float32 tensors."""
        return Update(
            wire.encode_tensors(self.tensors(site, deltas)),
            self.encoding,
            num_examples=int(num_examples),
            weight=int(num_examples),
        )

    def tensors(self, site: SchemeSite, deltas: NDArrays) -> NDArrays:
        """What goes on the wire for ``deltas``."""
        return [d.astype(np.float32) for d in deltas]


class Int8Scheme(Float32Scheme):
    """Deltas quantised to ``bits`` per value with per-tensor scales (the run's choice)."""

    encoding = wire.TENSORS_Q8

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def tensors(self, site: SchemeSite, deltas: NDArrays) -> NDArrays:
        """Stochastically rounded integers and their scales (crypto/compress.py)."""
        return crypto.compress_update(deltas, self.bits, site.rng)
