"""Size limits and channel options shared by every fedtrust server and client.

Messages are capped at `MAX_MESSAGE_BYTES` in both directions on both sides
(set explicitly, not left to gRPC's defaults, which differ between send and
receive); anything larger (HE contexts, ciphertexts, model updates) travels
in `CHUNK_BYTES` pieces (`fedtrust.transport.chunks`). Keepalive settings let
a streaming call stay open through minutes of computation without a peer
silently disappearing, and are matched so that the server accepts the
client's pings instead of closing the connection with "too_many_pings".
"""
from __future__ import annotations

import json

from fedtrust.privacy.params import MAX_CIPHERTEXT_BYTES, MAX_CONTEXT_BYTES, MAX_QUERY_CIPHERTEXTS

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_QUERY_CIPHERTEXTS",
    "CHUNK_BYTES",
    "KEEPALIVE_TIME_MS",
    "KEEPALIVE_TIMEOUT_MS",
    "MAX_SEALED_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_QUERY_CIPHERTEXT_BYTES",
    "MAX_RELAYED_NODES",
    "STREAM_SECONDS",
    "channel_options",
    "server_options",
]

#: largest single gRPC message, either direction
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: a signed job spec or contract is a few KB; 1 MiB leaves room for many owners
MAX_ENVELOPE_BYTES = 1 << 20
#: size of the pieces large payloads are streamed in
CHUNK_BYTES = 1024 * 1024

#: payloads that travel in chunks (each reader also checks the size its sender declared):
#: a sealed PSI message (2 million keys of 32 bytes, plus the seal); the contract's max_keys is checked after
MAX_SEALED_BYTES = 64 * 1024 * 1024 + 64
#: a trained model file (safetensors: 10M float32 parameters plus metadata)
MAX_MODEL_BYTES = 48 * 1024 * 1024
#: one node's released ciphertexts of a query (MAX_QUERY_CIPHERTEXTS of at most MAX_CIPHERTEXT_BYTES each)
MAX_QUERY_CIPHERTEXT_BYTES = MAX_QUERY_CIPHERTEXTS * MAX_CIPHERTEXT_BYTES
#: relayed participants when the reader does not know the job's (a receipt holds at most 1024 attestations)
MAX_RELAYED_NODES = 1024
#: longest a request stream may take to arrive at a daemon (the call's own deadline applies when shorter)
STREAM_SECONDS = 600.0

#: client pings an idle-but-open connection this often (also during long calls)
KEEPALIVE_TIME_MS = 60_000
#: and gives up on the peer when a ping is not answered within this
KEEPALIVE_TIMEOUT_MS = 20_000
#: server pings clients less often (detects a vanished buyer or coordinator)
SERVER_KEEPALIVE_TIME_MS = 120_000
#: the server tolerates client pings this close together (must be below
#: KEEPALIVE_TIME_MS, or the server answers GOAWAY "too_many_pings")
MIN_CLIENT_PING_INTERVAL_MS = 30_000

Options = list[tuple[str, int | str]]

#: unary calls that are idempotent by design (a retry gets the same answer, never a second debit), retried by
#: gRPC itself with exponential backoff while the peer is UNAVAILABLE (not yet started, restarting). Streaming
#: calls (RunQuery, TrainRound) are idempotent too, but gRPC's transparent retry of a stream whose server stops
#: mid-call was seen to hang the caller (grpcio 1.85), so they are not retried here.
RETRIED_METHODS = (
    ("fedtrust.v1.NodeService", "AdmitJob"),
    ("fedtrust.v1.NodeService", "FinishTraining"),
    ("fedtrust.v1.CoordinatorService", "GetJob"),
)
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.5s",
    "maxBackoff": "4s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    """The channels' gRPC service config: the retry policy of the idempotent calls."""
    return json.dumps({"methodConfig": [{
        "name": [{"service": svc, "method": m} for svc, m in RETRIED_METHODS],
        "retryPolicy": RETRY_POLICY,
    }]})


def _size_options() -> Options:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def channel_options() -> Options:
    """Options for `grpc.secure_channel`."""
    return _size_options() + [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # channels live for one job or one command: no pings while idle
        ("grpc.keepalive_permit_without_calls", 0),
        # keep pinging while a call waits minutes for its first reply
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        # reconnect soon enough after a refused connection that the retries above can reach a restarted peer
        ("grpc.initial_reconnect_backoff_ms", 300),
        ("grpc.min_reconnect_backoff_ms", 300),
        ("grpc.max_reconnect_backoff_ms", 3000),
        ("grpc.service_config", service_config()),
    ]


def server_options() -> Options:
    """Options for `grpc.server`."""
    return _size_options() + [
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # (the C-core name of GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        # a port already in use must fail to bind instead of being shared
        ("grpc.so_reuseport", 0),
    ]
