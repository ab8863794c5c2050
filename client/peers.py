"""Pinned peers: the Ed25519 fingerprints of other sites, as this site's people agreed them.

Institutions exchange fingerprints out of band (`cohort client identity` prints this site's;
`cohort client peers add NAME FINGERPRINT` pins another's). A site seals keys to, accepts
key statements from and counts updates of pinned peers only: whatever the coordinator
relays is checked against this file, which the coordinator never sees. Trust on first use
is an explicit opt-in; it records the first key seen for a name and refuses any change.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from crypto import identity
from protos.wire import SITE_NAME

# Site names follow the federation's one rule, protos.wire.SITE_NAME, which the coordinator
# checks too (client never imports coordinator).


class UntrustedPeer(ValueError):
    """A site whose identity is not pinned here, or differs from the pinned one."""


@dataclass
class PeerStore:
    """``site name → fingerprint``, persisted (0600) in the site's state folder."""

    path: Path
    tofu: bool = False
    pins: dict[str, str] = field(default_factory=dict)
    # Which pins were made by trust-on-first-use rather than by a person.
    first_seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, state_dir: Path, site_name: str, *, tofu: bool = False) -> PeerStore:
        """The peer pins of ``site_name`` from its state folder (empty when none are pinned yet).

        With ``tofu``, a peer seen for the first time is pinned on first use, not refused.
        """
        path = Path(state_dir) / f"{site_name}.peers.json"
        store = cls(path, tofu=tofu)
        if path.exists():
            raw = json.loads(path.read_text())
            store.pins = {str(k): identity.normalise_fingerprint(v) for k, v in raw["pins"].items()}
            store.first_seen = set(raw.get("first_seen", []))
        return store

    def pin(self, site: str, fingerprint: str) -> None:
        """Pin (or re-pin, by a person's decision) a site's fingerprint."""
        with self._lock:
            self.pins[site] = identity.normalise_fingerprint(fingerprint)
            self.first_seen.discard(site)
            self._save()

    def remove(self, site: str) -> bool:
        """Unpin ``site``; False when it was not pinned."""
        with self._lock:
            found = self.pins.pop(site, None) is not None
            self.first_seen.discard(site)
            if found:
                self._save()
            return found

    def fingerprint_of(self, site: str) -> str | None:
        """The fingerprint pinned for ``site``, or None."""
        return self.pins.get(site)

    def check(self, site: str, ed25519_public: bytes) -> str:
        """Return the site's fingerprint when ``ed25519_public`` is the pinned identity.

        Raises
        ------
        UntrustedPeer
            When the site is not pinned (and trust-on-first-use is off), or its key differs
            from the pinned one: a coordinator relaying someone else's key is caught here.
        """
        try:
            seen = identity.fingerprint(bytes(ed25519_public))
        except ValueError as exc:
            raise UntrustedPeer(f"site {site!r} sent no valid Ed25519 identity: {exc}") from exc
        with self._lock:
            pinned = self.pins.get(site)
            if pinned is None:
                if not self.tofu:
                    raise UntrustedPeer(
                        f"site {site!r} is not pinned here; compare its fingerprint "
                        f"{identity.format_fingerprint(seen)} out of band, then "
                        f"`cohort client peers add {site} FINGERPRINT`"
                    )
                self.pins[site] = seen
                self.first_seen.add(site)
                self._save()
                return seen
        if pinned != seen:
            raise UntrustedPeer(
                f"site {site!r} presents identity {identity.format_fingerprint(seen)}, but "
                f"{identity.format_fingerprint(pinned)} is pinned: refusing it"
            )
        return seen

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {"pins": self.pins, "first_seen": sorted(self.first_seen)}, indent=1, sort_keys=True
        )
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self.path)


def load_peers_file(path: Path | str) -> dict[str, str]:
    """Read ``site name = fingerprint`` pairs from a TOML or JSON file, fingerprints normalised.

    Either a flat table (``hospital-b = "3f2a 9c01 …"``) or one under ``[peers]``
    (JSON: ``{"peers": {"hospital-b": "…"}}``); ``.json`` files are read as JSON, others
    as TOML. The file is what the institutions agreed out of band: pin its entries with
    :meth:`PeerStore.pin`.

    Raises
    ------
    ValueError
        When the file cannot be parsed, is not a table of strings, or holds a bad
        site name or fingerprint (the message names the entry).
    """
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read peers file {path}: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"peers file {path} is not valid {path.suffix or 'TOML'}: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("peers"), dict):
        raw = raw["peers"]
    if not isinstance(raw, dict):
        raise ValueError(f"peers file {path} must be a table of site name = fingerprint")
    peers: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise ValueError(f"peers file {path}: {name!r} must map to a fingerprint string")
        check_site_name(name)
        try:
            peers[name] = identity.normalise_fingerprint(value)
        except ValueError as exc:
            raise ValueError(f"peers file {path}: {name}: {exc}") from exc
    return peers


def check_site_name(name: str) -> str:
    """A peer's name as the federation spells site names (letters, digits, '.', '_', '-').

    Raises
    ------
    ValueError
        When it is not 1-128 such characters starting with a letter or digit.
    """
    if not SITE_NAME.match(name):
        raise ValueError(
            f"site name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit; got {name!r}"
        )
    return name
