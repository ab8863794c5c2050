"""What every part of the coordinator shares: database, blob store, one lock, one wake-up signal."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.blobs import BlobStore
from coordinator.db import Database


@dataclass(frozen=True)
class Limits:
    """Size and time limits; a request past one gets RESOURCE_EXHAUSTED or a clear error."""

    max_update_bytes: int = 512 << 20
    max_audit_bytes: int = 4 << 20
    max_poll_seconds: float = 30.0
    offline_after_seconds: float = 30.0
    heartbeat_interval_seconds: float = 5.0
    # A node token unused this long expires (each authenticated call pushes it back); an
    # operator token expires this long after it was issued. 0: never.
    node_token_idle_seconds: float = 30 * 86400.0
    operator_token_seconds: float = 90 * 86400.0


@dataclass
class Hub:
    """The coordinator's shared state.

    One process owns the database: state transitions (accepting an update, closing a
    round) happen under ``lock`` so they are atomic with respect to each other, and
    ``changed`` wakes long polls and watchers whenever something moved.
    """

    db: Database
    blobs: BlobStore
    limits: Limits = field(default_factory=Limits)
    lock: threading.RLock = field(default_factory=threading.RLock)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closing: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, database_url: str, data_dir: Path, limits: Limits | None = None) -> Hub:
        db = Database(database_url)
        db.migrate()
        return cls(db=db, blobs=BlobStore(Path(data_dir) / "blobs"), limits=limits or Limits())

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)
