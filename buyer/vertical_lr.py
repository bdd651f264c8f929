"""The buyer's side of a vertical-lr job: check, submit as an MPC job, open and add the owners' shares, write the model;
fetch a finished job's result again (`fedtrust job result`) the same way.

The job is an MPC job (`buyer.mpc`): a fresh output key per job, the owners' output shares sealed to it, a receipt
every owner attested, the shares added here. The result names each input's weight, the bias and the digest of the
model file built from them (`training.vertical_lr.model_file`); the buyer's acknowledgement covers that result,
so `fedtrust exchange verify … --result result.json` binds the model file too. `fedtrust predict` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fedtrust.buyer.client import OnProgress
from fedtrust.buyer.jobdir import open_job
from fedtrust.buyer.mpc import MpcOutcome, fetch_mpc_again, submit_mpc
from fedtrust.buyer.query import load_contract
from fedtrust.training.vertical_lr_program import model_of_result
from fedtrust.trust.credentials import Identity
from fedtrust.trust.vertical_lr import VerticalLRSpec, check_vertical_lr

__all__ = ["VerticalLROutcome", "submit_vertical_lr", "fetch_vertical_lr_again", "MODEL_FILE"]

MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class VerticalLROutcome:
    mpc: MpcOutcome
    model: bytes  # the safetensors file

    result_path: Path  # the result.json the acknowledgement covers (names the model file's digest)

    @property
    def job_id(self) -> str:
        return self.mpc.job_id


def submit_vertical_lr(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str,
                       spec: VerticalLRSpec, on_progress: OnProgress | None = None,
                       timeout: float = 3600.0) -> VerticalLROutcome:
    contract, _ = load_contract(identity, contract_path)
    check_vertical_lr(contract, spec)  # fast, clear refusal before any key is made or byte is sent
    out = submit_mpc(identity, credentials_dir, contract_path, coordinator, lambda key: replace(spec, output_key=key),
                     {"vertical_lr": spec.to_dict()}, on_progress, timeout)
    return _with_model(credentials_dir, out)


def fetch_vertical_lr_again(identity: Identity, credentials_dir: Path, job_id: str,
                            coordinator: str | None = None) -> VerticalLROutcome:
    """A finished vertical-lr job's result again: the relayed shares opened with the job's stored key, the receipt
    verified, the model file rebuilt (the same bytes: it is a function of the verified result)."""
    return _with_model(credentials_dir, fetch_mpc_again(identity, credentials_dir, job_id, coordinator))


def _with_model(credentials_dir: Path, out: MpcOutcome) -> VerticalLROutcome:
    model = model_of_result(out.verified.contract, out.verified.job, out.result)
    files = open_job(credentials_dir, out.job_id)
    (files.root / MODEL_FILE).write_bytes(model)
    return VerticalLROutcome(out, model, files.result)
