"""Who is calling: the mTLS peer's fedtrust identity.

A caller is identified only by its client certificate (verified by the TLS
handshake against the exchange CA), never by a field it sends. Its identity
is the certificate's URI SAN `fedtrust://<role>/<name>`, which grpcio
(checked with 1.85) exposes as `context.auth_context()["peer_uri"]` — one
entry per URI SAN, as bytes. (`x509_subject_alternative_name` lists every
SAN, DNS names and IPs included, so it is not used.)
"""
from __future__ import annotations

import grpc

from fedtrust.errors import VerificationError
from fedtrust.trust.pki import parse_subject_uri

__all__ = ["PEER_URI_KEY", "peer_identity", "require_peer"]

#: auth_context key carrying the peer certificate's URI SANs
PEER_URI_KEY = "peer_uri"
_SCHEME = "fedtrust://"


def peer_identity(context: grpc.ServicerContext) -> tuple[str, str]:
    """(role, name) of the caller, from its certificate's fedtrust URI SAN.

    VerificationError when the call is not mutual TLS or the certificate does
    not carry exactly one valid fedtrust:// URI.
    """
    auth = context.auth_context() or {}
    uris = []
    for raw in auth.get(PEER_URI_KEY, ()):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if text.startswith(_SCHEME):
            uris.append(text)
    if not uris:
        raise VerificationError(
            "caller presented no certificate with a fedtrust:// URI; connect with the "
            "TLS credentials issued by the exchange"
        )
    if len(uris) > 1:
        raise VerificationError(
            "caller's certificate names more than one fedtrust:// identity; the exchange "
            "issues exactly one per certificate"
        )
    return parse_subject_uri(uris[0])  # VerificationError when malformed


def require_peer(context: grpc.ServicerContext, role: str, name: str) -> tuple[str, str]:
    """Check that the caller is `fedtrust://<role>/<name>`; returns (role, name).

    VerificationError "caller fedtrust://x/y is not the contract's <role>
    fedtrust://<role>/<name>" otherwise.
    """
    got = peer_identity(context)
    if got != (role, name):
        raise VerificationError(
            f"caller {_SCHEME}{got[0]}/{got[1]} is not the contract's {role} {_SCHEME}{role}/{name}"
        )
    return got
