"""Daemons an operations team can run: hostile callers cannot freeze them, they report health and metrics,
and they stop cleanly."""
from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fedtrust.buyer.query import submit_query, tls_of
from fedtrust.demo.federation import build_federation, enroll
from fedtrust.errors import Error
from fedtrust.transport.server import secure_channel
from fedtrust.trust.credentials import load_identity
from fedtrust.v1 import coordinator_pb2_grpc, node_pb2_grpc

OWNERS = {"bank-a": 300, "bank-b": 250}
PRIVACY = {"epsilon_total": "10", "delta": "1e-6", "epsilon_per_query": "0.5"}
SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("ops"), OWNERS, min_group_size=3, privacy=PRIVACY)
    # other valid identities of the same exchange, in no contract: a second buyer and a second coordinator
    for role, name in (("buyer", "intruder"), ("coordinator", "coord-2")):
        enroll(fed.exchange_dir, role, name, ["127.0.0.1:7999"] if role == "coordinator" else [],
               fed.root / "credentials" / name)
    fed.start(metrics=True)
    try:
        yield fed
    finally:
        fed.stop()


def tls(fed, name):
    return tls_of(load_identity(fed.root / "credentials" / name))


def ask(fed, timeout=60.0):
    buyer = load_identity(fed.buyer_dir)
    return submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL, timeout=timeout)


class IdleStreams:
    """`n` calls of a client-streaming method that send nothing until closed."""

    def __init__(self, address, creds, subject, method, n):
        self.release = threading.Event()
        self.channel = secure_channel(address, creds, subject)
        stub_cls, request = method
        self.calls = []
        for _ in range(n):
            self.calls.append(stub_cls(self.channel).__getattribute__(request)(self._nothing(), timeout=120))
        self.outcomes: list[grpc.StatusCode] = []

    def _nothing(self):
        self.release.wait()
        return
        yield  # pragma: no cover

    def ended(self, after: float) -> list[grpc.StatusCode]:
        """Codes of the calls the server has ended by itself `after` seconds from now (the rest stay open)."""
        time.sleep(after)
        return [c.code() for c in self.calls if c.done()]

    def close(self):
        for c in self.calls:
            c.cancel()
        self.release.set()
        self.channel.close()


def test_idle_streams_from_foreign_certificates_do_not_block_an_honest_job(ops):
    """Another buyer opens 24 idle SubmitQuery streams at the coordinator, and a node's and another
    coordinator's certificates open idle RunQuery streams at a node: the honest buyer's query still completes."""
    coord = ("coordinator", ops.coordinator_name)
    node_addr = f"127.0.0.1:{ops.nodes['bank-a'].port}"
    idle = [
        IdleStreams(ops.coordinator_address, tls(ops, "intruder"), coord,
                    (coordinator_pb2_grpc.CoordinatorServiceStub, "SubmitQuery"), 24),
        IdleStreams(node_addr, tls(ops, "coord-2"), ("node", "bank-a"),
                    (node_pb2_grpc.NodeServiceStub, "RunQuery"), 24),
        IdleStreams(node_addr, tls(ops, "bank-b"), ("node", "bank-a"),
                    (node_pb2_grpc.NodeServiceStub, "RunQuery"), 8),
    ]
    try:
        time.sleep(0.5)  # let every idle stream reach the servers
        start = time.monotonic()
        res = ask(ops, timeout=30)
        assert res.table.rows and time.monotonic() - start < 20
    finally:
        for s in idle:
            s.close()


def test_a_caller_of_the_wrong_role_is_refused_before_it_sends_anything(ops):
    node_addr = f"127.0.0.1:{ops.nodes['bank-a'].port}"
    release = threading.Event()

    def nothing():
        release.wait()
        return
        yield  # pragma: no cover

    try:
        with secure_channel(node_addr, tls(ops, "intruder"), ("node", "bank-a")) as ch:
            call = node_pb2_grpc.NodeServiceStub(ch).RunQuery(nothing(), timeout=10)
            with pytest.raises(grpc.RpcError) as e:
                next(iter(call))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "fedtrust://buyer/intruder may not call fedtrust.v1.NodeService" in e.value.details()
    finally:
        release.set()


def test_one_identity_holds_at_most_its_share_of_calls_and_silent_streams_are_cut(ops):
    """The per-peer cap refuses extra calls at once; a stream whose header never comes is cancelled."""
    limit = ops.coordinator.settings.max_calls_per_peer
    idle = IdleStreams(ops.coordinator_address, tls(ops, "intruder"), ("coordinator", ops.coordinator_name),
                       (coordinator_pb2_grpc.CoordinatorServiceStub, "SubmitQuery"), limit + 4)
    try:
        codes = idle.ended(after=2)
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    finally:
        idle.close()
    guard = ops.coordinator.guard
    old, guard.idle_s = guard.idle_s, 0.5
    release = threading.Event()

    def nothing():
        release.wait()
        return
        yield  # pragma: no cover

    try:
        with secure_channel(ops.coordinator_address, tls(ops, "analyst"),
                            ("coordinator", ops.coordinator_name)) as ch:
            call = coordinator_pb2_grpc.CoordinatorServiceStub(ch).SubmitQuery(nothing(), timeout=20)
            t = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                next(iter(call))
            assert e.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - t < 10
    finally:
        guard.idle_s = old
        release.set()


def health(address, creds, subject, service=""):
    with secure_channel(address, creds, subject) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_standard_health_checks_answer_serving(ops):
    serving = health_pb2.HealthCheckResponse.SERVING
    me = tls(ops, "analyst")
    assert health(ops.coordinator_address, me, ("coordinator", ops.coordinator_name)) == serving
    assert health(ops.coordinator_address, me, ("coordinator", ops.coordinator_name),
                  "fedtrust.v1.CoordinatorService") == serving
    for name, d in ops.nodes.items():
        assert health(f"127.0.0.1:{d.port}", tls(ops, "coord"), ("node", name)) == serving
        assert health(f"127.0.0.1:{d.port}", tls(ops, "coord"), ("node", name), "fedtrust.v1.NodeService") == serving


def scrape(port) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_count_jobs_refusals_durations_and_budgets_without_data_values(ops):
    ask(ops)
    buyer = load_identity(ops.buyer_dir)
    with pytest.raises(Error):
        submit_query(buyer, ops.buyer_dir, ops.contract_path, ops.coordinator_address,
                     "SELECT region, COUNT(*) AS n FROM loans GROUP BY region HAVING COUNT(*) > 1")
    node = ops.nodes["bank-a"]
    m = scrape(node.metrics_port)
    assert m[("fedtrust_jobs_total", (("kind", "query"), ("outcome", "released")))] >= 1
    assert m[("fedtrust_jobs_total", (("kind", "query"), ("outcome", "admitted")))] >= 1
    assert m[("fedtrust_job_duration_seconds_count", (("kind", "query"),))] >= 1
    assert m[("fedtrust_ready", ())] == 1
    [b] = node.runtime.store.budgets()
    contract = (("contract", b.contract_digest),)
    assert m[("fedtrust_epsilon_spent", contract)] == float(b.spent_epsilon) > 0
    assert m[("fedtrust_epsilon_left", contract)] == float(b.remaining_epsilon)
    assert m[("fedtrust_query_jobs_used", contract)] == b.queries
    c = scrape(ops.coordinator.metrics_port)
    assert c[("fedtrust_jobs_total", (("kind", "query"), ("outcome", "succeeded")))] >= 1
    assert ("fedtrust_rounds_in_flight", ()) in c
    # a refusal by the buyer's own CLI never reaches the daemons; one signed past it is counted by rule
    from fedtrust.buyer.client import CoordinatorClient
    from fedtrust.trust.jobs import sign_job

    from jobs_helper import make_job

    job, raw, keys = make_job(buyer, ops.contract_path, "SELECT AVG(income) FROM loans WHERE income > 1")
    with pytest.raises(Error, match="was not run and nobody was charged"):
        CoordinatorClient(ops.coordinator_address, tls_of(buyer), ops.coordinator_name).submit_query(
            sign_job(job, buyer.signer).to_json(), raw, keys.public_bytes)
    m = scrape(node.metrics_port)
    assert m[("fedtrust_refusals_total", (("rule", "policy"),))] >= 1
    c = scrape(ops.coordinator.metrics_port)
    assert c[("fedtrust_jobs_total", (("kind", "query"), ("outcome", "not-admitted")))] >= 1
    # labels are kinds, outcomes, rules and contract digests: never a value from the data
    for (name, labels), _ in m.items():
        assert name.startswith("fedtrust_")
        assert {k for k, _ in labels} <= {"kind", "outcome", "rule", "contract", "le"}
