"""The exchange CA and subject certificates for gRPC mutual TLS.

The CA is ECDSA P-256, self-signed, valid 10 years. Subject certificates are
ECDSA P-256, valid 1 year, and usable as both TLS server and client
certificates; the exchange issues them from the subject's own CSR and never
sees the private key. Each names its subject twice: in a URI SAN
`fedtrust://<role>/<name>`, which servers read from the TLS auth context on
every call, and in a DNS SAN `<name>.<role>.fedtrust.invalid` (a reserved
TLD, never a real host), which clients pass to gRPC as the name to verify, so
a server holding any other subject's valid certificate fails the handshake
(identity pinning: grpcio offers no hook to inspect the server's certificate).
Nodes and coordinators also carry the hosts of their advertised addresses
(DNS or IP); nobody gets `localhost` or `127.0.0.1` unless it asked for it.
"""
from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta, timezone
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtrust.errors import ConfigError, VerificationError

__all__ = [
    "ROLES", "NAME_PATTERN", "check_name", "check_role", "subject_uri", "parse_subject_uri",
    "create_ca", "issue_certificate", "verify_certificate", "load_certificate", "certificate_subject",
    "key_pem", "cert_pem", "load_private_key", "address_host", "identity_host", "make_csr", "check_csr",
    "certificate_not_after", "ADDRESS_ROLES", "KX_ROLES", "EXCHANGE_HOST", "issue_exchange_certificate",
]

ROLES = ("node", "buyer", "coordinator", "dealer")
#: roles that run a server others dial, so their certificates carry address SANs
ADDRESS_ROLES = ("node", "coordinator", "dealer")
#: roles that hold a key-agreement (X25519) key: owners' nodes and MPC dealers (sealed MPC links)
KX_ROLES = ("node", "dealer")
IDENTITY_SUFFIX = "fedtrust.invalid"
#: the host name the exchange service's certificate carries and its clients verify
EXCHANGE_HOST = f"exchange.{IDENTITY_SUFFIX}"
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME = re.compile(NAME_PATTERN)
_URI = re.compile(rf"fedtrust://(node|buyer|coordinator|dealer)/({NAME_PATTERN})")
_DNS = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")

CA_DAYS = 3650
CERT_DAYS = 365
#: certificates start slightly in the past so peers with a skewed clock accept them
BACKDATE = timedelta(minutes=5)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"subject name {name!r} is not allowed; use 1-63 characters from a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}")
    return role


def subject_uri(role: str, name: str) -> str:
    return f"fedtrust://{check_role(role)}/{check_name(name)}"


def identity_host(role: str, name: str) -> str:
    """The DNS SAN naming a subject, which clients verify as the server's host name."""
    return f"{check_name(name)}.{check_role(role)}.{IDENTITY_SUFFIX}"


def parse_subject_uri(uri: str) -> tuple[str, str]:
    """`fedtrust://<role>/<name>` → (role, name); VerificationError for anything else."""
    m = _URI.fullmatch(uri) if isinstance(uri, str) else None
    if m is None:
        raise VerificationError(
            "peer identity is not a fedtrust subject URI (fedtrust://node|buyer|coordinator/<name>); "
            "use a certificate issued by `fedtrust exchange register`"
        )
    return m.group(1), m.group(2)


def _name(common_name: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtrust")]
    if role:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def create_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed ECDSA P-256 CA certificate valid for 10 years."""
    if not isinstance(common_name, str) or not 1 <= len(common_name) <= 64:
        raise ConfigError("CA common name must be 1-64 characters")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS.fullmatch(host):
        raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name; pass a reachable host name or IP")
    return x509.DNSName(host.lower())


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    role: str,
    name: str,
    hosts: Sequence[str],
    public_key: ec.EllipticCurvePublicKey,
) -> x509.Certificate:
    """An ECDSA P-256 server+client certificate for `fedtrust://<role>/<name>` and `public_key`, valid 1 year.

    SANs: the subject URI, its identity host name, and (nodes and
    coordinators only) the hosts of its addresses.
    """
    uri = subject_uri(role, name)
    if hosts and role not in ADDRESS_ROLES:
        raise ConfigError(f"a {role} runs no server, so its certificate carries no address; drop --address")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise ConfigError("the TLS key must be ECDSA P-256; generate it with `fedtrust keygen`")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName(identity_host(role, name))]
    return _leaf(ca_key, ca_cert, _name(name, role), sans, hosts, public_key,
                 [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def issue_exchange_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str],
    public_key: ec.EllipticCurvePublicKey,
) -> x509.Certificate:
    """The exchange service's TLS server certificate: DNS SAN `EXCHANGE_HOST` (what clients pin) and its hosts."""
    return _leaf(ca_key, ca_cert, _name("exchange", "exchange"), [x509.DNSName(EXCHANGE_HOST)], hosts, public_key,
                 [ExtendedKeyUsageOID.SERVER_AUTH])


def _leaf(ca_key, ca_cert, subject: x509.Name, sans: list, hosts: Sequence[str], public_key, eku) -> x509.Certificate:
    for host in hosts:
        san = _host_san(host)
        if san not in sans:
            sans.append(san)
    now = datetime.now(timezone.utc)
    not_after = min(now + timedelta(days=CERT_DAYS), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(eku),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert


def make_csr(key: ec.EllipticCurvePrivateKey, role: str, name: str) -> bytes:
    """A PEM CSR for `fedtrust://<role>/<name>`, signed by the subject's TLS key (proof of possession)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(check_name(name), check_role(role)))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject_uri(role, name))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_csr(pem: str | bytes, role: str, name: str) -> ec.EllipticCurvePublicKey:
    """The CSR's P-256 public key, once its self-signature verifies and it names `fedtrust://<role>/<name>`."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, TypeError):
        raise VerificationError("the request's csr is not a PEM certificate signing request; rerun `fedtrust keygen`") from None
    if not csr.is_signature_valid:
        raise VerificationError("the CSR's signature does not verify: it was not signed by the TLS key it carries")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError("the CSR's key is not ECDSA P-256; generate it with `fedtrust keygen`")
    if csr.subject != _name(name, role):
        raise VerificationError(f"the CSR names another subject than {subject_uri(role, name)}; rerun `fedtrust keygen`")
    return key


def certificate_not_after(pem: str | bytes) -> datetime:
    return load_certificate(pem).not_valid_after_utc


def load_certificate(pem: bytes | str) -> x509.Certificate:
    """Parse one PEM certificate; VerificationError when it is not one."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError):
        raise VerificationError("certificate is not a PEM X.509 certificate; use the tls.crt written by the exchange") from None


def certificate_subject(cert: x509.Certificate) -> tuple[str, str]:
    """(role, name) from the certificate's single fedtrust URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationError("certificate has no subject alternative names; it does not name a fedtrust subject") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("fedtrust://")]
    if len(uris) != 1:
        raise VerificationError("certificate must name exactly one fedtrust://<role>/<name> URI")
    return parse_subject_uri(uris[0])


def verify_certificate(cert_pem: bytes | str, ca_pem: bytes, *, at: datetime | None = None) -> tuple[str, str]:
    """Check that `cert_pem` chains to the CA in `ca_pem` and is valid `at` (default now).

    Uses cryptography's web-PKI chain validator with a client-certificate
    policy (signature, validity, key usages, CA constraints), then returns
    (role, name) from the certificate's URI SAN.
    """
    from cryptography.x509.verification import PolicyBuilder, Store
    from cryptography.x509.verification import VerificationError as ChainError

    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except (ValueError, TypeError):
        raise ConfigError("CA certificate is not PEM; use the ca.crt written by the exchange") from None
    cert = load_certificate(cert_pem)
    when = at or datetime.now(timezone.utc)
    verifier = PolicyBuilder().store(Store([ca])).time(when).build_client_verifier()
    try:
        verifier.verify(cert, [])
    except ChainError as e:
        raise VerificationError(
            f"certificate does not chain to this exchange's CA or is not valid now ({e}); "
            "use a certificate issued by this exchange"
        ) from None
    return certificate_subject(cert)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file is written 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_private_key(pem: bytes, what: str) -> object:
    """Load an unencrypted PKCS#8 PEM private key; ConfigError naming `what` otherwise."""
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{what} is not an unencrypted PEM private key; use the file written by the exchange") from None


def address_host(address: str) -> str:
    """The host of `host:port` or `[v6]:port`; ConfigError when malformed."""
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {address!r} must be HOST:PORT, e.g. 10.0.0.5:7101 or node-a.example:7101")
    _host_san(host)
    return host
