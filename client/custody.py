"""Key custody at a site: its X25519 identity and node credential, kept in its state folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import crypto


@dataclass
class SiteIdentity:
    """The site's long-lived X25519 key pair (sealed run keys are made for it) and node token.

    The private key is written with mode 0600 and never sent anywhere; the coordinator
    only ever holds the public half.
    """

    path: Path
    site_name: str
    x25519_private: bytes
    x25519_public: bytes
    node_id: str = ""
    node_token: str = ""

    @classmethod
    def load_or_create(cls, state_dir: Path, site_name: str) -> SiteIdentity:
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
            )
        private, public = crypto.generate_x25519()
        identity = cls(path, site_name, private, public)
        identity.save()
        return identity

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "site_name": self.site_name,
                "x25519_private": self.x25519_private.hex(),
                "x25519_public": self.x25519_public.hex(),
                "node_id": self.node_id,
                "node_token": self.node_token,
            }
        )
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self.path)

    def remember_node(self, node_id: str, node_token: str) -> None:
        if (node_id, node_token) != (self.node_id, self.node_token):
            self.node_id, self.node_token = node_id, node_token
            self.save()

    def forget_node(self) -> None:
        self.remember_node("", "")
