"""Daemon configuration files (NODE.toml, COORD.toml) as frozen dataclasses.

Relative paths in a config file are resolved against the file's own folder,
so a workspace can be moved as a whole.
"""
from __future__ import annotations

import codecs
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrust.errors import ConfigError


@dataclass(frozen=True)
class DatasetConfig:
    product: Path  # the exchange-signed product credential (JSON envelope)
    path: Path  # CSV or Parquet file with the product's rows
    encoding: str = "utf-8"  # a CSV's text encoding (e.g. "gb18030"); the commitment is of the file as it is
    null_values: tuple[str, ...] = ("",)  # CSV cells that mean "missing", e.g. ["", "NA", "NULL"]


@dataclass(frozen=True)
class ClientAppConfig:
    """`[[clientapps]]`: a Flower ClientApp the node owner approved, pinned by the digest of its package
    directory (`fedtrust node digest DIR`), or of its file for a single-file module."""

    name: str  # what a contract's [training] models and a job's `model` call it
    target: str  # "package.module:attribute" (the module must be importable on the node)
    digest: str  # `fedtrust.training.apps.app_digest` of the package directory (or single module file)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    listen: str
    credentials: Path
    state: Path
    datasets: tuple[DatasetConfig, ...]
    max_workers: int = 16
    #: where training runs: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    clientapps: tuple[ClientAppConfig, ...] = ()
    #: `[exchange] url`: where `fedtrust exchange serve` runs (revocation list); None: offline
    exchange_url: str | None = None
    #: `[exchange] refresh_s`: how often the revocation list is fetched
    refresh_s: float = 300.0


@dataclass(frozen=True)
class CoordinatorConfig:
    name: str
    listen: str
    credentials: Path
    state: Path
    node_timeout_s: float = 300.0
    max_workers: int = 16
    #: node name -> HOST:PORT, overriding the address in the node's credential
    addresses: tuple[tuple[str, str], ...] = ()
    exchange_url: str | None = None
    refresh_s: float = 300.0


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming `what` (e.g. "rules file") when missing or malformed."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {p} is not valid TOML: {e}") from None


def _read(path: str | Path) -> tuple[dict[str, Any], Path]:
    return read_toml(path, "config file"), Path(path).resolve().parent


def _table(data: dict[str, Any], key: str, path: str | Path) -> dict[str, Any]:
    t = data.get(key)
    if not isinstance(t, dict):
        raise ConfigError(f"config file {path} has no [{key}] table; add one with name, listen, credentials and state")
    return t


def _get(t: dict[str, Any], key: str, section: str) -> str:
    v = t.get(key)
    if not isinstance(v, str) or not v:
        raise ConfigError(f"[{section}] needs `{key}` (a string)")
    return v


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _check_listen(listen: str, section: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"[{section}] listen = {listen!r} must be HOST:PORT, e.g. 127.0.0.1:7101")


def _encoding(value: object) -> str:
    try:
        if not isinstance(value, str):
            raise LookupError
        return codecs.lookup(value).name
    except LookupError:
        raise ConfigError('[[datasets]] encoding must name a text encoding, e.g. "utf-8" (the default), "gb18030" '
                          'or "latin-1"') from None


def _null_values(value: object) -> tuple[str, ...]:
    if (not isinstance(value, list) or not 0 < len(value) <= 16
            or not all(isinstance(v, str) and len(v) <= 32 and "\n" not in v for v in value)):
        raise ConfigError('[[datasets]] null_values must be a list of short strings that mean "missing", '
                          'e.g. ["", "NA", "NULL"]')
    return tuple(value)


def load_node_config(path: str | Path) -> NodeConfig:
    data, base = _read(path)
    t = _table(data, "node", path)
    listen = _get(t, "listen", "node")
    _check_listen(listen, "node")
    entries = data.get("datasets", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"config file {path} lists no [[datasets]]; add one with `product` and `path`")
    datasets = []
    for i, d in enumerate(entries):
        if not isinstance(d, dict):
            raise ConfigError(f"[[datasets]] entry {i + 1} must be a table with `product` and `path`")
        datasets.append(DatasetConfig(_path(base, _get(d, "product", "datasets")), _path(base, _get(d, "path", "datasets")),
                                      _encoding(d.get("encoding", "utf-8")), _null_values(d.get("null_values", [""]))))
    device = t.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", device):
        raise ConfigError('[node] device must be "auto", "cpu", "cuda" or "cuda:N"')
    return NodeConfig(
        name=_get(t, "name", "node"),
        listen=listen,
        credentials=_path(base, _get(t, "credentials", "node")),
        state=_path(base, _get(t, "state", "node")),
        datasets=tuple(datasets),
        max_workers=int(t.get("max_workers", 16)),
        device=device,
        clientapps=_clientapps(data.get("clientapps", [])),
        **_exchange(data.get("exchange", {})),
    )


def _clientapps(entries: Any) -> tuple[ClientAppConfig, ...]:
    if not isinstance(entries, list):
        raise ConfigError("[[clientapps]] must be an array of tables with name, target and digest")
    apps = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ConfigError(f"[[clientapps]] entry {i + 1} must be a table with name, target and digest")
        name, target, digest = (_get(e, k, "clientapps") for k in ("name", "target", "digest"))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"[[clientapps]] name {name!r} must be 1-64 characters A-Z a-z 0-9 . _ -")
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", target):
            raise ConfigError(f"[[clientapps]] {name}: target must be \"package.module:attribute\"")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(f"[[clientapps]] {name}: digest must be the 64 hex digits `fedtrust node digest` prints "
                              "for the app's package directory")
        apps.append(ClientAppConfig(name, target, digest))
    if len({a.name for a in apps}) != len(apps):
        raise ConfigError("[[clientapps]] lists a name twice; approve each app once")
    return tuple(apps)


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    data, base = _read(path)
    t = _table(data, "coordinator", path)
    listen = _get(t, "listen", "coordinator")
    _check_listen(listen, "coordinator")
    try:
        timeout = float(t.get("node_timeout_s", 300))
    except (TypeError, ValueError):
        raise ConfigError("[coordinator] node_timeout_s must be a number of seconds") from None
    return CoordinatorConfig(
        name=_get(t, "name", "coordinator"),
        listen=listen,
        credentials=_path(base, _get(t, "credentials", "coordinator")),
        state=_path(base, _get(t, "state", "coordinator")),
        node_timeout_s=timeout,
        max_workers=int(t.get("max_workers", 16)),
        addresses=_addresses(data.get("addresses", {})),
        **_exchange(data.get("exchange", {})),
    )


def _exchange(t: Any) -> dict[str, Any]:
    """`[exchange]`: `url = "https://HOST:PORT"` of `fedtrust exchange serve`, `refresh_s` (default 300)."""
    if not isinstance(t, dict) or not set(t) <= {"url", "refresh_s"}:
        raise ConfigError('[exchange] takes url = "https://HOST:PORT" and refresh_s = SECONDS')
    url = t.get("url")
    if url is not None:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            ok = parts is not None and parts.scheme == "https" and bool(parts.hostname) and parts.port is not None
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"[exchange] url = {url!r} must be https://HOST:PORT (where `fedtrust exchange serve` "
                              "listens)")
    refresh = t.get("refresh_s", 300)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not 0.1 <= refresh <= 86400:
        raise ConfigError("[exchange] refresh_s must be a number of seconds between 0.1 and 86400")
    return {"exchange_url": url, "refresh_s": float(refresh)}


def _addresses(t: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(t, dict) or not all(isinstance(v, str) for v in t.values()):
        raise ConfigError("[addresses] must map node names to HOST:PORT strings")
    for v in t.values():
        _check_listen(v, "addresses")
    return tuple(sorted(t.items()))
