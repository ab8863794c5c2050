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
