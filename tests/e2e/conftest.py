"""Shared fixtures: a whole federation on localhost (real daemons, mTLS, 127.0.0.1:0)."""
from __future__ import annotations

import pytest

from fedtrust.demo.federation import build_federation


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("fed"))
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()
