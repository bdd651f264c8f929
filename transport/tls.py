"""TLS material and gRPC credentials for fedtrust's mutual-TLS channels.

Every fedtrust channel is mutual TLS with certificates issued by the
exchange CA: servers require and verify a client certificate, clients verify
the server against the same CA (the certificates carry the host's DNS name or
IP as SANs, so no target-name override is ever needed). This module only turns
PEM bytes into `grpc` credentials; loading them from a credential directory
is `fedtrust.trust.credentials.load_identity`'s job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fedtrust.errors import ConfigError

__all__ = ["TlsMaterial", "server_credentials", "channel_credentials"]


@dataclass(frozen=True)
class TlsMaterial:
    """This party's certificate and key, and the CA that its peers chain to.

    All three are PEM bytes. The key is left out of `repr` so it never ends
    up in a log line.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes

    def __post_init__(self) -> None:
        for name in ("cert_pem", "key_pem", "ca_pem"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not value.strip():
                raise ConfigError(
                    f"TLS {name} is empty or not bytes; pass the PEM file contents "
                    "of the credential directory written by `fedtrust exchange register`"
                )
            if b"-----BEGIN " not in value:
                raise ConfigError(
                    f"TLS {name} is not PEM; pass the PEM file contents "
                    "(tls.crt, tls.key, ca.crt) of the credential directory"
                )

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, ca: str | Path) -> TlsMaterial:
        """Read the three PEM files; ConfigError naming a file that cannot be read."""
        data = []
        for path in (cert, key, ca):
            try:
                data.append(Path(path).read_bytes())
            except OSError as e:
                raise ConfigError(
                    f"cannot read TLS file {path}: {e.strerror or e}; "
                    "check the credential directory"
                ) from None
        return cls(data[0], data[1], data[2])

    @classmethod
    def from_identity(cls, identity: Any) -> TlsMaterial:
        """From a `fedtrust.trust.credentials.Identity` (its tls_cert_pem,
        tls_key_pem and ca_pem)."""
        return cls(identity.tls_cert_pem, identity.tls_key_pem, identity.ca_pem)


def server_credentials(tls: TlsMaterial) -> grpc.ServerCredentials:
    """Server side: present our certificate, require a client certificate
    chaining to the CA."""
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)],
        root_certificates=tls.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(tls: TlsMaterial) -> grpc.ChannelCredentials:
    """Client side: verify the server against the CA, present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem,
        private_key=tls.key_pem,
        certificate_chain=tls.cert_pem,
    )
