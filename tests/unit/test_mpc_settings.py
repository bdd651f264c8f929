"""The MPC relay's caps and idle limits are settings: read strictly, with a one-line error naming key and range."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedtrust.config import MIB, MPC_MAX_FRAME_MIB, load_coordinator_config, load_node_config
from fedtrust.coordinator.mpc_job import MpcJobs
from fedtrust.errors import ConfigError
from fedtrust.transport.limits import MAX_MESSAGE_BYTES

COORD = '[coordinator]\nname = "coord"\nlisten = "127.0.0.1:0"\ncredentials = "creds"\nstate = "state"\n'
NODE = ('[node]\nname = "bank-a"\nlisten = "127.0.0.1:0"\ncredentials = "creds"\nstate = "state"\n{extra}'
        '[[datasets]]\nproduct = "p.json"\npath = "d.csv"\n')


def coordinator(tmp_path, extra: str = ""):
    p = tmp_path / "coord.toml"
    p.write_text(COORD + extra)
    return load_coordinator_config(p)


def test_the_relay_reads_its_caps_and_idle_limit_from_the_coordinators_config(tmp_path):
    cfg = coordinator(tmp_path, "mpc_max_frame_mib = 4\nmpc_max_session_gib = 2\nmpc_idle_s = 900\n")
    relay = MpcJobs(SimpleNamespace(config=cfg), served={"mpc-stats"})
    assert (relay.max_frame, relay.max_bytes, relay.idle_s) == (4 * MIB + 4096, 2 * 1024 * MIB, 900.0)
    default = MpcJobs(SimpleNamespace(config=coordinator(tmp_path)), served={"mpc-stats"})
    assert (default.max_frame, default.max_bytes, default.idle_s) == (16 * MIB + 4096, 8 * 1024 * MIB, 120.0)
    # a frame travels as one gRPC message: the largest setting is the transport's message cap
    assert MPC_MAX_FRAME_MIB * MIB == MAX_MESSAGE_BYTES


@pytest.mark.parametrize("line, match", [
    ("mpc_max_frame_mib = 64", r"\[coordinator\] mpc_max_frame_mib must be between 1 and 16 \(got 64\)"),
    ("mpc_max_frame_mib = 0", r"\[coordinator\] mpc_max_frame_mib must be between 1 and 16 \(got 0\)"),
    ("mpc_max_frame_mib = 1.5", r"\[coordinator\] mpc_max_frame_mib must be an integer, not a number"),
    ("mpc_max_session_gib = 4096", r"\[coordinator\] mpc_max_session_gib must be between 1 and 1024 \(got 4096\)"),
    ("mpc_idle_s = 0", r"\[coordinator\] mpc_idle_s must be greater than 0 \(got 0.0\)"),
    ("mpc_idle_s = 100000", r"\[coordinator\] mpc_idle_s must be between 0 and 86400 \(got 100000.0\)"),
    ('mpc_idle_s = "600"', r"\[coordinator\] mpc_idle_s must be a number, not a string \('600'\); write it "
                           "without quotes"),
    ("mpc_idle = 600", r"\[coordinator\] mpc_idle is not a known key; known keys: .*mpc_idle_s"),
])
def test_a_bad_relay_setting_names_the_key_and_the_allowed_range(tmp_path, line, match):
    with pytest.raises(ConfigError, match=match) as e:
        coordinator(tmp_path, line + "\n")
    assert "\n" not in str(e.value) and "coord.toml" in str(e.value)


def test_a_nodes_mpc_idle_limit_is_a_setting_too(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text(NODE.format(extra="mpc_idle_s = 1800\nstream_idle_s = 1800\n"))
    cfg = load_node_config(p)
    assert (cfg.mpc_idle_s, cfg.server.stream_idle_s) == (1800.0, 1800.0)
    p.write_text(NODE.format(extra="mpc_idle_s = -1\n"))
    with pytest.raises(ConfigError, match=r"\[node\] mpc_idle_s must be greater than 0 \(got -1.0\)"):
        load_node_config(p)
