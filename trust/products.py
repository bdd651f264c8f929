"""Product credentials: a listed dataset (owner, name, public schema, data commitment).

The exchange signs a product when a node lists a data version. Contracts and
receipts refer to the product by its envelope digest; the commitment is the
sha256 of the data file the node serves (`fedtrust node digest`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import ConfigError, InvalidInput
from fedtrust.trust.canonical import Fields, is_sha256_hex
from fedtrust.trust.dsse import Envelope, Signer, verify_object
from fedtrust.trust.pki import check_name
from fedtrust.trust.schema import Schema

__all__ = ["PRODUCT_TYPE", "DATASET_PATTERN", "check_dataset", "Product", "sign_product", "verify_product"]

PRODUCT_TYPE = "https://fedtrust.dev/Product/v1"
#: dataset names are SQL identifiers: buyers write `FROM <dataset>` unquoted
DATASET_PATTERN = r"[a-z_][a-z0-9_]{0,62}"
_DATASET = re.compile(DATASET_PATTERN)


def check_dataset(name: str) -> str:
    if not isinstance(name, str) or not _DATASET.fullmatch(name):
        raise ConfigError(
            f"dataset name {name!r} is not allowed; use 1-63 characters a-z 0-9 _ starting with a letter or _ "
            "(buyers write it in SQL as FROM <dataset>)"
        )
    return name


@dataclass(frozen=True)
class Product:
    owner: str
    dataset: str
    schema: Schema
    commitment: str
    issued_at: str
    #: the fewest rows the owner declares the data version has (public): DP training plans its
    #: sampling rate from it, never from the actual row count
    min_rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "owner": self.owner,
            "dataset": self.dataset,
            "schema": self.schema.to_dict(),
            "commitment": self.commitment,
            "issued_at": self.issued_at,
        }
        if self.min_rows is not None:
            d["min_rows"] = self.min_rows
        return d

    @classmethod
    def from_dict(cls, d: object) -> Product:
        f = Fields(d, "product")
        try:
            owner, dataset = check_name(f.text("owner")), check_dataset(f.text("dataset"))
            schema = Schema.from_dict(f.obj("schema"))
        except ConfigError as e:
            raise InvalidInput(f"product: {e}") from None
        min_rows = f.integer("min_rows") if "min_rows" in f.d else None
        if min_rows is not None and min_rows < 1:
            raise InvalidInput("product: `min_rows` must be at least 1")
        return cls(owner, dataset, schema, f.digest("commitment"), f.time("issued_at"), min_rows)


def sign_product(product: Product, exchange_signer: Signer) -> Envelope:
    if not is_sha256_hex(product.commitment):
        raise ConfigError("product commitment must be a lowercase sha256 hex digest (`fedtrust node digest FILE`)")
    return exchange_signer.sign_statement(
        PRODUCT_TYPE, product.to_dict(), [(f"{product.owner}/{product.dataset}", product.commitment)]
    )


def verify_product(envelope: Envelope, exchange_key: Ed25519PublicKey) -> Product:
    return verify_object(envelope, exchange_key, PRODUCT_TYPE, Product.from_dict, "product")
