"""The job kind seam: one payload per kind, parsed by the parser registered under its name, and one handler per
kind on every side that handles jobs (node, coordinator, buyer/exchange verification)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import pytest

from fedtrust.coordinator.kinds import HANDLERS as COORDINATOR_HANDLERS
from fedtrust.errors import InvalidInput
from fedtrust.exchange.verify import JOB_KINDS
from fedtrust.node.kinds import HANDLERS as NODE_HANDLERS
from fedtrust.privacy.params import HeParams
from fedtrust.query.payload import QueryPayload
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.canonical import Fields
from fedtrust.trust.jobs import JobSpec, job_kinds, register_payload
from fedtrust.trust.vertical import VerticalJob

from training_helper import make_spec

COMMON = dict(contract_digest="0" * 64, job_id="j1", nonce="1" * 64, coordinator="coord", participants=("a", "b"),
              dataset="loans", created_at="2025-01-01T00:00:00Z", expires_at="2025-01-01T01:00:00Z")
PAYLOADS = {
    "query": (QueryPayload("SELECT COUNT(*) FROM loans", HeParams("2" * 64)), {"sql", "he"}),
    "train": (make_spec(), {"training"}),
    "psi": (VerticalJob("phone_key"), {"vertical"}),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_each_kind_keeps_its_signed_json_and_round_trips(kind):
    """The signed JSON of every kind is what it was before the seam (JobSpec/v1): the common keys plus its own."""
    payload, keys = PAYLOADS[kind]
    job = JobSpec(payload=payload, **COMMON)
    d = job.to_dict()
    assert d["kind"] == kind and set(d) == set(COMMON) | {"kind"} | keys
    assert JobSpec.from_dict(d) == job and job.kind == kind


def test_a_job_of_another_kind_is_refused_by_name_at_each_endpoint():
    job = JobSpec(payload=PAYLOADS["psi"][0], **COMMON)
    with pytest.raises(InvalidInput, match=r"job kind 'psi' sent to SubmitQuery; submit training jobs with"):
        job.payload_as(QueryPayload, "SubmitQuery", "submit training jobs with SubmitTraining")
    assert job.payload_as(VerticalJob, "the PSI endpoint") is job.payload


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    d = JobSpec(payload=PAYLOADS["psi"][0], **COMMON).to_dict()
    with pytest.raises(InvalidInput, match=r"job spec: kind must be one of .*psi, query, train") as e:
        JobSpec.from_dict({**d, "kind": "mpc-magic"})
    assert str(e.value) == f"job spec: kind must be one of {', '.join(job_kinds())}"


def test_a_kinds_payload_is_checked_by_its_own_parser():
    d = JobSpec(payload=PAYLOADS["query"][0], **COMMON).to_dict()
    with pytest.raises(InvalidInput, match="sql must be a non-empty query"):
        JobSpec.from_dict({**d, "sql": "  "})
    with pytest.raises(InvalidInput, match="field `he` is missing"):
        JobSpec.from_dict({k: v for k, v in d.items() if k != "he"})
    t = JobSpec(payload=PAYLOADS["train"][0], **COMMON).to_dict()
    with pytest.raises(InvalidInput, match="field `training` must be an object"):
        JobSpec.from_dict({**t, "training": "logreg"})


@dataclass(frozen=True)
class _Greedy:
    """A payload that tries to overwrite a key every job has."""

    kind: ClassVar[str] = "psi"
    ttl: ClassVar[timedelta] = timedelta(hours=1)

    def to_fields(self) -> dict[str, Any]:
        return {"participants": ["mallory"]}

    def check_payload(self, dataset: str) -> None:
        pass

    def describe(self) -> str:
        return ""


def test_a_payload_cannot_overwrite_the_common_keys_and_a_kind_registers_once():
    with pytest.raises(InvalidInput, match="reuses a common key"):
        JobSpec(payload=_Greedy(), **COMMON).to_dict()
    with pytest.raises(ValueError, match="registered twice"):
        register_payload("query", lambda f: VerticalJob.from_fields(f))
    with pytest.raises(ValueError, match="must be 1-16 characters"):
        register_payload("Query Jobs", QueryPayload.from_fields)
    assert isinstance(QueryPayload.from_fields(Fields({"sql": "x", "he": PAYLOADS["query"][0].he.to_dict()}, "j")),
                      QueryPayload)


def test_every_kind_a_role_handles_is_handled_by_every_role():
    """A kind the coordinator runs is served by the nodes and settled by the exchange (and parsed by all)."""
    served = {h.kind for h in NODE_HANDLERS}
    assert {QueryPayload.kind, TrainingSpec.kind, VerticalJob.kind} <= served
    assert {h.kind for h in COORDINATOR_HANDLERS} == served == set(JOB_KINDS)
    assert served <= set(job_kinds())
