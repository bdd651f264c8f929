"""An in-memory trust world (exchange, CA, four subjects, two products, a contract, a job, a full receipt) shared by
the unit tests of trust/ and the audit tests."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.privacy.params import HeParams
from fedtrust.query.payload import QueryPayload
from fedtrust.trust import pki
from fedtrust.trust.canonical import format_time, sha256_hex, utc_now
from fedtrust.trust.contracts import Contract, Holding, sign_contract, verify_contract
from fedtrust.trust.credentials import (
    SubjectCredential,
    raw_b64,
    sign_credential,
)
from fedtrust.trust.dsse import Envelope, Signer
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.products import Product, sign_product
from fedtrust.trust.receipts import (
    GENESIS,
    Acknowledgement,
    Attestation,
    ChainEntry,
    CoordinatorStatement,
    RelayedOutputs,
    fmt_eps,
    result_digest,
    sign_acknowledgement,
    sign_attestation,
    sign_coordinator_statement,
)
from fedtrust.trust.rules import QueryRules, Rules
from fedtrust.trust.schema import Column, Schema

D = "ab" * 32  # a well-formed digest
RESULT = {"columns": ["n"], "rows": [[3]], "salt": "salt", "withheld": 0}


def _tls_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).public_key()


class World:
    def __init__(self) -> None:
        self.exchange = Signer.generate()
        self.ca_key, self.ca_cert = pki.create_ca("test exchange")
        self.signers: dict[str, Signer] = {}
        self.creds: dict[str, SubjectCredential] = {}
        self.cred_envs: dict[str, Envelope] = {}
        for role, name in [("buyer", "buyer-1"), ("coordinator", "coord-1"), ("node", "node-a"), ("node", "node-b")]:
            self._subject(role, name)
        self.schema = Schema((
            Column("region", "category", values=("north", "south")),
            Column("amount", "float", 0.0, 1000.0),
        ))
        self.product_envs = {
            n: sign_product(Product(n, "claims", self.schema, sha256_hex(n.encode()), utc_now()), self.exchange)
            for n in ("node-a", "node-b")
        }
        rules = Rules(QueryRules(("COUNT", "SUM"), ("amount",), ("region",), ("region",), 5, 10), 30)
        self.contract_env = self.make_contract(rules=rules)
        self.contract = verify_contract(self.contract_env, self.exchange.public_key)
        self.job = JobSpec.create(self.contract, self.contract_env.digest,
                                  QueryPayload("SELECT COUNT(*) FROM claims", HeParams(context_digest=D)))
        self.job_env = sign_job(self.job, self.signers["buyer-1"])
        self.att_envs = {n: sign_attestation(self.attestation(n), self.signers[n]) for n in ("node-a", "node-b")}
        self.statement = CoordinatorStatement(
            self.job_env.digest, self.contract_env.digest, (),
            tuple(self.att_envs[n].digest for n in ("node-a", "node-b")), utc_now(),
            relayed=tuple(RelayedOutputs(n, self.att_envs[n].digest, (D, D)) for n in ("node-a", "node-b")))
        self.statement_env = sign_coordinator_statement(self.statement, self.signers["coord-1"])
        self.ack_env = sign_acknowledgement(
            Acknowledgement(self.job_env.digest, result_digest(RESULT), utc_now()), self.signers["buyer-1"]
        )

    def _subject(self, role: str, name: str) -> None:
        signer = Signer.generate()
        hosts = ["10.1.2.3"] if role != "buyer" else []
        cert = pki.issue_certificate(self.ca_key, self.ca_cert, role, name, hosts, _tls_key())
        kx = raw_b64(X25519PrivateKey.generate().public_key()) if role == "node" else None
        cred = SubjectCredential(role, name, "10.1.2.3:7101" if role == "node" else None,
                                 pki.cert_pem(cert).decode(), raw_b64(signer.public_key), kx, utc_now())
        self.signers[name], self.creds[name] = signer, cred
        self.cred_envs[name] = sign_credential(cred, self.exchange)

    def make_contract(self, *, buyer: str = "buyer-1", coordinator: str = "coord-1",
                      owners: tuple[str, ...] = ("node-a", "node-b"), rules: Rules | None = None,
                      days: int = 30, start: datetime | None = None, **holding_overrides: Any) -> Envelope:
        start = start or datetime.now(timezone.utc)
        envs = {n: self.product_envs.get(n, self.product_envs["node-b"]) for n in owners}
        holdings = tuple(
            replace(Holding(self.creds[n], Product.from_dict(json.loads(envs[n].payload)["predicate"]), envs[n].digest,
                            envs[n]), **holding_overrides)
            for n in owners
        )
        rules = rules or Rules(QueryRules(("COUNT",), (), (), (), 1, 10), days)
        c = Contract("c0ffee", self.creds[buyer], self.creds[coordinator], holdings, rules,
                     format_time(start), format_time(start + timedelta(days=days)), "100.50", format_time(start))
        return sign_contract(c, self.exchange)

    def attestation(self, node: str) -> Attestation:
        return Attestation(
            node=node, job_digest=self.job_env.digest, contract_digest=self.contract_env.digest,
            product_digest=self.product_envs[node].digest, data_commitment=sha256_hex(node.encode()),
            code_digest=D, outputs=(D, D), epsilon=fmt_eps(0), delta=fmt_eps(0),
            chain=ChainEntry(1, GENESIS, "0.000000"), dp=False, started_at=utc_now(), released_at=utc_now(),
        )
