"""`fedtrust exchange serve`: the exchange online, over HTTPS with a certificate from its own CA.

Why stdlib `http.server` + `ssl`: the service is four small JSON endpoints in
front of the same functions the offline commands call; the standard library
gives TLS with optional client certificates (`CERT_OPTIONAL`, the peer's
verified certificate from `getpeercert()`) and one thread per connection,
with no web framework to pin, audit and keep patched on an exchange host.
Every request is bounded (16 MiB body, 30 s socket timeout, TLS handshake in
the worker thread, never in the accept loop), every failure is a JSON
`{"error": ...}` naming the rule, and nothing a client sends can stop it.

Reads need no client certificate: `GET /revocations` (the signed revocation
list, dated now), `GET /checkpoint` (the receipt log's latest C2SP signed
checkpoint), `GET /proofs/inclusion?job=ID[&contract=DIGEST]` and `GET /proofs/consistency?from=N`.
Writes need a certificate from this exchange's CA: `POST /receipts` accepts a
receipt bundle from a party of its job (buyer, coordinator or an owner),
verifies it and records it in the log exactly as `fedtrust exchange verify`.
"""
from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from fedtrust.errors import ConfigError, Error, NotFound, ReplayError, VerificationError
from fedtrust.exchange.issuer import Exchange, load_exchange
from fedtrust.exchange.verify import verify_receipt
from fedtrust.trust import pki
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.receipts import ReceiptBundle

__all__ = ["ExchangeService"]

log = logging.getLogger("fedtrust.exchange")

MAX_BODY_BYTES = 16 * 1024 * 1024
SOCKET_TIMEOUT_S = 30.0
_STATUS = {NotFound: 404, ReplayError: 409, VerificationError: 422, ConfigError: 400}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: "ExchangeService"

    def finish_request(self, request, client_address) -> None:
        request.settimeout(SOCKET_TIMEOUT_S)
        try:
            tls = self.service.ctx.wrap_socket(request, server_side=True)  # handshake here, in the worker thread
        except (ssl.SSLError, OSError) as e:
            log.info("TLS handshake with %s failed: %s", client_address[0], e)
            return
        # typeshed types the handler's third argument as `Self`, which mypy cannot bind through an attribute
        self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def _guard(self, fn) -> None:
        try:
            fn()
        except Error as e:
            status = next((s for cls, s in _STATUS.items() if isinstance(e, cls)), 400)
            self._error(status, f"{e.kind}: {e}")
        except Exception:  # a malformed request never stops the service
            log.exception("internal error answering %s", self.path)
            self._error(500, "internal error at the exchange; see its log")

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _get(self) -> None:
        svc = self.server.service
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/revocations":
            self._send(200, svc.exchange.revocation_list().to_json())
        elif url.path == "/checkpoint":
            self._send(200, json.dumps(svc.checkpoint()).encode())
        elif url.path == "/proofs/inclusion" and q.get("job"):
            lg = svc.exchange.store.log
            contract = q.get("contract", [None])[0]
            self._send(200, json.dumps(lg.inclusion_for_job(q["job"][0], lg.size(), contract).to_dict()).encode())
        elif url.path == "/proofs/consistency" and q.get("from", [""])[0].isdigit():
            lg = svc.exchange.store.log
            self._send(200, json.dumps(lg.consistency(int(q["from"][0]), lg.size()).to_dict()).encode())
        else:
            self._error(404, "unknown endpoint; use /revocations, /checkpoint, /proofs/inclusion?job=ID, "
                             "/proofs/consistency?from=N or POST /receipts")

    def _post(self) -> None:
        if urlsplit(self.path).path != "/receipts":
            self._error(404, "unknown endpoint; POST receipts to /receipts")
            return
        caller = _caller(self.connection)
        if caller is None:
            self._error(401, "writes need a client certificate from this exchange; connect with your credentials")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self._error(413, f"send the receipt with a Content-Length of at most {MAX_BODY_BYTES} bytes")
            return
        bundle = ReceiptBundle.from_json(self.rfile.read(int(length)))
        svc = self.server.service
        contract = verify_contract(bundle.contract, svc.exchange.signer.public_key)
        parties = {("buyer", contract.buyer.name), ("coordinator", contract.coordinator.name)}
        parties |= {("node", n) for n in contract.owner_names}
        if caller not in parties:
            self._error(403, f"fedtrust://{caller[0]}/{caller[1]} is not a party of this receipt's contract; only "
                             "its buyer, coordinator or owners submit it")
            return
        with svc.lock:  # one verification-and-record at a time (replay checks are read-then-write)
            verdict = verify_receipt(svc.exchange.path, bundle)
        v = verdict.verified
        log.info("receipt of job %s under contract %s from %s/%s: %s", v.job.job_id, v.contract_digest[:16],
                 caller[0], caller[1], "already recorded" if verdict.already_recorded else "recorded")
        self._send(200, json.dumps({"valid": True, "job_id": v.job.job_id, "contract_digest": v.contract_digest,
                                    "already_recorded": verdict.already_recorded,
                                    "log_size": svc.exchange.store.log.size()}).encode())


def _caller(sock: ssl.SSLSocket) -> tuple[str, str] | None:
    """(role, name) from the client certificate's fedtrust URI SAN, if it presented one (verified by TLS)."""
    cert = sock.getpeercert()
    if not cert:
        return None
    # (type, value) pairs, as the ssl module documents; typeshed types every certificate field as one union
    sans = cast("tuple[tuple[str, str], ...]", cert.get("subjectAltName", ()))
    uris = [v for k, v in sans if k == "URI" and v.startswith("fedtrust://")]
    if len(uris) != 1:
        return None
    try:
        return pki.parse_subject_uri(uris[0])
    except VerificationError:
        return None


class ExchangeService:
    """The exchange in `directory` served on `listen` (HOST:PORT; port 0 picks one)."""

    def __init__(self, directory: str | Path, listen: str) -> None:
        self.exchange: Exchange = load_exchange(directory)
        self.lock = threading.Lock()
        host, _, port_text = listen.rpartition(":") if isinstance(listen, str) else ("", "", "")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(f"--listen {listen!r} must be HOST:PORT, e.g. 0.0.0.0:7443 or 127.0.0.1:0 (a free port)")
        port = int(port_text)
        self.ctx = self._context(host)
        try:
            self.httpd = _Server((host, port), _Handler, bind_and_activate=True)
        except OSError as e:
            raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}; choose another address or port") from None
        self.httpd.service = self
        self.port: int = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def _context(self, host: str) -> ssl.SSLContext:
        """A fresh server key and certificate from the exchange's CA (never written outside a private temp dir)."""
        key = ec.generate_private_key(ec.SECP256R1())
        hosts = [] if host in ("0.0.0.0", "::") else [host]
        cert = pki.issue_exchange_certificate(self.exchange.ca_key, self.exchange.ca_cert, hosts, key.public_key())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as d:
            for name, data in (("c.pem", pki.cert_pem(cert) + self.exchange.ca_pem), ("k.pem", pki.key_pem(key))):
                fd = os.open(Path(d) / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")
        ctx.load_verify_locations(cadata=self.exchange.ca_pem.decode("ascii"))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # reads are public; writes check the certificate per request
        return ctx

    def checkpoint(self) -> dict:
        lg = self.exchange.store.log
        size = lg.size()
        return {"checkpoint": lg.checkpoint(self.exchange.signer, self.exchange.origin, size), "size": size,
                "verifier_key": self.exchange.verifier_key}

    def start(self) -> int:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fedtrust-exchange", daemon=True)
        self._thread.start()
        log.info("exchange serving on port %d (HTTPS)", self.port)
        return self.port

    def wait(self) -> None:
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(1.0)

    def stop(self, grace: float | None = 0) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
