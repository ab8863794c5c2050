"""The operator's link to the coordinator: connection options, the admin stub, run JSON.

Shared by `cohort admin`, `cohort audit` and the dashboard; imports neither torch nor flwr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict

from protos import admin_pb2, admin_pb2_grpc, serde
from protos.transport import open_channel

CoordinatorOption = Annotated[
    str,
    typer.Option("--coordinator", envvar="COHORT_COORDINATOR", help="HOST:PORT of the coordinator"),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="COHORT_CA", help="Federation CA (ca.pem from `admin init`)"),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar="COHORT_ADMIN_TOKEN_FILE",
        help="File holding this operator's bearer token",
    ),
]
InsecureOption = Annotated[
    bool,
    typer.Option("--insecure", envvar="COHORT_INSECURE", help="Plaintext transport (no TLS)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Admin:
    """An admin stub plus the metadata every call carries (bearer token, user name)."""

    def __init__(
        self, coordinator: str, ca: Path | None, token_file: Path | None, insecure: bool
    ) -> None:
        self.stub = admin_pb2_grpc.AdminStub(
            open_channel(coordinator, ca_file=ca, insecure=insecure)
        )
        metadata = [("x-cohort-user", "cli")]
        token = os.environ.get("COHORT_ADMIN_TOKEN", "")
        if token_file is not None:
            token = token_file.read_text().strip()
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self.metadata = tuple(metadata)

    def __getattr__(self, rpc: str) -> Any:
        method = getattr(self.stub, rpc)
        return lambda request, **kw: method(request, metadata=self.metadata, **kw)


def run_dict(run: admin_pb2.RunInfo) -> dict[str, Any]:
    """A run as plain JSON: named state and scheme, the config parsed, counts as numbers."""
    data = MessageToDict(
        run, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["state"] = serde.run_state_name(run.state)
    data["secure"] = str(serde.scheme_from_proto(run.secure))
    data["config"] = serde.config_from_json(run.config_json)
    data.pop("config_json", None)
    # Protobuf's JSON mapping writes 64-bit integers as strings; these are counts, numbers.
    for info in data.get("round_infos", []):
        for key in ("total_weight", "bytes_received"):
            if key in info:
                info[key] = int(info[key])
    return data
