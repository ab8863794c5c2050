"""The federation's certificates: a CA, the coordinator's TLS certificate, the first admin token."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
ADMIN_TOKEN = "admin.token"


@dataclass(frozen=True)
class FederationPki:
    """Where ``cohort admin init`` put the federation's files."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The federation CA's certificate: what sites and operators trust."""
        return self.directory / CA_CERT

    @property
    def server_cert(self) -> Path:
        """The coordinator's TLS certificate, signed by the CA."""
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        """The coordinator's TLS private key."""
        return self.directory / SERVER_KEY

    @property
    def admin_token(self) -> Path:
        """The first admin operator's token, written by ``cohort admin init``."""
        return self.directory / ADMIN_TOKEN

    def server_credentials(self) -> grpc.ServerCredentials:
        """The server certificate and key as gRPC TLS credentials; FileNotFoundError names one."""
        for path in (self.server_cert, self.server_key):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: run `cohort admin init --dir {self.directory}` first"
                )
        return grpc.ssl_server_credentials(
            [(self.server_key.read_bytes(), self.server_cert.read_bytes())]
        )


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cohort federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_federation(
    directory: Path, hostnames: list[str], *, force: bool = False, valid_days: int = 825
) -> FederationPki:
    """Make the CA, the coordinator's certificate for ``hostnames`` and the first admin token.

    Refuses to overwrite an existing CA unless ``force``: replacing it would cut every
    site off. Private keys and the token are written with mode 0600.
    """
    pki = FederationPki(Path(directory))
    if pki.ca_cert.exists() and not force:
        raise FileExistsError(f"{pki.ca_cert} exists; pass --force to replace the federation CA")
    if not hostnames:
        raise ValueError("at least one --hostname is needed for the coordinator's certificate")
    pki.directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Cohort federation CA"))
        .issuer_name(_name("Cohort federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(pki.directory / CA_KEY, _pem_key(ca_key), private=True)
    _write(pki.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(pki.server_key, _pem_key(server_key), private=True)
    _write(pki.admin_token, secrets.token_urlsafe(32).encode(), private=True)
    return pki
