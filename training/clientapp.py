"""The built-in Flower ClientApp every fedtrust node runs for the registry models.

It reads everything it needs from `context.node_config` (keys in
`fedtrust.training.context`): the node's preprocessed rows
(`fedtrust.training.data.local_data`), the registry architecture and the
hyperparameters of the buyer-signed spec. From the message it takes only the
global arrays (and the round, for logs).

* ``train``: load the global arrays, run `local_epochs` of SGD or Adam (with
  FedProx's proximal term μ/2·‖w − w_global‖² when the spec asks for it), reply
  with the new arrays and `num-examples`, `loss`, `accuracy`;
* ``evaluate``: loss and accuracy of the global model on the node's rows.

CUDA is used when the node's `device` resolves to it. DP-SGD (a later issue)
hooks in where `dp-noise-multiplier` > 0; until then such a job is refused.

Approved ClientApps may import the helpers here (`load_global`,
`reply_with`) to follow the same conventions; whatever an app replies, the
node keeps only the arrays of the global model, `num-examples`, `loss` and
`accuracy` (`fedtrust.node.training_runtime`).
"""
from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtrust.errors import PolicyViolation
from fedtrust.training import loop
from fedtrust.training.arrays import array_numpy
from fedtrust.training.context import NodeJob
from fedtrust.training.data import local_data
from fedtrust.training.models import build_model, model_arrays

__all__ = ["app", "load_global", "reply_with"]

app = ClientApp()


def load_global(msg: Message, context: Context):
    """(job, data, model) with the model holding the message's global arrays."""
    import torch

    job = NodeJob.from_config(context.node_config)
    data = local_data(context)
    model = build_model(job.model_spec(), data.preprocessor.width, data.preprocessor.outputs)
    record = next(iter(msg.content.array_records.values()))
    state = {k: torch.from_numpy(array_numpy(v)) for k, v in record.items()}
    model.load_state_dict(state, strict=True)
    return job, data, model


def reply_with(msg: Message, outcome: loop.Outcome, arrays: dict | None = None) -> Message:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: _array(v) for k, v in arrays.items()})
    content["metrics"] = MetricRecord({"num-examples": outcome.examples, "loss": outcome.loss,
                                       "accuracy": outcome.accuracy})
    return Message(content, reply_to=msg)


def _array(v):
    from flwr.app import Array

    return Array(v)


@app.train()
def train(msg: Message, context: Context) -> Message:
    job, data, model = load_global(msg, context)
    device = loop.resolve_device(job.device)
    if job.dp_noise_multiplier > 0:
        return reply_with(msg, dp_fit(model, data, job), model_arrays(model))
    outcome = loop.fit(model, data.x, data.y, epochs=job.local_epochs, batch_size=job.batch_size,
                       learning_rate=job.learning_rate, optimizer=job.optimizer, device=device, seed=job.seed,
                       proximal_mu=job.proximal_mu)
    return reply_with(msg, outcome, model_arrays(model))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job, data, model = load_global(msg, context)
    outcome = loop.evaluate(model, data.x, data.y, device=loop.resolve_device(job.device))
    return reply_with(msg, outcome)


def dp_fit(model, data, job: NodeJob) -> loop.Outcome:
    """DP-SGD (Opacus, CSPRNG noise) for the round; the node reports only public counts for it."""
    import torch

    from fedtrust.training.dp_sgd import DpSgdRun, dp_train_round

    if job.dp_max_grad_norm <= 0 or not 0 < job.dp_sample_rate <= 1 or job.dp_steps < 1:
        raise PolicyViolation("DP-SGD needs a clipping norm, a sampling rate in (0, 1] and at least one step")
    run = DpSgdRun(job.dp_noise_multiplier, job.dp_max_grad_norm, job.dp_sample_rate, job.dp_steps, job.batch_size)
    x = torch.from_numpy(data.x.copy())
    y = torch.from_numpy(data.y.copy())

    def mean_loss(out, yb):
        total, _ = loop._loss_and_correct(out, yb)
        return total / max(len(yb), 1)

    model.to("cpu")  # Opacus's per-sample gradients run where the data is
    dp_train_round(model, x, y, run, learning_rate=job.learning_rate, loss_fn=mean_loss)
    return loop.Outcome(len(y), 0.0, 0.0)
