"""fedtrust.transport: mutual TLS, peer identity, limits, chunks, error mapping.

Starts real gRPC servers on 127.0.0.1:0 with certificates made here with
`cryptography` (ECDSA P-256, SAN URI fedtrust://<role>/<name>, DNS localhost,
IP 127.0.0.1, EKU server+client auth), as the exchange CA issues them.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtrust import errors
from fedtrust.transport import chunks, limits, peer, status
from fedtrust.transport.chunks import Assembler, frame, split, unframe
from fedtrust.transport.server import create_server, secure_channel
from fedtrust.transport.tls import TlsMaterial, channel_credentials
from fedtrust.trust.pki import identity_host
from fedtrust.v1 import node_pb2, node_pb2_grpc

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
SERVICE = "fedtrust.test.Probe"
#: the subject the probe server's certificate names; clients pin it
N1 = ("node", "n1")


# --------------------------------------------------------------------------
# certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], role: str, name: str) -> TlsMaterial:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{role} {name}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(f"fedtrust://{role}/{name}"),
                x509.DNSName(identity_host(role, name)),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsMaterial(
        cert.public_bytes(serialization.Encoding.PEM),
        _pem_key(key),
        ca_cert.public_bytes(serialization.Encoding.PEM),
    )


@pytest.fixture(scope="module")
def pki() -> dict[str, TlsMaterial]:
    ca = make_ca("fedtrust test exchange CA")
    other = make_ca("some other CA")
    return {
        "node": issue(ca, "node", "n1"),
        "coordinator": issue(ca, "coordinator", "c1"),
        "buyer": issue(ca, "buyer", "b1"),
        "foreign": issue(other, "coordinator", "c1"),
    }


# --------------------------------------------------------------------------
# a server with a few probe methods and the generated NodeService


@status.guarded
def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    role, name = peer.peer_identity(context)
    return f"{role}/{name}".encode()


@status.guarded
def _size(request: bytes, context: grpc.ServicerContext) -> bytes:
    return str(len(request)).encode()


@status.guarded
def _boom(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise RuntimeError("secret row value 4242 leaked")


@status.guarded
def _refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise errors.PolicyViolation(
        "column salary is not allowed by the contract; query one of the allowed columns"
    )


@status.guarded
def _only_c9(request: bytes, context: grpc.ServicerContext) -> bytes:
    peer.require_peer(context, "coordinator", "c9")
    return b"ok"


@status.guarded
def _counting(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"1"
    yield b"2"
    raise errors.BudgetExhausted("query cap of 2 reached; buy a new contract")


@status.guarded
def _stream_boom(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"1"
    raise KeyError("secret-key-name")


@status.guarded
def _returns_iterator(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    def gen():
        yield b"a"
        raise errors.NotFound("job j1 is unknown; check the job id")

    return gen()


@status.guarded
def _direct_abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    status.abort(context, errors.ReplayError("job id j1 was already used; submit a new job"))


HE_LIMIT = 4 * MiB


class FakeNode(node_pb2_grpc.NodeServiceServicer):
    """Echoes the chunked HE context back as two framed 'ciphertexts'."""

    @status.guarded
    def RunQuery(self, request_iterator, context):  # noqa: N802 - gRPC name
        peer.require_peer(context, "coordinator", "c1")
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise errors.InvalidInput("RunQuery must start with a QueryHeader")
        asm = Assembler(first.header.he_context_size, HE_LIMIT, "HE context")
        for req in request_iterator:
            if req.WhichOneof("part") != "he_context_chunk":
                raise errors.InvalidInput("only HE context chunks may follow the header")
            asm.add(req.he_context_chunk)
        context_bytes = asm.finish()
        sizes, parts = frame([context_bytes[::-1], context_bytes[:10]])
        for part in parts:
            yield node_pb2.QueryReply(ciphertext_chunk=part)
        yield node_pb2.QueryReply(
            release=node_pb2.Release(attestation_envelope=b"{}", ciphertext_sizes=sizes)
        )


def _register(server: grpc.Server) -> None:
    u = grpc.unary_unary_rpc_method_handler
    s = grpc.unary_stream_rpc_method_handler
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Whoami": u(_whoami),
                "Size": u(_size),
                "Boom": u(_boom),
                "Refuse": u(_refuse),
                "OnlyC9": u(_only_c9),
                "Counting": s(_counting),
                "StreamBoom": s(_stream_boom),
                "ReturnsIterator": s(_returns_iterator),
                "DirectAbort": u(_direct_abort),
            },
        ),
    ))
    node_pb2_grpc.add_NodeServiceServicer_to_server(FakeNode(), server)


@pytest.fixture(scope="module")
def server(pki) -> Iterator[tuple[grpc.Server, str]]:
    srv, port = create_server("127.0.0.1:0", pki["node"], _register, max_workers=4)
    try:
        yield srv, f"127.0.0.1:{port}"
    finally:
        srv.stop(0)


@pytest.fixture
def client(server, pki) -> Iterator[grpc.Channel]:
    ch = secure_channel(server[1], pki["coordinator"], N1)
    try:
        yield ch
    finally:
        ch.close()


def _unary(ch: grpc.Channel, method: str, req: bytes = b"") -> bytes:
    return ch.unary_unary(f"/{SERVICE}/{method}")(req, timeout=10)


def _kind(e: grpc.RpcError) -> str | None:
    return dict(e.trailing_metadata() or ()).get(status.ERROR_KIND_KEY)


# --------------------------------------------------------------------------
# mutual TLS and identity


def test_mtls_call_sees_client_identity(client):
    assert _unary(client, "Whoami") == b"coordinator/c1"


def test_other_client_identity(server, pki):
    with secure_channel(server[1], pki["buyer"], N1) as ch:
        assert _unary(ch, "Whoami") == b"buyer/b1"


def test_client_without_certificate_is_refused(server, pki):
    creds = grpc.ssl_channel_credentials(root_certificates=pki["coordinator"].ca_pem)
    with grpc.secure_channel(server[1], creds) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _unary(ch, "Whoami")
    assert ei.value.code() is grpc.StatusCode.UNAVAILABLE
    err = status.error_from_rpc(ei.value, "node n1")
    assert isinstance(err, errors.NodeUnreachable)
    assert "node n1" in str(err)


def test_client_from_other_ca_is_refused(server, pki):
    # trusts the right CA for the server, but its own certificate is foreign
    foreign = pki["foreign"]
    tls = TlsMaterial(foreign.cert_pem, foreign.key_pem, pki["coordinator"].ca_pem)
    with secure_channel(server[1], tls, N1) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _unary(ch, "Whoami")
    assert ei.value.code() is grpc.StatusCode.UNAVAILABLE


def test_server_from_other_ca_is_refused(server, pki):
    with secure_channel(server[1], pki["foreign"], N1) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _unary(ch, "Whoami")
    assert ei.value.code() is grpc.StatusCode.UNAVAILABLE


def test_require_peer_mismatch(client):
    with pytest.raises(grpc.RpcError) as ei:
        _unary(client, "OnlyC9")
    assert ei.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert ei.value.details() == (
        "caller fedtrust://coordinator/c1 is not the contract's coordinator "
        "fedtrust://coordinator/c9"
    )
    err = status.error_from_rpc(ei.value, "node n1")
    assert type(err) is errors.VerificationError


class _FakeContext:
    def __init__(self, auth):
        self._auth = auth

    def auth_context(self):
        return self._auth


def test_peer_identity_parsing():
    ok = _FakeContext({"peer_uri": [b"fedtrust://node/n-1.a_b"]})
    assert peer.peer_identity(ok) == ("node", "n-1.a_b")
    for auth in (
        {},
        {"peer_uri": [b"spiffe://x/y"]},
        {"peer_uri": [b"fedtrust://admin/x"]},
        {"peer_uri": [b"fedtrust://node/Bad"]},
        {"peer_uri": [b"fedtrust://node/"]},
        {"peer_uri": [b"fedtrust://node/a/b"]},
        {"peer_uri": [b"fedtrust://node/a", b"fedtrust://buyer/b"]},
    ):
        with pytest.raises(errors.VerificationError):
            peer.peer_identity(_FakeContext(auth))
    with pytest.raises(errors.VerificationError, match="not the contract's buyer fedtrust://buyer/b"):
        peer.require_peer(ok, "buyer", "b")


# --------------------------------------------------------------------------
# limits


def test_oversized_message_refused_locally_and_by_server(client, server, pki):
    big = b"\0" * (limits.MAX_MESSAGE_BYTES + 1)
    # our own channel refuses to send it
    with pytest.raises(grpc.RpcError) as ei:
        _unary(client, "Size", big)
    assert ei.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(status.error_from_rpc(ei.value, "node n1"), errors.InvalidInput)
    # a client that would send it: the server refuses it
    tls = pki["coordinator"]
    with grpc.secure_channel(
        server[1],
        channel_credentials(tls),
        options=[("grpc.max_send_message_length", 64 * MiB)],
    ) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _unary(ch, "Size", big)
        assert ei.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # the server is still serving, on this channel and others
        assert _unary(ch, "Size", b"abc") == b"3"
    assert _unary(client, "Size", b"\0" * (limits.MAX_MESSAGE_BYTES // 2)) == str(
        limits.MAX_MESSAGE_BYTES // 2
    ).encode()


def test_options_set_both_limits():
    for opts in (limits.channel_options(), limits.server_options()):
        d = dict(opts)
        assert d["grpc.max_send_message_length"] == 16 * MiB
        assert d["grpc.max_receive_message_length"] == 16 * MiB
    assert (
        dict(limits.server_options())["grpc.http2.min_ping_interval_without_data_ms"]
        < dict(limits.channel_options())["grpc.keepalive_time_ms"]
    )


# --------------------------------------------------------------------------
# error mapping


def test_internal_error_is_generic_and_server_survives(client, caplog):
    with caplog.at_level(logging.ERROR, logger="fedtrust.transport.status"):
        with pytest.raises(grpc.RpcError) as ei:
            _unary(client, "Boom")
    e = ei.value
    assert e.code() is grpc.StatusCode.INTERNAL
    assert e.details() == status.INTERNAL_MESSAGE
    assert "4242" not in e.details() and "secret" not in e.details()
    assert _kind(e) == "internal"
    assert "secret row value 4242" in caplog.text  # logged locally
    err = status.error_from_rpc(e, "node n1")
    assert str(err) == "node n1: internal error; see the daemon log"
    assert _unary(client, "Whoami") == b"coordinator/c1"


def test_policy_violation_round_trip(client):
    with pytest.raises(grpc.RpcError) as ei:
        _unary(client, "Refuse")
    e = ei.value
    assert e.code() is grpc.StatusCode.PERMISSION_DENIED
    assert _kind(e) == "policy"
    err = status.error_from_rpc(e, "node n1")
    assert type(err) is errors.PolicyViolation
    assert str(err) == (
        "column salary is not allowed by the contract; query one of the allowed columns"
    )


def test_abort_inside_guarded_handler(client):
    with pytest.raises(grpc.RpcError) as ei:
        _unary(client, "DirectAbort")
    assert ei.value.code() is grpc.StatusCode.ALREADY_EXISTS
    err = status.error_from_rpc(ei.value, "the coordinator")
    assert type(err) is errors.ReplayError
    assert str(err) == "job id j1 was already used; submit a new job"


def test_streaming_error_after_messages(client):
    call = client.unary_stream(f"/{SERVICE}/Counting")(b"", timeout=10)
    got = []
    with pytest.raises(grpc.RpcError) as ei:
        for m in call:
            got.append(m)
    assert got == [b"1", b"2"]
    assert ei.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    err = status.error_from_rpc(ei.value, "coordinator")
    assert type(err) is errors.BudgetExhausted
    assert str(err) == "query cap of 2 reached; buy a new contract"

    call = client.unary_stream(f"/{SERVICE}/StreamBoom")(b"", timeout=10)
    with pytest.raises(grpc.RpcError) as ei:
        list(call)
    assert ei.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in ei.value.details()
    assert _unary(client, "Whoami") == b"coordinator/c1"

    call = client.unary_stream(f"/{SERVICE}/ReturnsIterator")(b"", timeout=10)
    with pytest.raises(grpc.RpcError) as ei:
        list(call)
    assert ei.value.code() is grpc.StatusCode.NOT_FOUND
    assert type(status.error_from_rpc(ei.value, "the coordinator")) is errors.NotFound


def test_status_table():
    table = {
        errors.InvalidInput("x"): grpc.StatusCode.INVALID_ARGUMENT,
        errors.ConfigError("x"): grpc.StatusCode.INVALID_ARGUMENT,
        errors.VerificationError("x"): grpc.StatusCode.UNAUTHENTICATED,
        errors.PolicyViolation("x"): grpc.StatusCode.PERMISSION_DENIED,
        errors.BudgetExhausted("x"): grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.ReplayError("x"): grpc.StatusCode.ALREADY_EXISTS,
        errors.NotFound("x"): grpc.StatusCode.NOT_FOUND,
        errors.NodeUnreachable("x"): grpc.StatusCode.UNAVAILABLE,
        errors.JobFailed("x"): grpc.StatusCode.ABORTED,
        errors.Error("x"): grpc.StatusCode.INTERNAL,
        ValueError("x"): grpc.StatusCode.INTERNAL,
    }
    for err, code in table.items():
        assert status.status_code(err) is code, err


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, kind=None):
        self._code, self._details, self._kind = code, details, kind

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ((status.ERROR_KIND_KEY, self._kind),) if self._kind else ()


@pytest.mark.parametrize(
    "cls",
    [
        errors.InvalidInput, errors.ConfigError, errors.VerificationError,
        errors.PolicyViolation, errors.BudgetExhausted, errors.ReplayError,
        errors.NotFound, errors.NodeUnreachable, errors.JobFailed,
    ],
)
def test_error_from_rpc_every_kind(cls):
    e = _FakeRpcError(status.status_code(cls("m")), "the message", cls.kind)
    err = status.error_from_rpc(e, "node n1")
    assert type(err) is cls and str(err) == "the message"


def test_error_from_rpc_without_kind():
    err = status.error_from_rpc(_FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "node n7")
    assert isinstance(err, errors.NodeUnreachable) and "node n7 did not answer in time" in str(err)
    err = status.error_from_rpc(_FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, ""), "node n7")
    assert isinstance(err, errors.ConfigError)
    err = status.error_from_rpc(_FakeRpcError(grpc.StatusCode.UNKNOWN, "?"), "node n7")
    assert type(err) is errors.Error and "node n7" in str(err)


# --------------------------------------------------------------------------
# generated NodeService + chunks over the wire


def _run_query(ch: grpc.Channel, context_bytes: bytes, declared: int | None = None):
    stub = node_pb2_grpc.NodeServiceStub(ch)

    def requests():
        size = len(context_bytes) if declared is None else declared
        yield node_pb2.QueryRequest(header=node_pb2.QueryHeader(he_context_size=size))
        for c in split(context_bytes):
            yield node_pb2.QueryRequest(he_context_chunk=c)

    asm = Assembler(None, 64 * MiB, "ciphertexts")
    release = None
    for reply in stub.RunQuery(requests(), timeout=10):
        if reply.WhichOneof("part") == "ciphertext_chunk":
            asm.add(reply.ciphertext_chunk)
        else:
            release = reply.release
    assert release is not None
    return unframe(list(release.ciphertext_sizes), asm.finish(), what="ciphertexts", limit=64 * MiB)


def test_node_service_chunked_round_trip(client):
    data = bytes(range(256)) * (10 * 1024 + 7)  # ~2.5 MiB
    out = _run_query(client, data)
    assert out == [data[::-1], data[:10]]


def test_node_service_refuses_oversized_context(client):
    with pytest.raises(grpc.RpcError) as ei:
        _run_query(client, b"x" * 100, declared=5 * MiB)
    assert ei.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ei.value.details().startswith("HE context exceeds 4194304 bytes; ")
    with pytest.raises(grpc.RpcError) as ei:
        _run_query(client, b"x" * 100, declared=99)
    assert ei.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_node_service_checks_caller(server, pki):
    with secure_channel(server[1], pki["buyer"], N1) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _run_query(ch, b"abc")
    assert ei.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "caller fedtrust://buyer/b1 is not the contract's coordinator" in ei.value.details()


# --------------------------------------------------------------------------
# chunks, unit


def test_split_and_assemble():
    assert list(split(b"")) == []
    assert list(split(b"abcdefg", 3)) == [b"abc", b"def", b"g"]
    asm = Assembler(7, 10, "blob")
    for c in split(b"abcdefg", 3):
        asm.add(c)
    assert asm.finish() == b"abcdefg"


def test_assembler_limits():
    with pytest.raises(errors.InvalidInput, match=r"^HE context exceeds 4194304 bytes; "):
        Assembler(4194305, 4194304, "HE context")
    asm = Assembler(None, 5, "blob")
    asm.add(b"abc")
    with pytest.raises(errors.InvalidInput, match="blob exceeds 5 bytes"):
        asm.add(b"abc")
    asm = Assembler(3, 10, "blob")
    with pytest.raises(errors.InvalidInput, match="declared size"):
        asm.add(b"abcd")
    asm = Assembler(3, 10, "blob")
    asm.add(b"ab")
    with pytest.raises(errors.InvalidInput, match="ended after 2 of its declared 3"):
        asm.finish()
    with pytest.raises(errors.InvalidInput):
        Assembler(-1, 10, "blob")


def test_frame_unframe():
    blobs = [b"a" * 5, b"", b"b" * 7, b"c"]
    sizes, parts = frame(blobs, size=4)
    parts = list(parts)
    assert sizes == [5, 0, 7, 1]
    assert all(len(p) <= 4 for p in parts) and b"".join(parts) == b"".join(blobs)
    assert unframe(sizes, parts, what="ciphertexts", limit=100) == blobs
    assert unframe(sizes, b"".join(parts), what="ciphertexts", limit=100) == blobs
    with pytest.raises(errors.InvalidInput):
        unframe(sizes, parts, what="ciphertexts", limit=10)
    with pytest.raises(errors.InvalidInput):
        unframe(sizes, parts, what="ciphertexts", limit=100, limit_each=6)
    with pytest.raises(errors.InvalidInput):
        unframe(sizes, parts, what="ciphertexts", limit=100, max_count=3)
    with pytest.raises(errors.InvalidInput):
        unframe([5, 0, 7, 2], parts, what="ciphertexts", limit=100)
    with pytest.raises(errors.InvalidInput):
        unframe([5, 0, 7], parts, what="ciphertexts", limit=100)
    with pytest.raises(errors.InvalidInput):
        unframe([-1, 14], parts, what="ciphertexts", limit=100)
    assert chunks.CHUNK_BYTES == MiB


# --------------------------------------------------------------------------
# server creation


def test_port_in_use_is_config_error(server, pki):
    with pytest.raises(errors.ConfigError, match=server[1].replace(".", r"\.")):
        create_server(server[1], pki["node"], _register)


def test_bad_address_is_config_error(pki):
    for address in ("nonsense", "127.0.0.1", "127.0.0.1:99999", ":80"):
        with pytest.raises(errors.ConfigError):
            create_server(address, pki["node"], _register)
    with pytest.raises(errors.ConfigError):
        secure_channel("no-port", pki["node"], N1)


def test_tls_material_hides_key_and_validates(pki):
    assert b"PRIVATE KEY" not in repr(pki["node"]).encode()
    assert "key_pem" not in repr(pki["node"])
    with pytest.raises(errors.ConfigError):
        TlsMaterial(b"", b"x", b"y")
    with pytest.raises(errors.ConfigError):
        TlsMaterial(b"not pem", b"not pem", b"not pem")


# --------------------------------------------------------------------------
# certificates issued by fedtrust.trust.pki work with the transport


def test_pki_issued_certificates_interoperate_and_pin_the_server_identity():
    from fedtrust.trust import pki as tp

    ca_key, ca_cert = tp.create_ca("fedtrust test exchange")
    ca_pem = tp.cert_pem(ca_cert)

    def material(role: str, name: str, hosts=()) -> TlsMaterial:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = tp.issue_certificate(ca_key, ca_cert, role, name, list(hosts), key.public_key())
        return TlsMaterial(tp.cert_pem(cert), tp.key_pem(key), ca_pem)

    srv, port = create_server("127.0.0.1:0", material("node", "n2", ["127.0.0.1"]), _register, max_workers=2)
    try:
        with secure_channel(f"127.0.0.1:{port}", material("coordinator", "c1"), ("node", "n2")) as ch:
            assert _unary(ch, "Whoami") == b"coordinator/c1"
            assert _run_query(ch, b"ctx" * 1000)[1] == b"ctx" * 3 + b"c"
        # a valid certificate of the same CA, but another subject than the one dialled: refused in the handshake
        for other in [("node", "n3"), ("buyer", "n2"), ("coordinator", "c1")]:
            with secure_channel(f"127.0.0.1:{port}", material("buyer", "b2"), other) as ch:
                with pytest.raises(grpc.RpcError) as ei:
                    _unary(ch, "Whoami")
            err = status.error_from_rpc(ei.value, f"{other[0]} {other[1]}")
            assert isinstance(err, errors.VerificationError)
            assert f"{other[0]} {other[1]} answered with a certificate that does not name that subject" in str(err)
    finally:
        srv.stop(0)
    # a buyer's certificate (no address SAN: buyers run no server) on a node's address is refused
    srv, port = create_server("127.0.0.1:0", material("buyer", "n2"), _register, max_workers=2)
    try:
        with secure_channel(f"127.0.0.1:{port}", material("coordinator", "c1"), ("node", "n2")) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                _unary(ch, "Whoami")
        assert isinstance(status.error_from_rpc(ei.value, "node n2"), errors.VerificationError)
    finally:
        srv.stop(0)


def test_daemons_warn_thirty_days_before_their_certificate_expires(caplog):
    from fedtrust.transport.daemon import warn_if_expiring
    from fedtrust.trust import pki as tp

    ca_key, ca_cert = tp.create_ca("fedtrust test exchange")
    cert = tp.issue_certificate(ca_key, ca_cert, "node", "n9", [], ec.generate_private_key(ec.SECP256R1()).public_key())
    pem, end = tp.cert_pem(cert), cert.not_valid_after_utc
    with caplog.at_level(logging.WARNING, logger="fedtrust.daemon"):
        assert not warn_if_expiring(pem, "node n9", end - datetime.timedelta(days=31))
        assert warn_if_expiring(pem, "node n9", end - datetime.timedelta(days=29))
        assert warn_if_expiring(pem, "node n9", end + datetime.timedelta(days=1))
    assert "expires at" in caplog.text and "in 29 days" in caplog.text and "expired at" in caplog.text


def test_pooled_channels_are_kept_per_subject_and_still_pin_the_server_identity():
    from fedtrust.transport.channels import ChannelPool, channel_to
    from fedtrust.trust import pki as tp

    ca_key, ca_cert = tp.create_ca("fedtrust test exchange")
    ca_pem = tp.cert_pem(ca_cert)

    def material(role: str, name: str, hosts=()) -> TlsMaterial:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = tp.issue_certificate(ca_key, ca_cert, role, name, list(hosts), key.public_key())
        return TlsMaterial(tp.cert_pem(cert), tp.key_pem(key), ca_pem)

    coord = material("coordinator", "c1")
    srv, port = create_server("127.0.0.1:0", material("node", "n2", ["127.0.0.1"]), _register, max_workers=2)
    pool = ChannelPool()
    try:
        target = f"127.0.0.1:{port}"
        with channel_to(pool, target, coord, ("node", "n2")) as ch:
            assert _unary(ch, "Whoami") == b"coordinator/c1"
        with channel_to(pool, target, coord, ("node", "n2")) as again:
            assert again is ch and _unary(again, "Whoami") == b"coordinator/c1"  # kept open, reused
        # the same address dialled as another subject gets its own channel, refused in its handshake
        with channel_to(pool, target, coord, ("node", "n3")) as other:
            assert other is not ch
            with pytest.raises(grpc.RpcError) as ei:
                _unary(other, "Whoami")
        assert isinstance(status.error_from_rpc(ei.value, "node n3"), errors.VerificationError)
        # other own credentials never share a channel either
        with channel_to(pool, target, material("coordinator", "c9"), ("node", "n2")) as mine:
            assert mine is not ch and _unary(mine, "Whoami") == b"coordinator/c9"
        pool.close()
        with channel_to(pool, target, coord, ("node", "n2")) as fresh:  # a closed pool: one-off channels
            assert fresh is not ch and _unary(fresh, "Whoami") == b"coordinator/c1"
    finally:
        pool.close()
        srv.stop(0)
