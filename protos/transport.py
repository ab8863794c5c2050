"""Opening a channel to the coordinator: TLS against the federation CA, or explicit --insecure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

TLS_REQUIRED = (
    "TLS is on by default: pass --ca FILE (the federation's ca.pem from `cohort admin init`) "
    "or --insecure for plaintext transport"
)


def open_channel(
    address: str,
    *,
    ca_file: Path | None = None,
    insecure: bool = False,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel that trusts only the federation's CA, or a plaintext one when asked for.

    Raises
    ------
    ValueError
        When neither a CA nor ``insecure`` is given: plaintext is never a silent default.
    FileNotFoundError
        When the CA file does not exist.
    """
    if ca_file is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.secure_channel(address, credentials, options=list(options))
    if insecure:
        return grpc.insecure_channel(address, options=list(options))
    raise ValueError(TLS_REQUIRED)


def transport_mismatch(detail: str) -> str | None:
    """Say in words when a failed connection is TLS meeting plaintext, or None otherwise.

    gRPC reports a plaintext client against a TLS server only as "Socket closed" (the
    server drops the bytes that are not a TLS hello), and a TLS client against a
    plaintext server as a handshake failure (``WRONG_VERSION_NUMBER``); neither names
    the cause.
    """
    if "WRONG_VERSION_NUMBER" in detail or "handshake failed" in detail.lower():
        if "WRONG_VERSION_NUMBER" in detail:
            return (
                "TLS handshake failed: the coordinator answers in plaintext; it was started "
                "with --insecure, so connect with --insecure (or serve it with --tls-dir)"
            )
        return (
            "TLS handshake failed: the coordinator's certificate is not signed by this CA "
            "(--ca) or does not name this address"
        )
    # Only at connect time: a call cut off later (a coordinator going down) also says it.
    if "failed to connect" in detail and detail.rstrip().endswith("Socket closed"):
        return (
            "the coordinator closed a plaintext connection: it serves TLS; connect with "
            "--ca ca.pem instead of --insecure"
        )
    return None
