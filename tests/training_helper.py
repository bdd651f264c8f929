"""Helpers for the training tests: specs, signed jobs (also ones an honest CLI never signs), direct node calls."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.coordinator.training_client import NodeTrainingClient
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JOB_TYPE, JobSpec, sign_job

APPS = Path(__file__).resolve().parent / "training_apps.py"
TEST_APPS = {"raising": "raising", "nan-update": "nan_update", "oversized": "oversized", "chatty": "chatty",
             "no-loss": "no_loss", "gated": "gated"}
MODELS = ["logreg", "mlp", *TEST_APPS]


def clientapps_toml() -> str:
    digest = hashlib.sha256(APPS.read_bytes()).hexdigest()
    return "".join(f'\n[[clientapps]]\nname = "{name}"\ntarget = "training_apps:{attr}"\ndigest = "{digest}"\n'
                   for name, attr in TEST_APPS.items())


def make_spec(**changes) -> TrainingSpec:
    base = {"dataset": "loans", "model": "logreg", "features": ["income", "age", "region"], "label": "defaulted",
            "strategy": "fedavg", "rounds": 3, "local_epochs": 1, "batch_size": 64, "learning_rate": 0.5}
    if changes.get("model") in TEST_APPS:
        changes.setdefault("model_options", {"architecture": "logreg"})
    return TrainingSpec.from_dict({**base, **changes}, defaults=True)


def identity(fed, name: str):
    return load_identity(fed.root / "credentials" / name)


def signed_job(fed, spec: TrainingSpec | dict, contract_path: Path | None = None) -> tuple[bytes, bytes, JobSpec | None]:
    """(job envelope JSON, contract JSON, job); a dict spec is signed as is, bypassing every local check."""
    buyer = identity(fed, "analyst")
    contract, raw = load_contract(buyer, contract_path or fed.contract_path)
    digest = Envelope.from_json(raw).digest
    if isinstance(spec, TrainingSpec):
        job = JobSpec.create(contract, digest, spec)
        return sign_job(job, buyer.signer).to_json(), raw, job
    good = JobSpec.create(contract, digest, make_spec()).to_dict()
    env = buyer.signer.sign_statement(JOB_TYPE, {**good, "training": spec}, [("contract", digest)])
    return env.to_json(), raw, None


def round_message(arrays: dict, rnd: int, phase: str = "train", named: str | None = None,
                  carried: bool = True) -> bytes:
    """A round's Flower message carrying `arrays` as the global, and/or (`named`) naming a global by digest."""
    from flwr.app import ConfigRecord, Message, Metadata, RecordDict
    from flwr.common.serde import message_to_proto

    from fedtrust.training.arrays import GLOBAL_RECORD, to_array_record

    meta = Metadata(run_id=1, message_id=f"m{rnd}", src_node_id=1, dst_node_id=1000, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=3600, message_type=phase)
    records = {"arrays": to_array_record(arrays)} if carried else {}
    if named is not None:
        records[GLOBAL_RECORD] = ConfigRecord({"digest": named})
    msg = Message(metadata=meta, content=RecordDict({**records, "config": ConfigRecord({"server-round": rnd})}))
    return message_to_proto(msg).SerializeToString()


class AdmittingClient(NodeTrainingClient):
    """A node's training client that runs phase one (every owner admits, this node first) before a round."""

    def __init__(self, fed, node: str, caller: str) -> None:
        super().__init__(node, f"127.0.0.1:{fed.nodes[node].port}", tls_of(identity(fed, caller)), 60)
        self.fed, self.caller = fed, caller

    def train_round(self, job, contract, message, expected, admissions=None):
        from jobs_helper import admit_everywhere

        if admissions is None:
            admissions = admit_everywhere(self.fed, job, contract, first=self.node, caller=self.caller)
        return super().train_round(job, contract, message, expected, tuple(admissions))


def node_client(fed, node: str, caller: str = "coord") -> NodeTrainingClient:
    return AdmittingClient(fed, node, caller)


def initial(fed, spec: TrainingSpec, seed: int = 1, job: bytes | None = None) -> dict:
    """Initial arrays from `seed`, or, given a signed job, the round-1 global that job determines."""
    from fedtrust.training.models import initial_arrays
    from fedtrust.training.preprocess import Preprocessor
    from fedtrust.training.server_step import initial_seed

    if job is not None:
        seed = initial_seed(Envelope.from_json(job).digest)
    buyer = identity(fed, "analyst")
    contract, _ = load_contract(buyer, fed.contract_path)
    pre = Preprocessor.build(contract.schema, spec.features, spec.label)
    return initial_arrays(spec, pre.width, pre.outputs, seed)


def vector_bytes(arrays: dict, phase: str = "train") -> int:
    return 8 * ((sum(a.size for a in arrays.values()) if phase == "train" else 0) + 3)


def stalled_worker(conn, args) -> None:
    """A training worker stuck in its last participant's round-1 call, as a hung gRPC call would leave it: it
    reports that it waits on that node, then sends nothing more (the coordinator's watchdog must stop it)."""
    from fedtrust.progress import Progress

    conn.send(("progress", Progress("started", 0, len(args.participants)).to_dict()))
    conn.send(("waiting", {args.participants[-1]: "train round 1"}))
    time.sleep(3600)
