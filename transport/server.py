"""Start mutual-TLS gRPC servers and open mutual-TLS channels.

`create_server` is how the node and coordinator daemons listen;
`secure_channel` is how the coordinator calls nodes and the CLI calls the
coordinator. Both use the exchange CA from `TlsMaterial` and the shared size
and keepalive options of `fedtrust.transport.limits`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc

from fedtrust.errors import ConfigError
from fedtrust.transport.limits import channel_options, server_options
from fedtrust.transport.tls import TlsMaterial, channel_credentials, server_credentials
from fedtrust.trust.pki import identity_host

__all__ = ["create_server", "secure_channel"]

log = logging.getLogger(__name__)


def _check_address(address: str, what: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{what} {address!r} is not HOST:PORT; write e.g. 127.0.0.1:7443, "
            "[::1]:7443 or 0.0.0.0:0 (port 0 picks a free port)"
        )


def create_server(
    address: str,
    tls: TlsMaterial,
    register: Callable[[grpc.Server], None],
    max_workers: int = 16,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> tuple[grpc.Server, int]:
    """Create, bind and start a mutual-TLS server.

    `register(server)` adds the servicers (e.g. `add_NodeServiceServicer_to_server`).
    Returns the started server and the bound port (the real one when
    `address` ends in `:0`). ConfigError naming the address when it cannot be
    bound. Stop it with `server.stop(grace)`. Calls beyond twice `max_workers` are
    refused (RESOURCE_EXHAUSTED) instead of queueing without bound.
    """
    _check_address(address, "listen address")
    if max_workers < 1:
        raise ConfigError(f"max_workers is {max_workers}; use at least 1")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedtrust-rpc"),
        options=server_options(),
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=2 * max_workers,
    )
    try:
        register(server)
        try:
            port = server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as e:  # grpcio >= 1.5x raises instead of returning 0
            log.debug("bind %s failed: %s", address, e)
            port = 0
        if port == 0:
            raise ConfigError(
                f"cannot listen on {address}: the address is in use, not local to this "
                "host, or not permitted; choose another address or port"
            )
        server.start()
    except BaseException:
        server.stop(None)
        raise
    log.info("listening on %s (port %d, mutual TLS)", address, port)
    return server, port


def secure_channel(target: str, tls: TlsMaterial, subject: tuple[str, str]) -> grpc.Channel:
    """A mutual-TLS channel to `target` ("host:port") that reaches only `subject` (role, name).

    The server must present a certificate from the same CA naming exactly
    that subject: gRPC verifies the subject's identity host name
    (`fedtrust.trust.pki.identity_host`) instead of `host`, so a server with
    any other valid certificate at that address fails the handshake
    (`error_from_rpc` turns it into a VerificationError).
    """
    _check_address(target, "peer address")
    options = channel_options() + [("grpc.ssl_target_name_override", identity_host(*subject))]
    return grpc.secure_channel(target, channel_credentials(tls), options=options)
