#!/usr/bin/env python3
"""Container health check: ask the coordinator's gRPC health service whether it serves.

    healthcheck.py [--ca FILE] [--server-name NAME] [--service NAME] [--timeout S] [HOST:PORT]

Exit 0 when the answer is SERVING, 1 otherwise (with one line on stderr saying why).
With ``--ca`` the check speaks TLS and verifies the coordinator's certificate against that
CA, for ``--server-name`` (a name on the certificate: compose makes it with ``localhost``),
so the check dials 127.0.0.1 but verifies the name the certificate was made for.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    target: str,
    ca: str | None = None,
    server_name: str = "localhost",
    service: str = "",
    timeout: float = 3.0,
) -> tuple[bool, str]:
    if ca:
        with open(ca, "rb") as handle:
            credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
        channel = grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", server_name)]
        )
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.RpcError as exc:
        return False, f"{target}: {exc.code().name} {exc.details()}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--ca", help="CA certificate (PEM): speak TLS")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--service", default="", help="'' = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        ok, message = check(args.target, args.ca, args.server_name, args.service, args.timeout)
    except OSError as exc:
        ok, message = False, f"cannot read the CA certificate: {exc}"
    print(message, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
