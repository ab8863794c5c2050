"""A site's scheme (:class:`SiteScheme`) and what it reads of the agent (:class:`SchemeSite`).

Kept apart from client/schemes/__init__.py so that each scheme module can name them
without importing the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from client.link import Update
from client.site import Site
from protos import federation_pb2
from protos.wire import NDArrays

if TYPE_CHECKING:
    from client.dp_site import PrivacyGuard
    from client.run_keys import RunKeys
    from client.schemes.paillier_model import SecureRuns


class SchemeSite(Site, Protocol):
    """What a scheme reads of the agent, beyond :class:`client.site.Site`."""

    @property
    def custody(self) -> RunKeys:
        """The run keys (or threshold shares) this site opened or made."""

    @property
    def secure(self) -> SecureRuns:
        """Each secure run's model state and obfuscator pool."""

    @property
    def privacy(self) -> PrivacyGuard:
        """The site's privacy ledger and budget gate (site-level DP's pinned layout)."""

    @property
    def rng(self) -> np.random.Generator:
        """The randomness of stochastic rounding (quantisation)."""

    def run_keys(self, task: federation_pb2.Task) -> tuple[Any, Any]:
        """The run's Paillier key pair (private None for a share holder), opened once."""

    def tensors(self, run_id: str, sha256: str) -> NDArrays:
        """Model blob ``sha256`` of ``run_id`` as tensors (cached: the latest one)."""


class SiteScheme(Protocol):
    """A scheme's faces at a site."""

    encoding: str
    """The ``UpdateHeader.encoding`` of its updates (protos/wire.py)."""

    def global_model(
        self, site: SchemeSite, task: federation_pb2.Task, config: dict[str, Any]
    ) -> NDArrays:
        """The round's global weights: fetched, or rebuilt from the aggregates."""
        ...

    def prepare(self, site: SchemeSite, task: federation_pb2.Task, weights: NDArrays) -> None:
        """What to start before training (nothing, or a run's obfuscators)."""
        ...

    def encode(
        self,
        site: SchemeSite,
        task: federation_pb2.Task,
        config: dict[str, Any],
        deltas: NDArrays,
        num_examples: int,
    ) -> Update:
        """The update of ``deltas``: payload, encoding, weight, proof and its metrics."""
        ...
