"""The `node_config` keys a fedtrust node passes to the ClientApps it runs.

Flower apps read node-specific settings from `context.node_config` (scalars
only). A fedtrust node fills these keys from the *buyer-signed* training spec,
the contract's public schema and its own NODE.toml — never from what the
coordinator sends — before it calls the built-in ClientApp or an approved one:

==============================  =======  =====================================================
key                             type     meaning
==============================  =======  =====================================================
fedtrust.dataset-path           str      the product file this node serves (CSV or Parquet)
fedtrust.schema                 str      the product's public schema, JSON (bounds, domains)
fedtrust.features               str      feature columns, comma-joined, in the job's order
fedtrust.label                  str      the label column
fedtrust.model                  str      the job's model: a registry id or an approved app's name
fedtrust.architecture           str      the registry model whose arrays travel (logreg, mlp, cnn)
fedtrust.model-options          str      `[job.model_options]`, JSON
fedtrust.local-epochs           int      local epochs per round
fedtrust.batch-size             int      minibatch size
fedtrust.learning-rate          float    the local optimizer's learning rate
fedtrust.optimizer              str      sgd | adam
fedtrust.proximal-mu            float    FedProx μ from the signed spec (0 = no proximal term)
fedtrust.device                 str      cpu, cuda or cuda:N (NODE.toml `device`, "auto" resolved)
fedtrust.seed                   int      shuffling seed for this (job, node, round)
fedtrust.max-examples           int      most examples an update may be weighted by (2^28)
fedtrust.dp-noise-multiplier    float    DP-SGD noise multiplier σ; 0 = no DP (the contract has no [privacy])
fedtrust.dp-max-grad-norm       float    DP-SGD per-sample clipping norm C
fedtrust.dp-sample-rate         float    Poisson sampling rate q = batch_size / declared min_rows
fedtrust.dp-steps               int      DP-SGD steps per round (public: from min_rows, not the row count)
fedtrust.job-id                 str      the job's id (for logs)
==============================  =======  =====================================================

`fedtrust.training.data.local_data(context)` returns the node's preprocessed
rows for these keys, so an approved app need not read files itself.

Apps written for Flower, which know nothing of fedtrust, find what Flower's
runtimes give them (`flower_context`): in `node_config`, `partition-id` = 0
and `num-partitions` = 1 (a node's rows are one whole partition) and
`dataset-path` (the product file, where a Flower deployment's SuperNode is
told its data with `--node-config`); a `run_config` built from the signed
spec (`num-server-rounds`, `local-epochs`, `batch-size`, `learning-rate`,
`lr`, `optimizer`, `strategy`, `fraction-train`, `fraction-evaluate`,
`proximal-mu`); and in each round's `config`, `server-round` and `lr`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from fedtrust.errors import InvalidInput
from fedtrust.training.quantize import MAX_EXAMPLES
from fedtrust.training.spec import ModelOptions, TrainingSpec

__all__ = ["KEYS", "FLOWER_NODE_KEYS", "NodeJob", "node_config", "run_config", "round_config"]

PREFIX = "fedtrust."
KEYS = (
    "dataset-path", "schema", "features", "label", "model", "architecture", "model-options", "local-epochs",
    "batch-size", "learning-rate", "optimizer", "proximal-mu", "device", "seed", "max-examples",
    "dp-noise-multiplier", "dp-max-grad-norm", "dp-sample-rate", "dp-steps", "job-id",
)


def node_config(spec: TrainingSpec, *, dataset_path: str, schema: dict[str, Any], device: str, seed: int,
                job_id: str, dp: Any = None) -> dict[str, bool | int | float | str]:
    """The node_config for one round of `spec` on this node."""
    cfg: dict[str, bool | int | float | str] = {
        "dataset-path": dataset_path,
        "schema": json.dumps(schema, sort_keys=True),
        "features": ",".join(spec.features),
        "label": spec.label,
        "model": spec.model,
        "architecture": spec.architecture,
        "model-options": json.dumps(spec.model_options.to_dict(), sort_keys=True),
        "local-epochs": spec.local_epochs,
        "batch-size": spec.batch_size,
        "learning-rate": float(spec.learning_rate),
        "optimizer": spec.optimizer,
        "proximal-mu": float(spec.options.get("proximal_mu", 0.0)) if spec.strategy == "fedprox" else 0.0,
        "device": device,
        "seed": int(seed),
        "max-examples": MAX_EXAMPLES,
        "dp-noise-multiplier": float(dp.noise_multiplier) if dp else 0.0,
        "dp-max-grad-norm": float(dp.max_grad_norm) if dp else 0.0,
        "dp-sample-rate": float(dp.sample_rate) if dp else 0.0,
        "dp-steps": int(dp.steps_per_round) if dp else 0,
        "job-id": job_id,
    }
    flower: dict[str, bool | int | float | str] = {"partition-id": 0, "num-partitions": 1, "dataset-path": dataset_path}
    return {**{PREFIX + k: v for k, v in cfg.items()}, **flower}


#: the unprefixed node_config keys Flower's runtimes set and Flower apps read
FLOWER_NODE_KEYS = ("partition-id", "num-partitions", "dataset-path")


def run_config(spec: TrainingSpec) -> dict[str, bool | int | float | str]:
    """The Flower `run_config` of a job, from the signed spec (the keys Flower app templates read)."""
    return {
        "num-server-rounds": spec.rounds,
        "local-epochs": spec.local_epochs,
        "batch-size": spec.batch_size,
        "learning-rate": float(spec.learning_rate),
        "lr": float(spec.learning_rate),
        "optimizer": spec.optimizer,
        "strategy": spec.strategy,
        "fraction-train": 1.0,  # every participant trains every round
        "fraction-evaluate": 1.0 if spec.evaluate else 0.0,
        "proximal-mu": float(spec.options.get("proximal_mu", 0.0)) if spec.strategy == "fedprox" else 0.0,
    }


def round_config(spec: TrainingSpec, server_round: int) -> dict[str, bool | int | float | str]:
    """A round's `config` record as a Flower strategy sends it, built from the signed spec (never the wire)."""
    cfg: dict[str, bool | int | float | str] = {"server-round": server_round, "lr": float(spec.learning_rate)}
    if spec.strategy == "fedprox":
        cfg["proximal-mu"] = float(spec.options.get("proximal_mu", 0.0))
    return cfg


@dataclass(frozen=True)
class NodeJob:
    """The node_config keys, parsed (what the built-in ClientApp works from)."""

    dataset_path: str
    schema: dict[str, Any]
    features: tuple[str, ...]
    label: str
    architecture: str
    model_options: ModelOptions
    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    proximal_mu: float
    device: str
    seed: int
    max_examples: int
    dp_noise_multiplier: float
    dp_max_grad_norm: float
    dp_sample_rate: float = 0.0
    dp_steps: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> NodeJob:
        def get(key: str, typ: type) -> Any:
            v = cfg.get(PREFIX + key)
            if typ is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, typ) or isinstance(v, bool) != (typ is bool):
                raise InvalidInput(f"node_config key {PREFIX}{key} is missing or not a {typ.__name__}; "
                                   "this ClientApp runs on fedtrust nodes only")
            return v

        try:
            schema = json.loads(get("schema", str))
            options = ModelOptions.from_dict(json.loads(get("model-options", str)))
        except json.JSONDecodeError:
            raise InvalidInput("node_config holds malformed JSON; this ClientApp runs on fedtrust nodes only") from None
        return cls(
            dataset_path=get("dataset-path", str), schema=schema, features=tuple(get("features", str).split(",")),
            label=get("label", str), architecture=get("architecture", str), model_options=options,
            local_epochs=get("local-epochs", int), batch_size=get("batch-size", int),
            learning_rate=get("learning-rate", float), optimizer=get("optimizer", str),
            proximal_mu=get("proximal-mu", float), device=get("device", str), seed=get("seed", int),
            max_examples=get("max-examples", int), dp_noise_multiplier=get("dp-noise-multiplier", float),
            dp_max_grad_norm=get("dp-max-grad-norm", float), dp_sample_rate=get("dp-sample-rate", float),
            dp_steps=get("dp-steps", int),
        )

    def model_spec(self) -> TrainingSpec:
        """A spec with this job's architecture and options (for `fedtrust.training.models.build_model`)."""
        return TrainingSpec(dataset="-", model=self.architecture, features=self.features, label=self.label,
                            strategy="fedavg", rounds=1, local_epochs=self.local_epochs, batch_size=self.batch_size,
                            learning_rate=self.learning_rate, model_options=ModelOptions(
                                self.model_options.hidden, self.model_options.image, None))
