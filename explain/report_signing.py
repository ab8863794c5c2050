"""Operator signatures on a report file: Ed25519 (RFC 8032) over a tagged statement of its sha256.

A report leaves the coordinator as a file (HTML, PDF or JSON) and travels by mail or a
document system. A detached signature file next to it (``REPORT.sig.json``) lets anyone
holding the operator's public key check offline that the bytes are the ones the operator
signed: any change to the file, or to the statement (who, when), breaks the signature.
The statement is canonical JSON with a domain tag, so a signature made here can never be
replayed as a site's signature on an update or a key dealing (crypto/identity.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crypto import identity

TAG = b"cohort/report-signature/v1\n"
SUFFIX = ".sig.json"


def statement(report_sha256: str, signer: str, signed_unix: float) -> bytes:
    """The exact bytes signed: the tag, then canonical JSON of what is vouched for."""
    body = {"report_sha256": report_sha256, "signer": signer, "signed_unix": signed_unix}
    return TAG + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_report(report: Path, private_raw: bytes, signer: str) -> dict[str, Any]:
    """The detached signature document for ``report`` (write it with :func:`write`)."""
    public = identity.public_from_private(private_raw)
    digest = hashlib.sha256(report.read_bytes()).hexdigest()
    signed_unix = round(time.time(), 3)
    return {
        "format": "cohort-report-signature/1",
        "file": report.name,
        "report_sha256": digest,
        "signer": signer,
        "signed_unix": signed_unix,
        "public_key": public.hex(),
        "fingerprint": identity.fingerprint(public),
        "signature": identity.sign(private_raw, statement(digest, signer, signed_unix)).hex(),
    }


def check_report(report: Path, signature: Mapping[str, Any], public_raw: bytes) -> str:
    """Check ``signature`` of ``report`` against the public key the checker trusts.

    The key comes from the checker, never from the signature file (which anyone can
    write); the file's own ``public_key`` must merely agree with it.

    Returns
    -------
    str
        The signer named in the statement.

    Raises
    ------
    ValueError
        Naming what does not match: the key, the file's bytes, or the signature.
    """
    try:
        digest = str(signature["report_sha256"])
        signer = str(signature["signer"])
        signed_unix = float(signature["signed_unix"])
        sig = bytes.fromhex(str(signature["signature"]))
        claimed = bytes.fromhex(str(signature.get("public_key", public_raw.hex())))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a Cohort report signature: {exc}") from None
    if claimed != public_raw:
        raise ValueError(
            f"signed by key {identity.fingerprint(claimed)}, not the key you trust "
            f"({identity.fingerprint(public_raw)})"
        )
    actual = hashlib.sha256(report.read_bytes()).hexdigest()
    if actual != digest:
        raise ValueError(
            f"{report.name} has changed since it was signed (sha256 {actual[:16]}…, "
            f"signed {digest[:16]}…)"
        )
    try:
        identity.verify(public_raw, statement(digest, signer, signed_unix), sig)
    except ValueError as exc:
        raise ValueError(f"the signature does not verify: {exc}") from None
    return signer


def write(document: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_key(path: Path, private: bool) -> bytes:
    """A raw 32-byte Ed25519 key from a file holding it as hex (what `keygen` writes)."""
    try:
        raw = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ValueError(f"{path} does not hold a hex Ed25519 key") from None
    if len(raw) != 32:
        kind = "private" if private else "public"
        raise ValueError(f"{path}: an Ed25519 {kind} key is 32 bytes, not {len(raw)}")
    return raw
