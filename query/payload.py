"""The payload of a query job (kind "query"): the SQL and the buyer's HE parameters.

Registered with `fedtrust.trust.jobs` on import; its keys in the signed job
spec are "sql" and "he", as they were before job kinds became a seam.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from fedtrust.errors import InvalidInput
from fedtrust.privacy.params import HeParams
from fedtrust.trust.canonical import Fields, is_sha256_hex
from fedtrust.trust.jobs import DEFAULT_TTL, MAX_SQL_CHARS, register_payload

__all__ = ["QueryPayload"]


@dataclass(frozen=True)
class QueryPayload:
    sql: str
    he: HeParams

    kind: ClassVar[str] = "query"
    ttl: ClassVar[timedelta] = DEFAULT_TTL

    def to_fields(self) -> dict[str, Any]:
        return {"sql": self.sql, "he": self.he.to_dict()}

    @classmethod
    def from_fields(cls, f: Fields) -> QueryPayload:
        return cls(f.text("sql"), HeParams.from_dict(f.obj("he")))

    def check_payload(self, dataset: str) -> None:
        if not self.sql.strip() or len(self.sql) > MAX_SQL_CHARS:
            raise InvalidInput(f"job spec: sql must be a non-empty query of at most {MAX_SQL_CHARS} characters")
        if not is_sha256_hex(self.he.context_digest):
            raise InvalidInput("job spec: he.context_digest must be a lowercase sha256 hex digest")

    def describe(self) -> str:
        return self.sql


register_payload(QueryPayload.kind, QueryPayload.from_fields)
