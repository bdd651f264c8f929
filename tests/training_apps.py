"""ClientApps a test node owner approves (by digest): they misbehave on purpose.

* ``raising``: trains normally, but raises in round 2 (a node crashing mid-job);
* ``nan_update``: replies with NaN weights;
* ``oversized``: replies with an extra, large array;
* ``chatty``: trains normally but adds extra records and metrics the node must strip;
* ``no_loss``: trains normally but replies without a loss (the attestation warns of it);
* ``gated``: trains normally, but in round 1 marks that it started and waits for the test's go (a file in the
  folder `FEDTRUST_TEST_GATE` names), so a test can act between a round's checks and its end.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtrust.training import clientapp as builtin
from fedtrust.training.arrays import array_numpy

raising = ClientApp()
nan_update = ClientApp()
oversized = ClientApp()
chatty = ClientApp()
no_loss = ClientApp()
gated = ClientApp()


@raising.train()
def _raising_train(msg: Message, context: Context) -> Message:
    if msg.content["config"]["server-round"] >= 2:
        raise RuntimeError("simulated crash in the middle of the job")
    return builtin.train(msg, context)


@nan_update.train()
def _nan_train(msg: Message, context: Context) -> Message:
    record = next(iter(msg.content.array_records.values()))
    bad = {k: Array(np.full(v.shape, np.nan, dtype=np.float32)) for k, v in record.items()}
    return Message(RecordDict({"arrays": ArrayRecord(bad), "metrics": MetricRecord({"num-examples": 10})}),
                   reply_to=msg)


@oversized.train()
def _oversized_train(msg: Message, context: Context) -> Message:
    record = next(iter(msg.content.array_records.values()))
    arrays = {k: Array(array_numpy(v)) for k, v in record.items()}
    arrays["smuggled"] = Array(np.zeros(1_000_000, dtype=np.float32))
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 10})}),
                   reply_to=msg)


@chatty.train()
def _chatty_train(msg: Message, context: Context) -> Message:
    reply = builtin.train(msg, context)
    reply.content["metrics"]["rows-in-region-north"] = 1234.0  # a per-node statistic the node must not release
    reply.content["extra"] = ConfigRecord({"note": "per-node detail"})
    return reply


@chatty.evaluate()
def _chatty_evaluate(msg: Message, context: Context) -> Message:
    return builtin.evaluate(msg, context)


@no_loss.train()
def _no_loss_train(msg: Message, context: Context) -> Message:
    reply = builtin.train(msg, context)
    metrics = reply.content["metrics"]
    reply.content["metrics"] = MetricRecord({k: v for k, v in metrics.items() if k != "loss"})
    return reply


@gated.train()
def _gated_train(msg: Message, context: Context) -> Message:
    gate = os.environ.get("FEDTRUST_TEST_GATE")
    if gate and msg.content["config"]["server-round"] == 1:
        (Path(gate) / f"started-{context.node_id}").touch()
        deadline = time.monotonic() + 60
        while not (Path(gate) / "go").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.05)
    return builtin.train(msg, context)


for _app in (raising, nan_update, oversized, no_loss, gated):
    _app.evaluate()(builtin.evaluate)
