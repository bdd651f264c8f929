"""The exchange's domain functions behind `fedtrust exchange …`: init, register, renew, list, contract.

An exchange directory holds the CA (`ca.key` 0600, `ca.crt`), the Ed25519
signing key (`signing.key` 0600, `exchange.pub`), the registry
(`exchange.db`) and the origin of its receipt log (`origin`: the name its
checkpoints are signed under, unique to this exchange). Everything the exchange issues is signed with its key and
recorded in the registry; files handed to subjects are written alongside.
The exchange never makes or sees a subject's private key: subjects send a
signed request (`fedtrust keygen`) and get back public files only.
No CLI code here: the Typer commands call these functions.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtrust.errors import ConfigError, InvalidInput, NotFound, VerificationError
from fedtrust.exchange.store import ExchangeStore
from fedtrust.trust import pki
from fedtrust.trust.canonical import format_time, is_sha256_hex, parse_time, utc_now
from fedtrust.trust.contracts import (
    MAX_PURPOSE_CHARS,
    Contract,
    Holding,
    check_price,
    check_rules,
    sign_contract,
)
from fedtrust.trust.credentials import (
    CREDENTIAL,
    SubjectCredential,
    public_key_pem,
    sign_credential,
    write_credential_files,
    write_file,
)
from fedtrust.trust.dsse import Envelope, Signer, keyid_of
from fedtrust.trust.keygen import load_request, verify_request
from fedtrust.trust.note import check_key_name, verifier_key
from fedtrust.trust.products import Product, check_dataset, sign_product, verify_product
from fedtrust.trust.revocation import (
    MAX_REASON_CHARS,
    RevocationList,
    Revoked,
    check_target,
    sign_revocation_list,
)
from fedtrust.trust.rules import load_rules_toml
from fedtrust.trust.schema import load_schema_toml
from fedtrust.trust.vertical import check_vertical_products

__all__ = ["Exchange", "default_origin", "init_exchange", "load_exchange", "register", "renew", "revoke", "list_product",
           "issue_contract"]

CA_KEY, CA_CERT, SIGNING_KEY, EXCHANGE_PUB, DB = "ca.key", "ca.crt", "signing.key", "exchange.pub", "exchange.db"
ORIGIN_FILE = "origin"
CA_NAME = "fedtrust exchange CA"
#: the longest contract term the exchange issues (the seed rules keep records 30 years; terms are shorter)
MAX_CONTRACT_DAYS = 3660


def parse_when(value: str, what: str) -> datetime:
    """`2026-03-01` (midnight UTC) or an RFC 3339 time with a zone; ConfigError naming `what` otherwise."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        if len(text) == 10:
            return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return parse_time(text)
    except (ValueError, InvalidInput):
        raise ConfigError(f"{what} {value!r} is not a date; write 2026-03-01 or 2026-03-01T09:00:00Z") from None


def contract_window(valid_from: str | None, valid_until: str | None, valid_days: int) -> tuple[str, str]:
    """(valid_from, valid_until) as RFC 3339: from now or `valid_from`, until `valid_until` or `valid_days` later."""
    now = datetime.now(timezone.utc)
    start = parse_when(valid_from, "--valid-from") if valid_from else now
    end = parse_when(valid_until, "--valid-until") if valid_until else start + timedelta(days=valid_days)
    if end <= now:
        raise ConfigError(f"the contract would have ended already ({format_time(end)}); pass a later --valid-until")
    if end <= start:
        raise ConfigError(f"the contract would end ({format_time(end)}) before it starts ({format_time(start)}); "
                          "pass a --valid-until after --valid-from")
    if end - start > timedelta(days=MAX_CONTRACT_DAYS):
        raise ConfigError(f"a contract may last at most {MAX_CONTRACT_DAYS} days; pass an earlier --valid-until")
    return format_time(start), format_time(end)


def check_purpose(purpose: str) -> str:
    text = purpose.strip() if isinstance(purpose, str) else ""
    if not text:
        raise ConfigError("a contract needs --purpose TEXT: what the buyer may use the results for")
    if len(text) > MAX_PURPOSE_CHARS or any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise ConfigError(f"--purpose must be plain text of at most {MAX_PURPOSE_CHARS} characters")
    return text


@dataclass(frozen=True)
class Exchange:
    path: Path
    signer: Signer = field(repr=False)
    ca_key: ec.EllipticCurvePrivateKey = field(repr=False)
    ca_cert: x509.Certificate
    store: ExchangeStore
    origin: str = ""

    @property
    def ca_pem(self) -> bytes:
        return pki.cert_pem(self.ca_cert)

    @property
    def verifier_key(self) -> str:
        """The C2SP signed-note verifier key of its checkpoints: `origin+hash+key`."""
        return verifier_key(self.origin, self.signer.public_key)

    def check_usable(self, cred: SubjectCredential) -> None:
        """ConfigError when the credential's certificate has expired or its subject is revoked (a contract must
        not embed it)."""
        if self.store.revoked("subject", cred.uri) is not None:
            raise ConfigError(f"{cred.uri} is revoked; the exchange issues no contract naming it")
        if pki.certificate_not_after(cred.cert_pem) <= datetime.now(timezone.utc):
            raise ConfigError(f"the credential of {cred.uri} has expired; renew it with `fedtrust exchange renew` "
                              "before issuing a contract")

    def revocation_list(self) -> Envelope:
        """The signed list of everything revoked, dated now (its freshness for `revocation_max_age_h`)."""
        entries = tuple(self.store.revocations())
        return sign_revocation_list(RevocationList(len(entries), utc_now(), entries), self.signer)


def default_origin(public_key) -> str:
    """A log origin unique to an exchange key: `fedtrust.exchange/` + the first 16 hex digits of its sha256."""
    return "fedtrust.exchange/" + keyid_of(public_key).split(":", 1)[1][:16]


def init_exchange(path: str | Path, origin: str | None = None) -> Exchange:
    """Create the CA, the signing key, the log origin and an empty registry; refuse an initialised directory.

    `origin` names this exchange's receipt log in its checkpoints (a schema-less
    URL such as `exchange.example.org/log`); by default it is derived from the key.
    """
    if origin is not None:
        try:
            check_key_name(origin)
        except InvalidInput as e:
            raise ConfigError(f"--origin: {e}") from None
    d = Path(path)
    if any((d / n).exists() for n in (CA_KEY, SIGNING_KEY, DB)):
        raise ConfigError(f"{d} already holds an exchange; use it, or pick an empty directory for a new one")
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} is not a directory; pick an empty directory for the exchange")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_key, ca_cert = pki.create_ca(CA_NAME)
    signing = Ed25519PrivateKey.generate()
    write_file(d / CA_KEY, pki.key_pem(ca_key), secret=True)
    write_file(d / CA_CERT, pki.cert_pem(ca_cert), secret=False)
    write_file(d / SIGNING_KEY, signing.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), secret=True)
    write_file(d / EXCHANGE_PUB, public_key_pem(signing.public_key()), secret=False)
    signer = Signer(signing)
    origin = origin or default_origin(signer.public_key)
    write_file(d / ORIGIN_FILE, (origin + "\n").encode(), secret=False)
    return Exchange(d, signer, ca_key, ca_cert, ExchangeStore(d / DB, signer.public_key), origin)


def _read(d: Path, name: str) -> bytes:
    try:
        return (d / name).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{d} is not an initialised exchange ({name} is missing); run `fedtrust exchange init`") from None
    except OSError as e:
        raise ConfigError(f"cannot read {d / name}: {e.strerror or e}; check its permissions") from None


def load_exchange(path: str | Path) -> Exchange:
    d = Path(path)
    ca_key = pki.load_private_key(_read(d, CA_KEY), str(d / CA_KEY))
    signing = pki.load_private_key(_read(d, SIGNING_KEY), str(d / SIGNING_KEY))
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{d / CA_KEY} is not an ECDSA key; restore the file `exchange init` wrote")
    if not isinstance(signing, Ed25519PrivateKey):
        raise ConfigError(f"{d / SIGNING_KEY} is not an Ed25519 key; restore the file `exchange init` wrote")
    try:
        ca_cert = x509.load_pem_x509_certificate(_read(d, CA_CERT))
    except ValueError:
        raise ConfigError(f"{d / CA_CERT} is not a PEM certificate; restore the file `exchange init` wrote") from None
    if ca_cert.public_key() != ca_key.public_key():
        raise ConfigError(f"{d / CA_CERT} does not match {CA_KEY}; restore the files `exchange init` wrote")
    if not (d / DB).exists():
        raise ConfigError(f"{d} is not an initialised exchange ({DB} is missing); run `fedtrust exchange init`")
    signer = Signer(signing)
    origin = default_origin(signer.public_key)  # exchanges initialised before origins were chosen
    if (d / ORIGIN_FILE).exists():
        try:
            origin = check_key_name(_read(d, ORIGIN_FILE).decode("utf-8").strip())
        except (InvalidInput, UnicodeDecodeError):
            raise ConfigError(f"{d / ORIGIN_FILE} does not hold a log origin; restore the file `exchange init` wrote") from None
    return Exchange(d, signer, ca_key, ca_cert, ExchangeStore(d / DB, signer.public_key), origin)


def register(path: str | Path, request_path: str | Path, out_dir: str | Path) -> SubjectCredential:
    """Certify a subject from the signed request `fedtrust keygen` made; write only public files to `out_dir`.

    The request proves possession of its keys (`verify_request`); the
    exchange signs a credential over the public keys and issues the TLS
    certificate from the CSR. Addresses become SANs for nodes and coordinators.
    """
    return _issue(path, request_path, out_dir, renewal=False)


def _issue(path: str | Path, request_path: str | Path, out_dir: str | Path, *, renewal: bool) -> SubjectCredential:
    envelope = load_request(request_path)
    try:
        request, tls_public = verify_request(envelope)
    except VerificationError as e:
        raise ConfigError(f"request {request_path} is refused: {e}") from None
    ex = load_exchange(path)
    if ex.store.revoked("subject", request.uri) is not None:
        raise ConfigError(f"{request.uri} is revoked; the exchange issues it no credential")
    known = ex.store.has_subject(request.role, request.name)
    if known and not renewal:
        raise ConfigError(f"{request.uri} is already registered; renew it with `fedtrust exchange renew`, "
                          "or choose another name")
    if renewal and not known:
        raise ConfigError(f"{request.uri} is not registered; register it with `fedtrust exchange register` first")
    out = Path(out_dir)
    if (out / CREDENTIAL).exists():
        raise ConfigError(f"{out} already holds a {CREDENTIAL}; write the new credential into another directory")
    hosts = [pki.address_host(a) for a in request.addresses]
    cert = pki.issue_certificate(ex.ca_key, ex.ca_cert, request.role, request.name, hosts, tls_public)
    cred = SubjectCredential(
        role=request.role,
        name=request.name,
        address=request.addresses[0] if request.addresses else None,
        cert_pem=pki.cert_pem(cert).decode("ascii"),
        signing_key=request.signing_key,
        kx_key=request.kx_key,
        issued_at=utc_now(),
    )
    cred_env = sign_credential(cred, ex.signer)
    ex.store.add_subject(cred_env, envelope, replace=renewal)
    write_credential_files(out, credential_envelope=cred_env, tls_cert_pem=pki.cert_pem(cert), ca_pem=ex.ca_pem,
                           exchange_key=ex.signer.public_key)
    return cred


def renew(path: str | Path, request_path: str | Path, out_dir: str | Path) -> SubjectCredential:
    """Reissue the credential of a registered name (new keys and/or addresses); the old one stays valid
    until it expires or is revoked. Recorded in the registry's issue history."""
    return _issue(path, request_path, out_dir, renewal=True)


def revoke(path: str | Path, *, contract: str | None = None, subject: str | None = None, reason: str) -> Revoked:
    """Add a contract (by digest) or a subject (by URI) to the exchange's signed revocation list."""
    if (contract is None) == (subject is None):
        raise ConfigError("pass exactly one of --contract DIGEST or --subject URI")
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise ConfigError(f"--reason must say why, in at most {MAX_REASON_CHARS} characters")
    kind, target = ("contract", contract.strip().lower()) if contract is not None else \
        ("subject", (subject or "").strip())
    try:
        check_target(kind, target)
    except InvalidInput as e:
        raise ConfigError(f"--{kind}: {e}") from None
    ex = load_exchange(path)
    if kind == "contract":
        ex.store.get_contract(target)  # NotFound for a contract this exchange did not issue
    else:
        role, name = pki.parse_subject_uri(target)
        if not ex.store.has_subject(role, name):
            raise ConfigError(f"{target} is not registered at this exchange; check the URI")
    return ex.store.add_revocation(kind, target, reason)


def _write_envelope(out_path: str | Path, envelope: Envelope) -> None:
    p = Path(out_path)
    if p.exists():
        raise ConfigError(f"{p} already exists; choose a new output file")
    p.parent.mkdir(parents=True, exist_ok=True)
    write_file(p, envelope.to_json(), secret=False)


def list_product(
    path: str | Path, owner: str, dataset: str, schema_path: str | Path, commitment: str, out_path: str | Path,
    min_rows: int | None = None,
) -> Product:
    """Sign a product credential for a registered node's dataset version."""
    pki.check_name(owner)
    check_dataset(dataset)
    commitment = commitment.lower() if isinstance(commitment, str) else commitment
    if not is_sha256_hex(commitment):
        raise ConfigError("commitment must be the 64-hex sha256 of the data file (`fedtrust node digest FILE`)")
    schema = load_schema_toml(schema_path)
    ex = load_exchange(path)
    ex.store.get_subject("node", owner)  # NotFound with the register hint
    if Path(out_path).exists():
        raise ConfigError(f"{out_path} already exists; choose a new output file")
    if min_rows is not None and min_rows < 1:
        raise ConfigError("--min-rows must be at least 1 (the fewest rows the data version has)")
    product = Product(owner, dataset, schema, commitment, utc_now(), min_rows)
    envelope = sign_product(product, ex.signer)
    ex.store.add_product(envelope)
    _write_envelope(out_path, envelope)
    return product


def _load_product(ex: Exchange, product_path: str | Path) -> tuple[Product, Envelope]:
    """The product in `product_path`, which must be signed by and recorded at this exchange."""
    p = Path(product_path)
    try:
        envelope = Envelope.from_json(p.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"product file {p} does not exist") from None
    except InvalidInput as e:
        raise ConfigError(f"product file {p} is not a signed envelope: {e}") from None
    try:
        verify_product(envelope, ex.signer.public_key)
        return ex.store.get_product(envelope.digest)
    except (NotFound, VerificationError):
        raise ConfigError(f"product file {p} was not issued by this exchange; list the product here first") from None


def issue_contract(
    path: str | Path,
    buyer: str,
    coordinator: str,
    product_paths: Sequence[str | Path],
    rules_path: str | Path,
    out_path: str | Path,
    price: str = "0",
    *,
    purpose: str,
    valid_from: str | None = None,
    valid_until: str | None = None,
    revocation_max_age_h: int | None = None,
    dealer: str | None = None,
) -> Contract:
    """Sign a contract between a buyer and the owners of the given products, run by a coordinator.

    The exchange signs first; the buyer and every owner then add their
    signatures (`fedtrust contract sign`) before any node serves it.
    `valid_from`/`valid_until` are RFC 3339 times or dates (default: now, and
    `valid_days` of the rules after the start). Credentials that have expired
    or been revoked are not embedded.
    """
    check_price(price)
    purpose = check_purpose(purpose)
    if revocation_max_age_h is not None and not (isinstance(revocation_max_age_h, int) and revocation_max_age_h >= 1):
        raise ConfigError("--revocation-max-age-h must be a whole number of hours, at least 1")
    if buyer == coordinator:
        raise ConfigError("buyer and coordinator must be different subjects; register a separate coordinator")
    rules = load_rules_toml(rules_path)
    ex = load_exchange(path)
    buyer_cred, _ = ex.store.get_subject("buyer", buyer)
    coord_cred, _ = ex.store.get_subject("coordinator", coordinator)
    dealer_cred = ex.store.get_subject("dealer", dealer)[0] if dealer else None
    holdings: list[Holding] = []
    for product_path in product_paths:
        product, envelope = _load_product(ex, product_path)
        owner, _ = ex.store.get_subject("node", product.owner)
        if any(h.credential.name == owner.name for h in holdings):
            raise ConfigError(f"two products of owner {owner.name} were given; each owner joins a contract with one product")
        holdings.append(Holding(owner, product, envelope.digest, envelope))
    if len(holdings) < 2:
        raise ConfigError("a contract needs products of at least two distinct owners; pass one --product per owner")
    holdings.sort(key=lambda h: h.credential.name)
    first = holdings[0].product
    if rules.vertical is not None:
        check_vertical_products(rules.vertical, [h.product for h in holdings])
    for h in holdings[1:] if rules.vertical is None else ():
        if h.product.dataset != first.dataset:
            raise ConfigError("the products name different datasets; a contract covers one dataset")
        if h.product.schema != first.schema:
            raise ConfigError(f"product of {h.credential.name} has a different schema; list all owners with one schema")
    check_rules(rules, first.schema)
    if Path(out_path).exists():
        raise ConfigError(f"{out_path} already exists; choose a new output file")
    start, end = contract_window(valid_from, valid_until, rules.valid_days)
    for cred in [buyer_cred, coord_cred, *(h.credential for h in holdings), *([dealer_cred] if dealer_cred else [])]:
        ex.check_usable(cred)
    contract = Contract(
        contract_id=secrets.token_hex(16),
        buyer=buyer_cred,
        coordinator=coord_cred,
        owners=tuple(holdings),
        rules=rules,
        valid_from=start,
        valid_until=end,
        price=price,
        issued_at=utc_now(),
        purpose=purpose,
        revocation_max_age_h=revocation_max_age_h,
        dealer=dealer_cred,
    )
    envelope = sign_contract(contract, ex.signer)
    ex.store.add_contract(envelope)
    _write_envelope(out_path, envelope)
    return contract
