"""Site policy: what this site will build, send and decrypt, from its own flags and TOML.

The coordinator proposes; the site decides. Nothing in a task can widen this policy:
model specs that import code (``module:factory``, ``hf:``) run only when the site itself
names them, and a site decrypts only aggregates that enough pinned peers signed.
"""

from __future__ import annotations

from dataclasses import dataclass


class TaskRefused(Exception):
    """This site will not do a task; ``code`` and ``reason`` reach the operator.

    Codes: ``policy`` (the site's rules forbid it), ``pin`` (the run changed something this
    site pinned), ``verify`` (a signature, manifest or product did not check),
    ``decode`` (an aggregate did not decode), ``budget`` (privacy budget), ``error``.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SitePolicy:
    """A site's rules. Defaults are the safe ones."""

    # Registry names this site builds; () means every built-in registry model.
    allowed_models: tuple[str, ...] = ()
    # Model specs that import code (``module:factory``, ``hf:/dir``), named by the site.
    extra_model_specs: tuple[str, ...] = ()
    # Refuse plaintext runs: this site sends updates only under encryption.
    require_secure: bool = False
    # Fewest distinct pinned sites whose signed updates an aggregate must sum before this
    # site decrypts it: with fewer, the "aggregate" reveals an individual site's update.
    min_aggregate_sites: int = 3
    # Custodians whose key statements this site accepts; () means any pinned peer.
    trusted_custodians: tuple[str, ...] = ()
    # Trust on first use for peers not pinned yet (records them; refuses a change).
    tofu: bool = False
