"""Key custody at a site: its Ed25519 identity, X25519 sealing key and node credential."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import crypto
from crypto import identity


@dataclass
class SiteIdentity:
    """The site's long-lived keys and node token, kept 0600 in its state folder.

    - Ed25519 (the identity): signs the X25519 key, key statements and updates. Peers pin
      its fingerprint out of band, so the coordinator cannot stand in for this site.
    - X25519 (sealing): run keys are sealed to it.

    Private halves never leave the site; the coordinator only ever holds public halves.
    """

    path: Path
    site_name: str
    x25519_private: bytes
    x25519_public: bytes
    node_id: str = ""
    node_token: str = ""
    ed25519_private: bytes = b""
    ed25519_public: bytes = b""

    def __post_init__(self) -> None:
        if not self.ed25519_private:
            # Identity files written before Ed25519 existed gain one on first load.
            self.ed25519_private, self.ed25519_public = identity.generate_ed25519()
            self.save()

    @property
    def fingerprint(self) -> str:
        """What peers pin: `cohort client identity` prints it for the other institutions."""
        return identity.fingerprint(self.ed25519_public)

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with the site's Ed25519 key (its identity that peers pin)."""
        return identity.sign(self.ed25519_private, message)

    def x25519_signature(self) -> bytes:
        """The site's Ed25519 signature binding its X25519 sealing key to its name."""
        return self.sign(identity.x25519_binding(self.site_name, self.x25519_public))

    @classmethod
    def load_or_create(cls, state_dir: Path, site_name: str) -> SiteIdentity:
        """Read the site's identity from ``state_dir``, or create and save one on first start.

        Raises
        ------
        ValueError
            When the file there belongs to another site name.
        """
        path = Path(state_dir) / f"{site_name}.identity.json"
        if path.exists():
            raw = json.loads(path.read_text())
            if raw.get("site_name") != site_name:
                raise ValueError(f"{path} belongs to site {raw.get('site_name')!r}")
            return cls(
                path,
                site_name,
                bytes.fromhex(raw["x25519_private"]),
                bytes.fromhex(raw["x25519_public"]),
                raw.get("node_id", ""),
                raw.get("node_token", ""),
                bytes.fromhex(raw.get("ed25519_private", "")),
                bytes.fromhex(raw.get("ed25519_public", "")),
            )
        private, public = crypto.generate_x25519()
        site = cls(path, site_name, private, public)
        site.save()
        return site

    def save(self) -> None:
        """Write the keys and node token (mode 0600): a restarted agent keeps its identity."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "site_name": self.site_name,
                "x25519_private": self.x25519_private.hex(),
                "x25519_public": self.x25519_public.hex(),
                "node_id": self.node_id,
                "node_token": self.node_token,
                "ed25519_private": self.ed25519_private.hex(),
                "ed25519_public": self.ed25519_public.hex(),
            }
        )
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self.path)

    def remember_node(self, node_id: str, node_token: str) -> None:
        """Keep the node id and token the coordinator issued, saved only when they change."""
        if (node_id, node_token) != (self.node_id, self.node_token):
            self.node_id, self.node_token = node_id, node_token
            self.save()

    def forget_node(self) -> None:
        """Drop the node token (the coordinator refused it), so the agent enrols afresh."""
        self.remember_node("", "")
