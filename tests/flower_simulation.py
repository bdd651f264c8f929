"""Run a Flower app directory under Flower's own simulation runtime, the way `flwr run` / flwr-simulation does.

Usage: python flower_simulation.py APP_DIR NUM_SUPERNODES KEY=VALUE...   (run-config overrides; cwd gets the output)

It reads the app's pyproject.toml ([tool.flwr.app.components] and .config), fuses the run config with the
overrides, and calls the same `_run_simulation` entry flwr-simulation calls (Ray backend), so the app's files
run exactly as Flower runs them. A separate process: Ray's state never leaks into the test process.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.config import get_fused_config_from_dir, get_project_config, parse_config_args
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType


def main() -> None:
    app_dir, supernodes, overrides = Path(sys.argv[1]).resolve(), int(sys.argv[2]), sys.argv[3:]
    sys.path.insert(0, str(app_dir))
    components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
    run = replace(Run.create_empty(run_id=4242), override_config=parse_config_args([" ".join(overrides)]),
                  primary_task_id=7, federation_id=NOOP_FEDERATION_ID)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, run.run_id, 1
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=get_fused_config_from_dir(app_dir, run.override_config))
    _run_simulation(
        server_app_attr=components["serverapp"], client_app_attr=components["clientapp"],
        num_supernodes=supernodes, backend_name="ray",
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False}},
        app_dir=str(app_dir), run=run, server_app_context=context, is_app=True,
        exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
    )


if __name__ == "__main__":
    main()
