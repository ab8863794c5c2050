"""What a site agent is to the modules that serve it: its configuration and its handle.

The agent (client/agent.py) owns the loop; the gate (client/sovereign.py) and the
threshold steps (client/threshold*.py) read it through :class:`Site`, so none of them
imports the agent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from client.custody import SiteIdentity
from client.peers import PeerStore
from client.pins import RunPins
from client.policy import SitePolicy
from protos import federation_pb2_grpc


class AgentError(RuntimeError):
    """The agent cannot go on (rejected credentials, a key that will not open)."""


Listener = Callable[[str, dict[str, Any]], None]
"""Receives the agent's events ("joined", "task", "refused", …) with their details."""


@dataclass
class AgentConfig:
    """How a site's agent connects and what it keeps: coordinator, state folder, limits, policy."""

    coordinator: str
    site_name: str
    state_dir: Path
    poll_seconds: float = 10.0
    encrypt_workers: int | None = None
    max_backoff_seconds: float = 30.0
    # Held-out rows the audit draws from (it explains a seeded sample of them; explain/).
    audit_rows: int = 1000
    seed: int = 0
    # Stochastic rounding of updates (codec, INT8) draws from OS entropy unless this is set.
    # A coordinator that knew the draws would learn where each value sits between two
    # quantisation steps, so a real site leaves it unset; the demo, whose operator owns
    # every site, sets it so that its figures repeat run after run.
    rounding_seed: int | None = None
    channel_options: list[tuple[str, Any]] = field(default_factory=list)
    # TLS against the federation CA; in-process demos and tests run on loopback in plaintext.
    ca_file: Path | None = None
    insecure: bool = True
    enrolment_token: str = ""
    # The site's own rules; never widened by anything a task says.
    policy: SitePolicy = field(default_factory=SitePolicy)
    # Largest model or aggregate this site downloads: a coordinator announcing more is
    # refused before the bytes are held in memory.
    max_download_bytes: int = 1 << 30


class Site(Protocol):
    """What the gate and the threshold steps read of the agent, and the calls they make."""

    @property
    def config(self) -> AgentConfig:
        """The agent's configuration."""

    @property
    def client(self) -> object:
        """The site's Flower client (what trains)."""

    @property
    def identity(self) -> SiteIdentity:
        """The site's own keys and node token."""

    @property
    def peers(self) -> PeerStore:
        """The peer identities this site pinned."""

    @property
    def pins(self) -> RunPins:
        """The run facts this site pinned at each run's first task."""

    @property
    def stub(self) -> federation_pb2_grpc.FederationStub:
        """The Federation stub the agent calls."""

    @property
    def listener(self) -> Listener:
        """Where the agent reports its events."""

    @property
    def _closing(self) -> threading.Event: ...

    def _metadata(self) -> tuple[tuple[str, str], ...]: ...

    def fetch(self, run_id: str, sha256: str) -> bytes:
        """Download blob ``sha256`` of ``run_id`` from the coordinator."""
