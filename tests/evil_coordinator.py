"""A malicious coordinator for the tests: the real strategy loop and Grid, with the coordinator's own credentials,
talking to real node daemons over mTLS, but free to plant globals and to relay what it likes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedtrust.buyer.query import load_contract
from fedtrust.coordinator.grid import FedtrustGrid
from fedtrust.coordinator.server_loop import JobArgs, _run
from fedtrust.trust.dsse import Envelope

from jobs_helper import admit_everywhere
from training_helper import identity, signed_job


class _Conn:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, item) -> None:
        self.sent.append(item)


class EvilGrid(FedtrustGrid):
    """Hooks: `plant(phase, rnd, arrays)` changes the outgoing global; `relay(phase, rnd, items)` the forwarded
    vectors; `skip_forward_errors` keeps going after nodes refuse (to show they then release nothing more)."""

    plant = None
    relay = None
    skip_forward_errors = False
    #: (job digest, phase, round) -> the honest signed vectors, kept across jobs
    seen: dict = {}
    #: (job digest, phase, round) -> node -> the error with which it refused the relayed vectors
    refused: dict = {}

    def _check_global(self, phase, rnd, arrays):  # a malicious coordinator skips its own guard
        pass

    def push_messages(self, messages):
        from flwr.app import Array, ArrayRecord

        msgs = list(messages)
        if msgs and self.plant is not None:
            content = msgs[0].content
            rnd = content["config"]["server-round"]
            phase = msgs[0].metadata.message_type
            key = next(k for k, r in content.items() if isinstance(r, ArrayRecord))
            arrays = {k: a.numpy() for k, a in content[key].items()}
            planted = type(self).plant(phase, rnd, arrays)
            if planted is not None:
                content[key] = ArrayRecord({k: Array(np.ascontiguousarray(v, np.float32))
                                            for k, v in planted.items()})
        return super().push_messages(msgs)

    def _forward_all(self, phase, rnd, items):
        type(self).seen[(self.job_digest, phase, rnd)] = list(items)
        if self.relay is not None:
            items = type(self).relay(phase, rnd, list(items))
        if not self.skip_forward_errors:
            return super()._forward_all(phase, rnd, items)
        errors = type(self).refused.setdefault((self.job_digest, phase, rnd), {})
        for node in self.participants:  # one by one, so that every node answers before the next phase
            try:
                self._forward(node, phase, rnd, items)
            except Exception as e:  # noqa: BLE001 - recorded for the test
                errors[node] = str(e)


def evil_grid(**hooks) -> type:
    return type("Evil", (EvilGrid,), {k: staticmethod(v) if callable(v) else v for k, v in hooks.items()})


def new_job(fed, spec):
    """(job envelope JSON, contract JSON, job digest) of a job the buyer signed."""
    job_bytes, contract_raw, _ = signed_job(fed, spec)
    return job_bytes, contract_raw, Envelope.from_json(job_bytes).digest


def run_evil(fed, spec, grid_class, job):
    """Run `job` (from `new_job`) against the federation's real nodes as the (malicious) coordinator."""
    job_bytes, contract_raw, _ = job
    contract, _ = load_contract(identity(fed, "analyst"), fed.contract_path)
    coord = identity(fed, "coord")
    env = Envelope.from_json(job_bytes)
    participants = tuple(contract.owner_names)
    args = JobArgs(job_id=f"evil-{env.digest[:8]}", job_digest=env.digest, job_bytes=job_bytes,
                   contract_bytes=contract_raw, spec=spec.to_dict(), schema=contract.schema.to_dict(),
                   participants=participants,
                   addresses={n: f"127.0.0.1:{fed.nodes[n].port}" for n in participants},
                   tls=(coord.tls_cert_pem, coord.tls_key_pem, coord.ca_pem), node_timeout=60,
                   admissions=tuple(admit_everywhere(fed, job_bytes, contract_raw)))  # phase one, honestly
    return _run(_Conn(), args, grid_class)


def released(fed, job_digest) -> dict[str, list[tuple[str, int]]]:
    """node -> the (phase, round) of every vector it released for the job."""
    return {n: [(p, r) for p, r, _ in d.training.store.released(job_digest)] for n, d in fed.nodes.items()}


def tampered(item, **changes):
    return replace(item, **changes)


__all__ = ["EvilGrid", "evil_grid", "new_job", "run_evil", "released", "tampered"]
