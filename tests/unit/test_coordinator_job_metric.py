"""The coordinator's job metric says "succeeded" only once the job's result is on disk.

A query's result is stored while its ciphertexts stream to the buyer (`Finished.stored`); the receipt leaves only
after that commit. The metric must follow the same order: a commit that fails (a full disk) is a failed job in the
store, and so in `fedtrust_jobs_total` too.
"""
from __future__ import annotations

import pytest

from fedtrust.coordinator.coordinator_servicer import CoordinatorServicer, _events
from fedtrust.coordinator.runtime import Finished
from fedtrust.errors import JobFailed
from fedtrust.progress import Progress


def jobs(svc: CoordinatorServicer, outcome: str) -> float:
    return svc.metrics.registry.get_sample_value("fedtrust_jobs_total", {"kind": "query", "outcome": outcome}) or 0


def servicer() -> CoordinatorServicer:
    return CoordinatorServicer(runtime=None, kinds=object())  # type: ignore[arg-type]  # only the metric is used


def test_a_job_whose_result_is_stored_counts_as_succeeded_before_its_receipt_leaves():
    svc = servicer()
    events = iter([Progress("relayed", 3, 3, "relayed"), Finished(b"receipt", (), lambda: None)])
    seen = []
    for ev in _events(svc._measured("query", events)):
        if ev.HasField("outcome"):
            seen.append(jobs(svc, "succeeded"))  # what /metrics says when the buyer holds the receipt
    assert seen == [1] and jobs(svc, "failed") == 0


def test_a_job_whose_result_could_not_be_stored_counts_as_failed():
    svc = servicer()

    def disk_full() -> None:
        raise JobFailed("the job's result could not be stored")

    measured = svc._measured("query", iter([Finished(b"receipt", (), disk_full)]))
    outcomes = []
    with pytest.raises(JobFailed):
        for ev in _events(measured):
            outcomes.append(ev.WhichOneof("part"))
    measured.close()  # as gRPC drops the response iterator
    assert "outcome" not in outcomes  # no receipt left
    assert jobs(svc, "succeeded") == 0 and jobs(svc, "failed") == 1
