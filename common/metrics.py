"""Prometheus metrics of a daemon: what ran, what was refused and why, how long it took, what is left.

Each daemon has its own registry (several daemons share one process in the
tests and the demo) and serves it at `http://<metrics_listen>/metrics` when
its config sets `metrics_listen`. Labels are job kinds, outcomes, error kinds
(the rule that was broken) and contract digests — never a data value, a row
count or a per-node aggregate.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from fedtrust.errors import ConfigError

log = logging.getLogger("fedtrust.metrics")

__all__ = ["DaemonMetrics", "BudgetView"]

#: (contract digest, ε spent, ε left or None, query jobs) per contract, read at scrape time
BudgetView = Callable[[], Iterable[tuple[str, float, float | None, int]]]


class _BudgetCollector:
    def __init__(self, view: BudgetView) -> None:
        self.view = view

    def collect(self):
        spent = GaugeMetricFamily("fedtrust_epsilon_spent", "privacy budget spent per contract at this node",
                                  labels=["contract"])
        left = GaugeMetricFamily("fedtrust_epsilon_left", "privacy budget left per contract at this node",
                                 labels=["contract"])
        queries = GaugeMetricFamily("fedtrust_query_jobs_used", "query jobs answered per contract at this node",
                                    labels=["contract"])
        try:
            rows = list(self.view())
        except Exception:  # noqa: BLE001 - a scrape must never take the daemon down
            log.warning("reading the ledger for /metrics failed", exc_info=True)
            rows = []
        for contract, eps, rest, n in rows:
            spent.add_metric([contract], eps)
            if rest is not None:
                left.add_metric([contract], rest)
            queries.add_metric([contract], n)
        yield spent
        yield left
        yield queries


class DaemonMetrics:
    def __init__(self, role: str, budgets: BudgetView | None = None) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("fedtrust_jobs", "jobs by kind and outcome", ["kind", "outcome"], registry=r)
        self.refusals = Counter("fedtrust_refusals", "refused calls by the rule (error kind) they broke", ["rule"],
                                registry=r)
        self.duration = Histogram("fedtrust_job_duration_seconds", "duration of jobs (node: one release; "
                                  "coordinator: the whole job)", ["kind"], registry=r,
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
        self.in_flight = Gauge("fedtrust_jobs_in_flight", "jobs running now", ["kind"], registry=r)
        self.rounds_in_flight = Gauge("fedtrust_rounds_in_flight", "training rounds running now", registry=r)
        self.ready = Gauge("fedtrust_ready", "1 when the daemon serves (datasets loaded, ledger open)", registry=r)
        if budgets is not None:
            r.register(_BudgetCollector(budgets))
        self._http: WSGIServer | None = None

    def refused(self, kind: str, rule: str) -> None:
        self.refusals.labels(rule).inc()
        self.jobs.labels(kind, "refused").inc()

    @contextmanager
    def job(self, kind: str):
        """Count a job in flight, its duration and its outcome (succeeded / the error kind)."""
        start = time.monotonic()
        self.in_flight.labels(kind).inc()
        outcome = "failed"
        try:
            yield
            outcome = "succeeded"
        finally:
            self.in_flight.labels(kind).dec()
            self.duration.labels(kind).observe(time.monotonic() - start)
            self.jobs.labels(kind, outcome).inc()

    def serve(self, listen: str) -> int:
        """Serve /metrics over plain HTTP on `listen` (HOST:PORT, port 0 picks one); returns the port."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        try:
            http, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {listen}: {e.strerror or e}; choose another "
                              "metrics_listen") from None
        self._http = http
        return http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
