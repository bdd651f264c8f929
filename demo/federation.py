"""A whole federation on localhost, in one process: exchange, owners, coordinator, buyer.

Used by `fedtrust demo`, the end-to-end tests and the benchmarks, so all three
exercise the same real path: every party makes its own keys (`keygen`) and
the exchange certifies its request (`register`), files written by the
exchange's issuing code,
daemons started from their config files on 127.0.0.1:0 with mutual TLS, and
the buyer's real client. Nothing is mocked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedtrust.config import load_coordinator_config, load_dealer_config, load_node_config
from fedtrust.coordinator.daemon import CoordinatorDaemon
from fedtrust.demo.data import RULES_TOML, SCHEMA_TOML, training_toml, with_branches, write_loans
from fedtrust.exchange.issuer import init_exchange, issue_contract, list_product, register
from fedtrust.node.daemon import NodeDaemon
from fedtrust.node.dealer import DealerDaemon
from fedtrust.query.dataset import file_digest
from fedtrust.trust.contract_files import sign_contract_file
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.keygen import REQUEST, keygen

DEFAULT_OWNERS = {"bank-a": 4000, "bank-b": 2500, "insurer-c": 1200}
#: each owner's regional mix, so that some owners have small groups that they withhold
MIXES = [(0.3, 0.25, 0.2, 0.15, 0.1), (0.1, 0.2, 0.3, 0.38, 0.02), (0.05, 0.05, 0.5, 0.395, 0.005)]


#: the MPC dealer of `build_federation(mpc=True)`
DEALER_NAME = "notary"

DEMO_PURPOSE = "credit-risk statistics and models for lending policy research"


def sign_by_parties(contract: Path, credentials_root: Path, names: list[str]) -> None:
    """Each named party (its credentials in `credentials_root/<name>`) adds its signature, as
    `fedtrust contract sign` does."""
    for name in names:
        sign_contract_file(contract, load_identity(credentials_root / name))


def issue_signed_contract(root: Path, buyer: str, coordinator: str, products: list[Path], rules: Path, out: Path,
                          *, unsigned: tuple[str, ...] = (), purpose: str = DEMO_PURPOSE, **terms) -> Path:
    """The exchange in `root/exchange` issues a contract, then the buyer and every owner except `unsigned` sign it."""
    c = issue_contract(root / "exchange", buyer, coordinator, products, rules, out, purpose=purpose, **terms)
    sign_by_parties(out, root / "credentials", [n for n in [buyer, *c.owner_names] if n not in unsigned])
    return out


def enroll(exchange_dir: Path, role: str, name: str, addresses: list[str], out: Path) -> Path:
    """What a party and the exchange do in turn: `fedtrust keygen`, then `fedtrust exchange register`."""
    keygen(role, name, addresses, out)
    register(exchange_dir, out / REQUEST, out)
    return out


@dataclass
class Federation:
    root: Path
    exchange_dir: Path
    buyer_dir: Path
    contract_path: Path
    data: dict[str, Path]
    node_configs: dict[str, Path]
    coordinator_config: Path
    coordinator_name: str = "coord"
    nodes: dict[str, NodeDaemon] = field(default_factory=dict)
    coordinator: CoordinatorDaemon | None = None
    coordinator_address: str = ""
    #: the MPC dealer the contract names (`build_federation(mpc=True)`)
    dealer_config: Path | None = None
    dealer: DealerDaemon | None = None

    def start(self, metrics: bool = False) -> "Federation":
        """Start every daemon on 127.0.0.1:0 (with `metrics`, each also serves /metrics on a free port)."""
        addresses = {}
        where = "127.0.0.1:0" if metrics else None
        if self.dealer_config is not None:
            self.dealer = DealerDaemon(load_dealer_config(self.dealer_config))
            addresses[self.dealer.name] = f"127.0.0.1:{self.dealer.start('127.0.0.1:0', where)}"
        for name, cfg in self.node_configs.items():
            d = NodeDaemon(load_node_config(cfg))
            port = d.start("127.0.0.1:0", where)
            self.nodes[name] = d
            addresses[name] = f"127.0.0.1:{port}"
        self.coordinator = CoordinatorDaemon(load_coordinator_config(self.coordinator_config), addresses)
        self.coordinator_address = f"127.0.0.1:{self.coordinator.start('127.0.0.1:0', where)}"
        return self

    def stop(self) -> None:
        if self.coordinator is not None:
            self.coordinator.stop()
            self.coordinator = None
        for d in self.nodes.values():
            d.stop()
        self.nodes.clear()
        if self.dealer is not None:
            self.dealer.stop()
            self.dealer = None

    def __enter__(self) -> "Federation":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_federation(root: Path, owners: dict[str, int] | None = None, *, min_group_size: int = 10,
                     max_queries: int = 100, data_format: str = "csv", seed: int = 7,
                     coordinator_name: str = "coord", buyer_name: str = "analyst",
                     privacy: dict[str, str] | None = None, training: dict | None = None,
                     node_extra: str = "", branches: int = 0, mpc: bool = False) -> Federation:
    """Issue everything and write every file; `Federation.start()` then starts the daemons.

    `branches` > 0 adds a `branch` category of that many values that queries may group by
    (benchmarks with many groups).
    """
    owners = owners or DEFAULT_OWNERS
    root = Path(root)
    ex = root / "exchange"
    init_exchange(ex)
    creds = root / "credentials"
    enroll(ex, "buyer", buyer_name, [], creds / buyer_name)
    enroll(ex, "coordinator", coordinator_name, ["127.0.0.1:7000"], creds / coordinator_name)
    schema_toml, rules_toml = with_branches(SCHEMA_TOML, RULES_TOML, branches)
    (root / "schema.toml").write_text(schema_toml)
    rules = rules_toml.format(min_group_size=min_group_size, max_queries=max_queries)
    dealer_cfg = None
    if mpc:  # a dealer the owners agree to, and the MPC aggregates the contract sells
        rules = rules.replace('"STDDEV_SAMP"]', '"STDDEV_SAMP", "MIN", "MAX", "MEDIAN", "QUANTILE"]', 1)
        enroll(ex, "dealer", DEALER_NAME, ["127.0.0.1:7050"], creds / DEALER_NAME)
        dealer_cfg = root / "config" / f"{DEALER_NAME}.toml"
        dealer_cfg.parent.mkdir(parents=True, exist_ok=True)
        dealer_cfg.write_text(f'[dealer]\nname = "{DEALER_NAME}"\nlisten = "127.0.0.1:0"\n'
                              f'credentials = "../credentials/{DEALER_NAME}"\n')
    rules += training_toml(training)
    if privacy:
        rules += "\n[privacy]\n" + "".join(f'{k} = "{v}"\n' for k, v in privacy.items())
    (root / "rules.toml").write_text(rules)
    data, configs, products = {}, {}, []
    for i, (name, rows) in enumerate(owners.items()):
        enroll(ex, "node", name, [f"127.0.0.1:{7101 + i}"], creds / name)  # daemons bind port 0; see start()
        path = write_loans(root / "data" / f"{name}.{data_format}", rows, seed + i, MIXES[i % len(MIXES)], branches)
        data[name] = path
        product = root / "products" / f"{name}.json"
        product.parent.mkdir(parents=True, exist_ok=True)
        # the declared minimum row count is public (DP training plans from it): here, the size rounded down
        list_product(ex, name, "loans", root / "schema.toml", file_digest(path), product,
                     min_rows=max(1, rows // 100 * 100))
        products.append(product)
        cfg = root / "config" / f"{name}.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(
            f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\ncredentials = "../credentials/{name}"\n'
            f'state = "../state/{name}"\n\n[[datasets]]\nproduct = "../products/{name}.json"\n'
            f'path = "../data/{path.name}"\n' + node_extra
        )
        configs[name] = cfg
    contract = root / "contract.json"
    issue_signed_contract(root, buyer_name, coordinator_name, products, root / "rules.toml", contract,
                          dealer=DEALER_NAME if mpc else None)
    coord_cfg = root / "config" / f"{coordinator_name}.toml"
    coord_cfg.write_text(
        f'[coordinator]\nname = "{coordinator_name}"\nlisten = "127.0.0.1:0"\n'
        f'credentials = "../credentials/{coordinator_name}"\nstate = "../state/{coordinator_name}"\n'
        "node_timeout_s = 120\n"
    )
    return Federation(root, ex, creds / buyer_name, contract, data, configs, coord_cfg, coordinator_name,
                      dealer_config=dealer_cfg)
