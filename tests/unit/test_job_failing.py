"""`CoordinatorRuntime.failing`: a job whose steps raise is failed in the store, with the rule that was broken."""
from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Iterator

import pytest

from fedtrust.coordinator.runtime import INTERNAL_FAILURE, CoordinatorRuntime
from fedtrust.coordinator.store import JobStore
from fedtrust.errors import Error, PolicyViolation

DISCONNECTED = "the buyer disconnected during the job; the training was stopped"


def _runtime(tmp_path, job_id: str = "j1") -> SimpleNamespace:
    """What `failing` uses of the runtime: a real job store with one running job, `stopping` and the cancel set."""
    store = JobStore(tmp_path / "coord")
    assert store.begin(job_id, "d" * 64, "c" * 64, "acme", ("bank-a", "bank-b")) is None
    rt = SimpleNamespace(store=store, stopping=False, _cancelled={job_id}, _cancel_lock=threading.Lock())
    rt.forget_cancel = lambda j: CoordinatorRuntime.forget_cancel(rt, j)
    return rt


def _failing(rt, job_id: str = "j1", **kw):
    return CoordinatorRuntime.failing(rt, job_id, **kw)


def test_a_fedtrust_error_fails_the_job_with_its_own_message(tmp_path):
    rt = _runtime(tmp_path)
    with pytest.raises(PolicyViolation, match="owner bank-b refused"):
        with _failing(rt):
            raise PolicyViolation("owner bank-b refused the job")
    rec = rt.store.get("j1")
    assert (rec.state, rec.error) == ("failed", "owner bank-b refused the job")
    assert not rt._cancelled  # a cancel request ends with its job


def test_a_bug_fails_the_job_as_an_internal_error_without_its_text(tmp_path):
    rt = _runtime(tmp_path)
    with pytest.raises(KeyError):
        with _failing(rt):
            raise KeyError("row 17 of bank-a: 42.0")  # a data value must not reach the store
    rec = rt.store.get("j1")
    assert (rec.state, rec.error) == ("failed", INTERNAL_FAILURE)
    assert "42" not in rec.error


def _job(rt, **kw) -> Iterator[str]:
    with _failing(rt, **kw):
        yield "admitting"
        yield "dispatched"


@pytest.mark.parametrize("disconnected, expected", [(None, INTERNAL_FAILURE), (DISCONNECTED, DISCONNECTED)])
def test_a_buyer_who_disconnects_fails_the_job_as_the_kind_names_it(tmp_path, disconnected, expected):
    rt = _runtime(tmp_path)
    job = _job(rt, disconnected=disconnected)
    assert next(job) == "admitting"
    job.close()  # the buyer's stream went away: GeneratorExit at the yield
    rec = rt.store.get("j1")
    assert (rec.state, rec.error) == ("failed", expected)


def test_a_resumable_job_cut_by_the_shutdown_stays_running(tmp_path):
    rt = _runtime(tmp_path)
    rt.stopping = True
    with pytest.raises(Error):
        with _failing(rt, resumable=True):
            raise Error("the coordinator is stopping")
    rec = rt.store.get("j1")
    assert rec.state == "running" and "resumes when the coordinator starts again" in rec.error


def test_a_job_that_is_not_resumable_fails_even_during_the_shutdown(tmp_path):
    rt = _runtime(tmp_path)
    rt.stopping = True
    with pytest.raises(Error):
        with _failing(rt):
            raise Error("the coordinator is stopping")
    assert rt.store.get("j1").state == "failed"


def test_steps_that_finish_leave_the_outcome_to_the_job(tmp_path):
    rt = _runtime(tmp_path)
    with _failing(rt):
        pass
    assert rt.store.get("j1").state == "running"  # the kind records its own success (store.succeed)
    assert not rt._cancelled
