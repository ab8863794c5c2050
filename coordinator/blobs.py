"""Content-addressed blob store on disk: large payloads live here, the database holds sha256s."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class BlobNotFound(KeyError):
    """No blob with that sha256 in the store."""


class BlobStore:
    """Files named by the sha256 of their bytes, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where blob ``sha256`` is stored; BlobNotFound for anything but a lowercase sha256."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BlobNotFound(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its sha256 (a blob already there is not rewritten)."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        new_folder = not target.parent.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            # The rename is durable only once its folder is: an acknowledged update must
            # survive a crash, and so must a folder made for it.
            _fsync_folder(target.parent)
            if new_folder:
                _fsync_folder(target.parent.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, sha256: str) -> bytes:
        """The bytes of blob ``sha256``; BlobNotFound when there is none."""
        target = self.path(sha256)
        try:
            return target.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(sha256) from exc

    def exists(self, sha256: str) -> bool:
        """Whether blob ``sha256`` is stored (False for a malformed digest)."""
        try:
            return self.path(sha256).exists()
        except BlobNotFound:
            return False


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
