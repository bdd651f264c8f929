"""`fedtrust dealer serve`: the MPC dealer a contract names (role `dealer`, its own keys and credential).

The dealer deals CrypTen's correlated randomness (`privacy.mpc.dealer`) for the MPC jobs of the contracts that
name it, and does nothing else: it holds no data, sees no input, no opened value and no output. Per session it
checks, before it sends a byte: the contract (signed by the exchange; this dealer is its `dealer`), that the
caller is the contract's coordinator, the job (signed by the buyer, an MPC kind, for exactly the contract's
owners) and that every owner admitted it. Then it deals over links sealed to each owner alone, so the
coordinator relaying them learns nothing, and requests are capped per session. Why a separate subject: a dealer
who also computed (CrypTen's trusted first party) or who colluded with a party could open that party's peers'
masked values; the buyer and the coordinator may collude, so neither may deal. The assumption the README states:
the dealer does not collude with an owner.

Run by the node package's code (it is a party of an MPC session like an owner, without data), as its own
daemon with its own config (`[dealer] name, listen, credentials`).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.config import DealerConfig, check_private_files
from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation, VerificationError
from fedtrust.metrics import DaemonMetrics
from fedtrust.node.mpc_link import StreamLink
from fedtrust.node.mpc_runtime import link_peers, party_names
from fedtrust.node.mpc_servicer import drive_session
from fedtrust.privacy.mpc.dealer import serve_dealer
from fedtrust.privacy.mpc.sealed_link import SealedLink
from fedtrust.transport.daemon import GrpcDaemon
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import read_header
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.admission import verify_admissions
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.credentials import KX_KEY, SIGNING_KEY, TLS_KEY, load_identity_as
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import verify_job
from fedtrust.v1 import mpc_pb2_grpc

__all__ = ["DealerRuntime", "DealerDaemon"]

log = logging.getLogger("fedtrust.dealer")


class DealerRuntime:
    def __init__(self, config: DealerConfig) -> None:
        self.config = config
        check_private_files(config.credentials / f for f in (TLS_KEY, SIGNING_KEY, KX_KEY))
        self.identity = load_identity_as(config.credentials, "dealer", config.name)
        if self.identity.kx_private is None:
            raise ConfigError(f"credentials in {config.credentials} have no kx.key; re-register the dealer")
        self.kx_private: X25519PrivateKey = self.identity.kx_private
        self.name = config.name
        self.skew = timedelta(seconds=config.server.clock_skew_s)
        self.sessions = 0

    def check(self, peer: tuple[str, str], header):
        """Every check of a session before anything is dealt; returns (contract, job, job digest)."""
        contract_env = Envelope.from_json(header.contract_envelope)
        contract = verify_contract(contract_env, self.identity.exchange_key)
        if contract.dealer is None or contract.dealer.name != self.name:
            raise PolicyViolation(f"this contract does not name dealer {self.name}; it deals only for contracts "
                                  "that name it")
        if peer != ("coordinator", contract.coordinator.name):
            raise VerificationError(f"caller fedtrust://{peer[0]}/{peer[1]} is not the contract's coordinator "
                                    f"fedtrust://coordinator/{contract.coordinator.name}")
        job_env = Envelope.from_json(header.job_envelope)
        job = verify_job(job_env, contract, contract_env.digest, skew=self.skew)
        if not job.is_mpc:
            raise InvalidInput(f"job kind {job.kind!r} is not an MPC job; a dealer deals for MPC jobs only")
        verify_admissions([Envelope.from_json(a) for a in header.admissions], contract,
                          contract_digest=contract_env.digest, job_digest=job_env.digest,
                          participants=job.participants, skew=self.skew)
        return contract, job, job_env.digest

    def deal(self, contract, job, job_digest: str, link: StreamLink) -> tuple[bytes, bytes]:
        n = len(job.participants)
        sealed = SealedLink(link, session=job_digest, names=party_names(contract, job), rank=n,
                            own=self.kx_private, peers=link_peers(contract, job))
        dealt = serve_dealer(sealed, n)
        self.sessions += 1
        log.info("dealt %d ring elements for job %s", dealt, job.job_id)
        return b"", b""


class DealerServicer(mpc_pb2_grpc.MpcServiceServicer):
    def __init__(self, runtime: DealerRuntime) -> None:
        self.runtime = runtime

    @guarded
    def Session(self, request_iterator, context):
        peer = peer_identity(context)
        header = read_header(request_iterator)
        contract, job, job_digest = self.runtime.check(peer, header)
        n = len(job.participants)
        link = StreamLink(n, n + 1, idle_s=self.runtime.config.idle_s)
        yield from drive_session(request_iterator, link, lambda lk: self.runtime.deal(contract, job, job_digest, lk),
                                 "dealer")


class DealerDaemon(GrpcDaemon):
    role = "dealer"
    callers = {"fedtrust.v1.MpcService": frozenset({"coordinator"})}

    def __init__(self, config: DealerConfig) -> None:
        self.runtime = DealerRuntime(config)
        ident = self.runtime.identity
        super().__init__(config.name, config.listen, TlsMaterial(ident.tls_cert_pem, ident.tls_key_pem, ident.ca_pem),
                         config.server, DaemonMetrics("dealer"))

    def _register(self):
        servicer = DealerServicer(self.runtime)
        return lambda s: mpc_pb2_grpc.add_MpcServiceServicer_to_server(servicer, s)
