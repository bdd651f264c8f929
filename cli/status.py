"""`fedtrust node status` / `fedtrust coordinator status`: health and metrics of a running daemon at a glance.

The health check is the standard `grpc.health.v1.Health` call over mutual TLS
with the daemon's own credentials (any identity of the exchange may ask); the
figures come from its `/metrics` endpoint when `metrics_listen` is set.
"""
from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from fedtrust.errors import NodeUnreachable


def _local(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "::", "") else address


def daemon_status(role: str, name: str, listen: str, credentials: Path, metrics_listen: str | None,
                  address: str | None = None) -> dict[str, Any]:
    """{"health": "SERVING"|…, "metrics": {...}}; NodeUnreachable when the daemon does not answer."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedtrust.transport.server import secure_channel
    from fedtrust.transport.status import calling
    from fedtrust.transport.tls import TlsMaterial
    from fedtrust.trust.credentials import load_identity

    ident = load_identity(credentials)
    target = address or _local(listen)
    with secure_channel(target, TlsMaterial.from_identity(ident), (role, name)) as ch, \
            calling(f"the {role} {name} at {target}"):
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    out: dict[str, Any] = {"role": role, "name": name, "address": target,
                           "health": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}
    if metrics_listen:
        out["metrics"] = scrape(_local(metrics_listen))
    return out


def scrape(address: str) -> dict[str, Any]:
    """The daemon's figures from /metrics: jobs by kind and outcome, refusals by rule, in flight, budgets."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    except OSError as e:
        raise NodeUnreachable(f"the metrics endpoint {address} does not answer ({e}); check metrics_listen") from None
    out: dict[str, Any] = {"jobs": {}, "refusals": {}, "in_flight": {}, "rounds_in_flight": 0, "contracts": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lb = s.labels
            if s.name == "fedtrust_jobs_total":
                out["jobs"][f"{lb['kind']} {lb['outcome']}"] = int(s.value)
            elif s.name == "fedtrust_refusals_total":
                out["refusals"][lb["rule"]] = int(s.value)
            elif s.name == "fedtrust_jobs_in_flight":
                out["in_flight"][lb["kind"]] = int(s.value)
            elif s.name == "fedtrust_rounds_in_flight":
                out["rounds_in_flight"] = int(s.value)
            elif s.name in ("fedtrust_epsilon_spent", "fedtrust_epsilon_left", "fedtrust_query_jobs_used"):
                key = s.name.removeprefix("fedtrust_")
                out["contracts"].setdefault(lb["contract"], {})[key] = s.value
    return out


def print_status(st: dict[str, Any], as_json: bool) -> None:
    from fedtrust.cli.output import console, print_json

    if as_json:
        print_json(st)
        return
    colour = "green" if st["health"] == "SERVING" else "red"
    console.print(f"{st['role']} {st['name']} at {st['address']}: [{colour}]{st['health']}[/]", highlight=False)
    m = st.get("metrics")
    if m is None:
        console.print("(set metrics_listen in the config for job counts and budgets)")
        return
    jobs = ", ".join(f"{k}: {v}" for k, v in sorted(m["jobs"].items())) or "none yet"
    console.print(f"jobs: {jobs}", highlight=False)
    if m["refusals"]:
        console.print("refusals by rule: " + ", ".join(f"{k}: {v}" for k, v in sorted(m["refusals"].items())),
                      highlight=False)
    running = sum(m["in_flight"].values())
    console.print(f"in flight: {running} job(s), {m['rounds_in_flight']} training round(s)", highlight=False)
    for contract, b in sorted(m["contracts"].items()):
        left = b.get("epsilon_left")
        console.print(f"contract {contract[:16]}…: ε spent {b.get('epsilon_spent', 0):g}"
                      + (f", ε left {left:g}" if left is not None else " (no DP)")
                      + f", query jobs {int(b.get('query_jobs_used', 0))}", highlight=False)
