"""HTTPS client of `fedtrust exchange serve`, and the daemons' revocation-list refresher.

The exchange's server certificate comes from its own CA and names
`EXCHANGE_HOST`; clients verify it against `ca.crt` with that name (not the
URL's host), so only the exchange answers, wherever it is reached. Reads
need no client certificate; writes (receipts) present the party's own.
Responses are size-limited and parsed as untrusted JSON; what matters (the
revocation list) is checked against the exchange's signature by the caller.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

from fedtrust.errors import ConfigError, Error, InvalidInput, NodeUnreachable, VerificationError
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.pki import EXCHANGE_HOST
from fedtrust.trust.revocation import RevocationHolder

__all__ = ["ExchangeClient", "RevocationRefresher", "check_url", "refresher_for"]

log = logging.getLogger("fedtrust.exchange.client")

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def check_url(url: str) -> tuple[str, int]:
    """(host, port) of `https://HOST:PORT`; ConfigError otherwise."""
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        port = parts.port if parts else None
    except ValueError:
        port = None
    if parts is None or parts.scheme != "https" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ConfigError(f"exchange url {url!r} must be https://HOST:PORT (where `fedtrust exchange serve` listens)")
    return parts.hostname, port


def _load_chain(ctx: ssl.SSLContext, tls: TlsMaterial) -> None:
    """ssl loads a certificate chain from files only: write them 0600 to a private temp folder, load, delete."""
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        for path, data in ((cert, tls.cert_pem), (key, tls.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        ctx.load_cert_chain(cert, key)


class _Pinned(http.client.HTTPSConnection):
    """HTTPS to HOST:PORT that verifies the server as EXCHANGE_HOST."""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=EXCHANGE_HOST)  # type: ignore[attr-defined]


class ExchangeClient:
    def __init__(self, url: str, ca_pem: bytes, tls: TlsMaterial | None = None, timeout: float = 30.0) -> None:
        self.url = url
        self.host, self.port = check_url(url)
        self.ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls is not None:
            _load_chain(self.ctx, tls)
        self.timeout = timeout

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = _Pinned(self.host, self.port, timeout=self.timeout, context=self.ctx)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_BYTES + 1)
        except ssl.SSLCertVerificationError as e:
            raise VerificationError(f"the server at {self.url} is not this exchange (its certificate: {e.verify_message});"
                                    " check [exchange] url") from None
        except (OSError, http.client.HTTPException) as e:
            raise NodeUnreachable(f"exchange at {self.url} could not be reached ({e}); check [exchange] url and that "
                                  "`fedtrust exchange serve` runs there") from None
        finally:
            conn.close()
        if len(data) > MAX_RESPONSE_BYTES:
            raise InvalidInput(f"the exchange at {self.url} sent more than {MAX_RESPONSE_BYTES} bytes")
        return resp.status, data

    def _json(self, method: str, path: str, body: bytes | None = None) -> dict:
        status, data = self._request(method, path, body)
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise InvalidInput(f"the exchange at {self.url} answered {path} with something that is not a JSON object")
        if status != 200:
            raise Error(f"the exchange refused {path}: {doc.get('error', status)}")
        return doc

    def revocations(self) -> bytes:
        """The signed revocation list (envelope JSON); the caller verifies it."""
        status, data = self._request("GET", "/revocations")
        if status != 200:
            raise Error(f"the exchange at {self.url} answered /revocations with HTTP {status}")
        return data

    def checkpoint(self) -> dict:
        return self._json("GET", "/checkpoint")

    def submit_receipt(self, bundle_json: bytes) -> dict:
        """Post a receipt (needs this client's certificate: a party of the job); the exchange's verdict."""
        return self._json("POST", "/receipts", bundle_json)


class RevocationRefresher:
    """Fetches the exchange's revocation list every `refresh_s` into a `RevocationHolder` (a daemon thread)."""

    def __init__(self, client: ExchangeClient, holder: RevocationHolder, refresh_s: float) -> None:
        self.client, self.holder, self.refresh_s = client, holder, refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def refresh(self) -> bool:
        """One fetch; True when a newer list was adopted. Failures are logged once per streak, never raised."""
        try:
            adopted = self.holder.offer(self.client.revocations())
        except Error as e:
            if not self._failing:
                log.warning("could not refresh the revocation list from %s: %s", self.client.url, e)
            self._failing = True
            return False
        if self._failing:
            log.info("revocation list from %s refreshed again", self.client.url)
        self._failing = False
        if adopted and self.holder.current is not None:
            log.info("adopted revocation list #%d (%d entries)", self.holder.current.seq,
                     len(self.holder.current.entries))
        return adopted

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.refresh()
                self._stop.wait(self.refresh_s)

        self._thread = threading.Thread(target=loop, name="fedtrust-revocations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def refresher_for(url: str | None, refresh_s: float, identity, holder: RevocationHolder) -> RevocationRefresher | None:
    """The refresher a daemon runs when its config names `[exchange] url` (None when it runs offline)."""
    if not url:
        return None
    return RevocationRefresher(ExchangeClient(url, identity.ca_pem, timeout=min(30.0, max(1.0, refresh_s))), holder,
                               refresh_s)
