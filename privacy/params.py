"""Public parameters of the buyer's BFV context (no TenSEAL import here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedtrust.errors import InvalidInput

#: 59-bit prime, ≡ 1 mod 2·8192, so BFV at N=8192 batches 8192 slots and adds exactly mod t.
PLAIN_MODULUS = 576460752303210497
POLY_MODULUS_DEGREE = 8192
SLOTS = POLY_MODULUS_DEGREE
#: Largest serialized public context accepted (a buyer's public BFV context at N=8192 is ~390 KB; ~540 KB with SEAL's default modulus).
MAX_CONTEXT_BYTES = 4 * 1024 * 1024
#: Largest serialized ciphertext accepted (a fresh one at N=8192 is ~260 KB; ~432 KB with SEAL's default modulus).
MAX_CIPHERTEXT_BYTES = 1024 * 1024
#: a query layout needs at most 16 ciphertexts (fedtrust.query.layout.MAX_SLOTS)
MAX_QUERY_CIPHERTEXTS = 16


@dataclass(frozen=True)
class HeParams:
    context_digest: str  # sha256 hex of the serialized public context
    scheme: str = "bfv"
    poly_modulus_degree: int = POLY_MODULUS_DEGREE
    plain_modulus: int = PLAIN_MODULUS

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "poly_modulus_degree": self.poly_modulus_degree,
            "plain_modulus": str(self.plain_modulus),  # > 2^53: a string in signed JSON
            "context_digest": self.context_digest,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeParams":
        try:
            return cls(
                context_digest=str(d["context_digest"]),
                scheme=str(d["scheme"]),
                poly_modulus_degree=int(d["poly_modulus_degree"]),
                plain_modulus=int(str(d["plain_modulus"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInput(f"HE parameters are malformed ({e}); the job spec must name scheme, degree, modulus and digest") from None

    def check_supported(self) -> None:
        """Nodes accept exactly the parameters fedtrust's encoding is proven for."""
        if self.scheme != "bfv" or self.poly_modulus_degree != POLY_MODULUS_DEGREE or self.plain_modulus != PLAIN_MODULUS:
            raise InvalidInput(
                f"HE parameters not supported: need BFV, N={POLY_MODULUS_DEGREE}, t={PLAIN_MODULUS}; "
                "create the context with `fedtrust query` (fedtrust.privacy.he.BuyerKeys)"
            )
