"""The buyer's side of a secure aggregate query: plan, key, sign, submit, verify, decrypt, acknowledge.

The SQL is checked against the contract here first for fast, clear refusals
(nodes check again: the buyer is not trusted). The BFV key pair is made once
per contract (`buyer/keys.py`); both parts are copied into the job's folder so
`fedtrust job result` can check and decrypt again.

The coordinator is not trusted either: it relays every participant's
ciphertexts and the receipt. Before anything is decrypted, `finish` verifies
the receipt (every attestation is signed by its node for this job and
contract, all participants exactly once, the coordinator's statement names
exactly the attested outputs), checks that each node's relayed ciphertexts
hash to the outputs that node signed, and adds them itself in an isolated
worker (`he.Adder`: it starts parsing and adding each node's release as it
arrives, and its sum is taken only if it is of exactly the ciphertexts that
passed these checks). Only then does it decrypt, write the result and sign the
acknowledgement; any failed check raises `VerificationError` and nothing is
written or signed. Seeing each node's ciphertext reveals nothing more than
the sum: under the pairwise masks one node's vector decrypts to uniform noise.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fedtrust.buyer.client import CoordinatorClient, JobOutcome, OnProgress
from fedtrust.buyer.jobdir import JobFiles, jobs_root, open_job
from fedtrust.buyer.keys import contract_keys, keys_dir
from fedtrust.errors import ConfigError, InvalidInput, VerificationError
from fedtrust.privacy import he
from fedtrust.privacy.dp import noise_plan
from fedtrust.query.checks import QUERY
from fedtrust.query.decode import ResultTable, decode
from fedtrust.query.layout import Layout
from fedtrust.query.noisy import NoisyResult, decode_noisy
from fedtrust.query.payload import QueryPayload
from fedtrust.query.sql import QueryPlan, plan_query
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.contracts import Contract, contract_envelope, require_signatures, verify_contract
from fedtrust.trust.credentials import Identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.receipts import Acknowledgement, ReceiptBundle, result_digest, sign_acknowledgement
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.verify import VerifiedReceipt, check_relayed, verify_bundle

JOB_TTL = timedelta(hours=1)


@dataclass(frozen=True)
class QueryResult:
    job_id: str
    table: ResultTable
    result: dict  # what result.json holds
    receipt: ReceiptBundle  # with the buyer's acknowledgement
    verified: VerifiedReceipt
    noisy: NoisyResult | None = None  # error bars, when the contract asks for differential privacy


def load_contract(identity: Identity, path: Path) -> tuple[Contract, bytes]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"contract file {path} does not exist") from None
    contract = verify_contract(contract_envelope(raw), identity.exchange_key)
    if identity.credential.role != "buyer" or contract.buyer.name != identity.credential.name:
        raise ConfigError(
            f"these credentials are fedtrust://{identity.credential.role}/{identity.credential.name}, but the contract's "
            f"buyer is {contract.buyer.name}; use the buyer's credentials directory"
        )
    return contract, raw


def check_agreed(contract: Contract, contract_raw: bytes) -> None:
    """The buyer submits only under a contract that it and every owner have signed (nodes would refuse it)."""
    require_signatures(contract_envelope(contract_raw), contract,
                       [("buyer", contract.buyer.name)] + [("node", n) for n in contract.owner_names])


def query_rules(contract: Contract) -> QueryRules:
    """The contract's [query] rules; ConfigError when it sells no queries."""
    rules = contract.rules.query
    if rules is None:
        raise ConfigError("this contract sells no queries (its rules have no [query] table)")
    return rules


def plan_for(contract: Contract, sql: str) -> QueryPlan:
    return plan_query(sql, query_rules(contract), contract.owners[0].product.schema, contract.dataset)


def tls_of(identity: Identity) -> TlsMaterial:
    return TlsMaterial(identity.tls_cert_pem, identity.tls_key_pem, identity.ca_pem)


@dataclass(frozen=True)
class KeptJob:
    """A job this buyer submitted, reopened from its local folder to fetch its result again."""
    files: JobFiles
    meta: dict
    contract: Contract
    client: CoordinatorClient


def reopen(identity: Identity, credentials_dir: Path, job_id: str, coordinator: str | None = None) -> KeptJob:
    """The job's folder, its meta, the contract it was signed under (verified again) and a client of the
    coordinator it went to (`coordinator` overrides the recorded address, e.g. after a move)."""
    files = open_job(credentials_dir, job_id)
    meta = files.read_meta()
    contract, _ = load_contract(identity, files.contract)
    client = CoordinatorClient(coordinator or meta["coordinator"], tls_of(identity), contract.coordinator.name)
    return KeptJob(files, meta, contract, client)


def submit_query(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str, sql: str,
                 on_progress: OnProgress | None = None, timeout: float = 600.0) -> QueryResult:
    contract, contract_raw = load_contract(identity, contract_path)
    contract_env = contract_envelope(contract_raw)
    check_agreed(contract, contract_raw)
    plan = plan_for(contract, sql)  # fast, clear refusal before any key is made or byte is sent
    # an earlier job of this contract carried the same public context to the coordinator, which keeps it
    sent_before = keys_dir(credentials_dir, contract_env.digest).is_dir()
    keys = contract_keys(credentials_dir, contract_env.digest)  # one pair per contract (see buyer/keys.py)
    job = JobSpec.create(contract, contract_env.digest, QueryPayload(sql, keys.params), ttl=JOB_TTL)
    job_env = sign_job(job, identity.signer)
    files = JobFiles(jobs_root(credentials_dir) / job.job_id)
    files.create(keys.secret_bytes, job_env.to_json(), contract_raw,
                 {"job_id": job.job_id, "coordinator": coordinator, "sql": sql, "submitted_at": utc_now()},
                 public=keys.public_bytes)
    # the worker that adds the relayed ciphertexts parsed our own context ahead of time (he.Adder); it adds each
    # node's release as it arrives, and its sum is used only once every check in `finish` passed
    layout = Layout.from_plan(plan, contract.owners[0].product.schema)
    adder = he.start_add(keys.public_bytes, keys.params, (job.contract_digest,), layout.length, len(job.participants))
    try:
        client = CoordinatorClient(coordinator, tls_of(identity), contract.coordinator.name, timeout)
        outcome = client.submit_query(job_env.to_json(), contract_raw, keys.public_bytes, on_progress,
                                      max_nodes=len(job.participants), context_sent_before=sent_before,
                                      on_relayed=adder.feed)
        return finish(identity, files, contract, plan, outcome, adder, keys.secret_bytes)
    finally:
        adder.close()


def fetch_again(identity: Identity, credentials_dir: Path, job_id: str, coordinator: str | None = None) -> QueryResult:
    job = reopen(identity, credentials_dir, job_id, coordinator)
    plan = plan_for(job.contract, job.meta["sql"])
    outcome = job.client.fetch_result(job_id, max_nodes=len(job.contract.owners))
    return finish(identity, job.files, job.contract, plan, outcome)


def finish(identity: Identity, files: JobFiles, contract: Contract, plan: QueryPlan, outcome: JobOutcome,
           adder: he.Adder | None = None, secret: bytes | None = None) -> QueryResult:
    """`secret`: the job's secret context when the caller holds it (the same bytes as the job folder's copy)."""
    bundle = ReceiptBundle.from_json(outcome.receipt)
    if bundle.job.digest != Envelope.from_json(files.job.read_bytes()).digest:
        raise VerificationError("the coordinator returned a receipt for another job")
    verified = verify_bundle(bundle, identity.exchange_key, {QueryPayload.kind: QUERY})
    payload = verified.job.payload_as(QueryPayload, "the buyer's query result")
    per_node = check_relayed(verified, outcome.relayed)
    layout = Layout.from_plan(plan, contract.owners[0].product.schema)
    # the buyer adds the nodes' own releases itself (parsed in a worker: they crossed the network); `adder` began
    # while they arrived, and its sum counts only if it is of exactly these verified ciphertexts
    try:
        if adder is not None:
            total = adder.total(per_node)
        else:
            total = he.add_isolated(files.read_public(), payload.he, per_node, layout.length)
    except InvalidInput as e:
        raise VerificationError(f"the relayed ciphertexts cannot be added: {e}; refusing the result") from None
    summed = he.decrypt(secret if secret is not None else files.secret.read_bytes(), total, layout.length)
    privacy, noisy, noise = contract.rules.privacy, None, None
    if privacy is None:
        table = decode(plan, layout, contract.owners[0].product.schema, summed)
    else:
        # the scales are public (contract, plan, schema): the buyer derives the ones every node used
        noise = noise_plan(layout, privacy.epsilon_per_query, query_rules(contract).min_group_size)
        noisy = decode_noisy(plan, layout, summed, noise, len(verified.job.participants))
        table = noisy.table
    salt = secrets.token_hex(16)
    columns, rows = list(table.columns), [list(r) for r in table.rows]
    result = {
        "columns": columns,
        "rows": rows,
        "job_id": verified.job.job_id,
        "sql": payload.sql,
        "withheld": table.withheld,
        # (group, column, owners): quantities an owner held back because it had too few values there
        "withheld_columns": [[list(k), c, n] for k, c, n in table.withheld_columns],
        "epsilon": verified.epsilon_spent,
        "salt": salt,
    }
    if noisy is not None and noise is not None:
        result["dp"] = {
            "guarantee": "each owner's rows are protected by ε-differential privacy (discrete Laplace, "
                         "record level, enforced by the owner)",
            "noise": noise.to_dict(),
            "participants": len(verified.job.participants),
            "stderr": [list(r) for r in noisy.stderr],
            "ci95": [[list(c) if c else None for c in r] for r in noisy.ci95],
        }
    # the acknowledgement covers the whole document delivered, not only its rows
    digest = result["result_digest"] = result_digest(result)
    ack = sign_acknowledgement(Acknowledgement(job_digest=verified.job_digest, result_digest=digest,
                                               acknowledged_at=utc_now()), identity.signer)
    receipt = ReceiptBundle(bundle.contract, bundle.job, bundle.attestations, bundle.statement, ack)
    files.result.write_text(json.dumps(result, indent=2))
    files.receipt.write_bytes(receipt.to_json())
    return QueryResult(verified.job.job_id, table, result, receipt, verified, noisy)
