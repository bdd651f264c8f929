"""The buyer's local record of each job: the secret HE context and what is needed to fetch again.

One folder per job under `<credentials>/jobs/<job id>/`. The secret context
is written with mode 0600 (the folder 0700): whoever holds it can decrypt
the aggregate, so it never leaves the buyer's machine.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fedtrust.errors import ConfigError, NotFound


@dataclass(frozen=True)
class JobFiles:
    root: Path

    @property
    def secret(self) -> Path:
        return self.root / "he-secret.bin"

    @property
    def public(self) -> Path:
        """The public HE context the job names (the buyer adds the relayed ciphertexts under it)."""
        return self.root / "he-public.bin"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def contract(self) -> Path:
        return self.root / "contract.json"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def receipt(self) -> Path:
        return self.root / "receipt.json"

    def create(self, secret: bytes, job: bytes, contract: bytes, meta: dict, public: bytes | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=False, mode=0o700)
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        if public is not None:
            self.public.write_bytes(public)
        self.job.write_bytes(job)
        self.contract.write_bytes(contract)
        self.meta.write_text(json.dumps(meta, indent=2))

    def read_meta(self) -> dict:
        return json.loads(self.meta.read_text())

    def read_public(self) -> bytes:
        try:
            return self.public.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"job folder {self.root} has no public HE context (he-public.bin); it was made by an "
                              "older fedtrust, so its result cannot be checked: submit the query again") from None


def jobs_root(credentials: Path) -> Path:
    return Path(credentials) / "jobs"


def open_job(credentials: Path, job_id: str) -> JobFiles:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ConfigError(f"{job_id!r} is not a job id")
    files = JobFiles(jobs_root(credentials) / job_id)
    if not files.meta.is_file():
        raise NotFound(f"no local record of job {job_id} under {jobs_root(credentials)}; "
                       "use the --credentials the job was submitted with")
    return files
