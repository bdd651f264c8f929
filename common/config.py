"""Daemon configuration files (NODE.toml, COORD.toml) as frozen dataclasses, read strictly.

Relative paths in a config file are resolved against the file's own folder,
so a workspace can be moved as a whole. Every table declares its keys, their
types and ranges: an unknown key (`node_timeout = 5` for `node_timeout_s`), a
wrong type (`node_timeout_s = "5"`) or an out-of-range value (`0`) is a
one-line ConfigError naming the file, the table and the key — a typo never
silently falls back to a default.
"""
from __future__ import annotations

import codecs
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedtrust.errors import ConfigError

__all__ = [
    "DatasetConfig", "ClientAppConfig", "ServerSettings", "NodeConfig", "CoordinatorConfig", "read_toml",
    "load_node_config", "load_coordinator_config", "check_private_files", "DealerConfig", "load_dealer_config",
]


MIB = 1024 * 1024
#: what sealing adds to a relayed MPC frame (header and tag), on top of `mpc_max_frame_mib`
MPC_SEAL_BYTES = 4096
#: frames travel as one gRPC message (`fedtrust.transport.limits.MAX_MESSAGE_BYTES`)
MPC_MAX_FRAME_MIB = 16


@dataclass(frozen=True)
class DatasetConfig:
    product: Path  # the exchange-signed product credential (JSON envelope)
    path: Path  # CSV or Parquet file with the product's rows
    encoding: str = "utf-8"  # a CSV's text encoding (e.g. "gb18030"); the commitment is of the file as it is
    null_values: tuple[str, ...] = ("",)  # CSV cells that mean "missing", e.g. ["", "NA", "NULL"]
    #: DuckDB threads for this dataset's queries; None: one per core. Several nodes on one machine: 1 each
    query_threads: int | None = None


@dataclass(frozen=True)
class ClientAppConfig:
    """`[[clientapps]]`: a Flower ClientApp the node owner approved, pinned by the digest of its package
    directory (`fedtrust node digest DIR`), or of its file for a single-file module."""

    name: str  # what a contract's [training] models and a job's `model` call it
    target: str  # "package.module:attribute" (the module must be importable on the node)
    digest: str  # `fedtrust.node.apps.app_digest` of the package directory (or single module file)


@dataclass(frozen=True)
class ServerSettings:
    """What both daemons share: thread pool, per-peer limits, stream deadlines, metrics, shutdown, clocks."""

    max_workers: int = 64  # RPC threads
    max_calls_per_peer: int = 8  # concurrent calls one certificate may hold open
    stream_idle_s: float = 30.0  # a caller must send the header and each chunk within this
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus /metrics endpoint (plain HTTP); None: off
    drain_s: float = 30.0  # on SIGTERM: how long in-flight calls may take to finish
    clock_skew_s: float = 300.0  # how far apart machines' clocks may be in validity checks


@dataclass(frozen=True)
class NodeConfig:
    name: str
    listen: str
    credentials: Path
    state: Path
    datasets: tuple[DatasetConfig, ...]
    #: where training runs: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    clientapps: tuple[ClientAppConfig, ...] = ()
    #: `[exchange] url`: where `fedtrust exchange serve` runs (revocation list); None: offline
    exchange_url: str | None = None
    #: `[exchange] refresh_s`: how often the revocation list is fetched
    refresh_s: float = 300.0
    server: ServerSettings = ServerSettings()
    source: Path | None = None  # the file it was read from
    #: the ledger's high-water mark file (default `<state>.watermark`, outside the state folder)
    watermark: Path | None = None
    #: an MPC session at this node fails when its peers send nothing for this long (`[node] mpc_idle_s`)
    mpc_idle_s: float = 120.0

    @property
    def max_workers(self) -> int:
        return self.server.max_workers


@dataclass(frozen=True)
class CoordinatorConfig:
    name: str
    listen: str
    credentials: Path
    state: Path
    node_timeout_s: float = 300.0
    #: node name -> HOST:PORT, overriding the address in the node's credential
    addresses: tuple[tuple[str, str], ...] = ()
    exchange_url: str | None = None
    refresh_s: float = 300.0
    server: ServerSettings = ServerSettings()
    source: Path | None = None
    #: the MPC relay: the largest sealed frame a party may send (MiB; frames travel as one gRPC message, which the
    #: transport caps at 16 MiB, so 16 is the most), the bytes one party may send in one session (GiB), and how
    #: long a session may go without a frame moving before it fails (s)
    mpc_max_frame_mib: int = 16
    mpc_max_session_gib: int = 8
    mpc_idle_s: float = 120.0

    @property
    def max_workers(self) -> int:
        return self.server.max_workers

    @property
    def mpc_max_frame_bytes(self) -> int:
        return self.mpc_max_frame_mib * MIB + MPC_SEAL_BYTES

    @property
    def mpc_max_session_bytes(self) -> int:
        return self.mpc_max_session_gib * 1024 * MIB


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming `what` (e.g. "rules file") when missing or malformed."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {p} is not valid TOML: {e}") from None


# -- typed keys -------------------------------------------------------------------------------------------
def _listen(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return "must be HOST:PORT, e.g. 127.0.0.1:7101"
    return None


def _encoding(v: str) -> str | None:
    try:
        codecs.lookup(v)
        return None
    except LookupError:
        return 'must name a text encoding, e.g. "utf-8" (the default), "gb18030" or "latin-1"'


def _null_values(v: list) -> str | None:
    if not 0 < len(v) <= 16 or not all(isinstance(x, str) and len(x) <= 32 and "\n" not in x for x in v):
        return 'must be a list of short strings that mean "missing", e.g. ["", "NA", "NULL"]'
    return None


def _https_url(v: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
        ok = parts.scheme == "https" and bool(parts.hostname) and parts.port is not None
    except ValueError:
        ok = False
    return None if ok else "must be https://HOST:PORT (where `fedtrust exchange serve` listens)"


def _device(v: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v) else 'must be "auto", "cpu", "cuda" or "cuda:N"'


@dataclass(frozen=True)
class Key:
    kind: type  # str, int or float (a float key also takes an integer)
    required: bool = False
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    positive: bool = False  # strictly > 0
    check: Callable[[Any], str | None] | None = None


_SERVER_KEYS = {
    "max_workers": Key(int, low=1, high=1024),
    "max_calls_per_peer": Key(int, low=1, high=1024),
    "stream_idle_s": Key(float, positive=True, high=3600),
    "metrics_listen": Key(str, check=_listen),
    "drain_s": Key(float, low=0, high=3600),
    "clock_skew_s": Key(float, low=0, high=86400),
}
_NODE_KEYS = {
    "name": Key(str, required=True), "listen": Key(str, required=True, check=_listen),
    "credentials": Key(str, required=True), "state": Key(str, required=True), "device": Key(str, check=_device),
    "watermark": Key(str), "mpc_idle_s": Key(float, positive=True, high=86400),
    **_SERVER_KEYS,
}
_COORD_KEYS = {
    "name": Key(str, required=True), "listen": Key(str, required=True, check=_listen),
    "credentials": Key(str, required=True), "state": Key(str, required=True),
    "node_timeout_s": Key(float, positive=True, high=86400),
    "mpc_max_frame_mib": Key(int, low=1, high=MPC_MAX_FRAME_MIB), "mpc_max_session_gib": Key(int, low=1, high=1024),
    "mpc_idle_s": Key(float, positive=True, high=86400),
    **_SERVER_KEYS,
}
_EXCHANGE_KEYS = {"url": Key(str, check=_https_url), "refresh_s": Key(float, low=0.1, high=86400)}
_DATASET_KEYS = {"product": Key(str, required=True), "path": Key(str, required=True),
                 "encoding": Key(str, check=_encoding), "null_values": Key(list, check=_null_values),
                 "query_threads": Key(int, low=1, high=1024)}
_CLIENTAPP_KEYS = {"name": Key(str, required=True), "target": Key(str, required=True),
                   "digest": Key(str, required=True)}

_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number", list: "a list"}


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return type(v).__name__


class _Reader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data = read_toml(path, "config file")
        self.base = self.path.resolve().parent

    def fail(self, where: str, key: str | None, problem: str) -> ConfigError:
        at = f"{where} {key}" if key else where
        return ConfigError(f"{self.path}: {at} {problem}")

    def top(self, allowed: dict[str, str]) -> None:
        for k in self.data:
            if k not in allowed:
                raise self.fail(f"[{k}]", None, f"is not a known table; known: {', '.join(allowed)}")
            want = allowed[k]
            ok = isinstance(self.data[k], dict) if want == "table" else isinstance(self.data[k], list)
            if not ok:
                shape = f"[{k}]" if want == "table" else f"[[{k}]]"
                raise self.fail(f"`{k}`", None, f"must be written as {shape}")

    def table(self, t: Any, where: str, keys: dict[str, Key]) -> dict[str, Any]:
        if not isinstance(t, dict):
            raise self.fail(where, None, "must be a table")
        for k in t:
            if k not in keys:
                raise self.fail(where, k, f"is not a known key; known keys: {', '.join(keys)}")
        out: dict[str, Any] = {}
        for k, spec in keys.items():
            if k not in t:
                if spec.required:
                    raise self.fail(where, None, f"needs `{k}` ({_TYPE_NAMES[spec.kind]})")
                continue
            out[k] = self._value(t[k], where, k, spec)
        return out

    def _value(self, v: Any, where: str, k: str, spec: Key) -> Any:
        ok = (isinstance(v, spec.kind) if spec.kind in (str, list)
              else isinstance(v, int) and not isinstance(v, bool) if spec.kind is int
              else isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            hows: dict[type, str] = {str: "in quotes", list: "as [...]"}
            how = hows.get(spec.kind, "without quotes")
            raise self.fail(where, k, f"must be {_TYPE_NAMES[spec.kind]}, not {_describe(v)} ({v!r}); write it {how}")
        if spec.kind is str and not v:
            raise self.fail(where, k, "must not be empty")
        if spec.kind is float:
            v = float(v)
            if v != v or v in (float("inf"), float("-inf")):
                raise self.fail(where, k, "must be a finite number")
        if spec.positive and v <= 0:
            raise self.fail(where, k, f"must be greater than 0 (got {v})")
        if spec.low is not None and v < spec.low or spec.high is not None and v > spec.high:
            lo = "" if spec.low is None else f"{spec.low:g}"
            raise self.fail(where, k, f"must be between {lo or '0'} and {spec.high:g} (got {v})")
        if spec.check is not None:
            problem = spec.check(v)
            if problem:
                raise self.fail(where, k, f"{problem} (got {v!r})")
        return v

    def path_of(self, value: str) -> Path:
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base / p))


def _server(t: dict[str, Any]) -> ServerSettings:
    return ServerSettings(**{k: t[k] for k in _SERVER_KEYS if k in t})


def _exchange(r: _Reader) -> dict[str, Any]:
    """`[exchange]`: `url = "https://HOST:PORT"` of `fedtrust exchange serve`, `refresh_s` (default 300)."""
    t = r.table(r.data.get("exchange", {}), "[exchange]", _EXCHANGE_KEYS)
    return {"exchange_url": t.get("url"), "refresh_s": float(t.get("refresh_s", 300.0))}


def load_node_config(path: str | Path) -> NodeConfig:
    r = _Reader(path)
    r.top({"node": "table", "datasets": "array", "clientapps": "array", "exchange": "table"})
    if "node" not in r.data:
        raise r.fail("[node]", None, "table is missing; add one with name, listen, credentials and state")
    t = r.table(r.data["node"], "[node]", _NODE_KEYS)
    entries = r.data.get("datasets", [])
    if not entries:
        raise r.fail("[[datasets]]", None, "lists nothing; add one with `product` and `path`")
    datasets = []
    for i, d in enumerate(entries):
        d = r.table(d, f"[[datasets]] entry {i + 1}", _DATASET_KEYS)
        datasets.append(DatasetConfig(r.path_of(d["product"]), r.path_of(d["path"]),
                                      codecs.lookup(d.get("encoding", "utf-8")).name,
                                      tuple(d.get("null_values", [""])), d.get("query_threads")))
    return NodeConfig(
        name=t["name"], listen=t["listen"], credentials=r.path_of(t["credentials"]), state=r.path_of(t["state"]),
        datasets=tuple(datasets), device=t.get("device", "auto"),
        clientapps=_clientapps(r, r.data.get("clientapps", [])), server=_server(t), source=r.path,
        watermark=r.path_of(t["watermark"]) if "watermark" in t else None,
        mpc_idle_s=float(t.get("mpc_idle_s", 120.0)), **_exchange(r),
    )


def _clientapps(r: _Reader, entries: list) -> tuple[ClientAppConfig, ...]:
    apps = []
    for i, e in enumerate(entries):
        e = r.table(e, f"[[clientapps]] entry {i + 1}", _CLIENTAPP_KEYS)
        name, target, digest = e["name"], e["target"], e["digest"]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise r.fail("[[clientapps]]", "name", f"{name!r} must be 1-64 characters A-Z a-z 0-9 . _ -")
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", target):
            raise r.fail(f"[[clientapps]] {name}:", "target", 'must be "package.module:attribute"')
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise r.fail(f"[[clientapps]] {name}:", "digest", "must be the 64 hex digits `fedtrust node digest` prints "
                                                              "for the app's package directory")
        apps.append(ClientAppConfig(name, target, digest))
    if len({a.name for a in apps}) != len(apps):
        raise r.fail("[[clientapps]]", None, "lists a name twice; approve each app once")
    return tuple(apps)


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    r = _Reader(path)
    r.top({"coordinator": "table", "addresses": "table", "exchange": "table"})
    if "coordinator" not in r.data:
        raise r.fail("[coordinator]", None, "table is missing; add one with name, listen, credentials and state")
    t = r.table(r.data["coordinator"], "[coordinator]", _COORD_KEYS)
    addresses = r.data.get("addresses", {})
    for node, addr in addresses.items():
        r._value(addr, "[addresses]", node, Key(str, check=_listen))
    return CoordinatorConfig(
        name=t["name"], listen=t["listen"], credentials=r.path_of(t["credentials"]), state=r.path_of(t["state"]),
        node_timeout_s=t.get("node_timeout_s", 300.0), addresses=tuple(sorted(addresses.items())),
        server=_server(t), source=r.path, mpc_max_frame_mib=t.get("mpc_max_frame_mib", 16),
        mpc_max_session_gib=t.get("mpc_max_session_gib", 8), mpc_idle_s=float(t.get("mpc_idle_s", 120.0)),
        **_exchange(r),
    )


@dataclass(frozen=True)
class DealerConfig:
    """`fedtrust dealer serve`: the MPC dealer a contract names (`[dealer]` name, listen, credentials)."""

    name: str
    listen: str
    credentials: Path
    #: seconds a session may wait for its next request before it fails
    idle_s: float = 120.0
    server: ServerSettings = ServerSettings()


_DEALER_KEYS = {
    "name": Key(str, required=True), "listen": Key(str, required=True, check=_listen),
    "credentials": Key(str, required=True), "idle_s": Key(float, positive=True, high=86400),
    **_SERVER_KEYS,
}


def load_dealer_config(path: str | Path) -> DealerConfig:
    r = _Reader(path)
    r.top({"dealer": "table"})
    if "dealer" not in r.data:
        raise r.fail("[dealer]", None, "table is missing; add one with name, listen and credentials")
    t = r.table(r.data["dealer"], "[dealer]", _DEALER_KEYS)
    return DealerConfig(name=t["name"], listen=t["listen"], credentials=r.path_of(t["credentials"]),
                        idle_s=float(t.get("idle_s", 120.0)), server=_server(t))


def check_private_files(paths) -> None:
    """Refuse secret key files that group or others can read or write, with the `chmod` that fixes it."""
    import stat

    for p in paths:
        try:
            mode = stat.S_IMODE(os.stat(p).st_mode)
        except FileNotFoundError:
            continue  # a missing file is reported by whoever loads it
        if mode & 0o077:
            raise ConfigError(f"key file {p} is accessible to group or others (mode {mode:04o}); "
                              f"run `chmod 600 {p}`")
