"""A training spec against a contract's rules: the checks every node runs by itself.

The buyer's CLI runs them first for fast, clear refusals; each node runs them
again on the signed spec before it computes anything; the exchange runs them
when it verifies a receipt. Each refusal names the rule (`[training] models`,
`max_rounds`, ...), never a data value. No torch or Flower here.
"""
from __future__ import annotations

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.training.quantize import MAX_PARTICIPANTS
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.rules import Rules
from fedtrust.trust.schema import Schema

__all__ = ["check_training", "check_dp_training", "DP_MODELS", "MAX_CLASSES"]

#: an int label spans at most this many classes (max - min + 1)
MAX_CLASSES = 1000


#: models whose training the node itself makes DP (it runs DP-SGD inside the built-in ClientApp)
DP_MODELS = ("logreg", "mlp", "cnn")


def check_dp_training(spec: TrainingSpec, rules: Rules) -> None:
    """Under `[privacy]`, only what the node can make DP by itself is allowed."""
    privacy = rules.privacy
    assert privacy is not None
    if not privacy.allows_training:
        raise PolicyViolation("the contract's [privacy] rules refuse training (training = \"refuse\")")
    if spec.model not in DP_MODELS:
        raise PolicyViolation(
            f"model {spec.model} is an approved ClientApp; under the contract's [privacy] rules nodes train only "
            f"the vetted models ({', '.join(DP_MODELS)}) with DP-SGD"
        )
    if spec.evaluate:
        raise PolicyViolation(
            "federated evaluation releases exact metrics of each owner's rows, which the contract's [privacy] "
            "rules forbid; set evaluate = false in job.toml"
        )
    if spec.strategy == "fedprox":
        raise PolicyViolation("FedProx's proximal term is not covered by DP-SGD's clipping; use another strategy "
                              "under the contract's [privacy] rules")


def check_training(spec: TrainingSpec, rules: Rules, schema: Schema, dataset: str, participants: int) -> None:
    """PolicyViolation when the contract forbids the job; InvalidInput when it cannot run on this schema."""
    t = rules.training
    if t is None:
        raise PolicyViolation("this contract sells no training (its rules have no [training] table)")
    if rules.privacy is not None:
        check_dp_training(spec, rules)
    if spec.dataset != dataset:
        raise PolicyViolation(f"the job trains on dataset {spec.dataset} but the contract sells {dataset}")
    if spec.model not in t.models:
        raise PolicyViolation(
            f"model {spec.model} is not allowed by the contract's [training] models rule ({', '.join(t.models)})"
        )
    if spec.rounds > t.max_rounds:
        raise PolicyViolation(f"{spec.rounds} rounds exceed the contract's [training] max_rounds of {t.max_rounds}")
    if participants < t.min_nodes:
        raise PolicyViolation(
            f"the job has {participants} owners but the contract's [training] min_nodes is {t.min_nodes}; "
            "training over fewer owners is refused"
        )
    if participants > MAX_PARTICIPANTS:
        raise PolicyViolation(f"training supports at most {MAX_PARTICIPANTS} owners per job (fixed-point sums)")
    if spec.secure_aggregation == "none" and not t.allow_plaintext_aggregation:
        raise PolicyViolation(
            "plaintext aggregation is not allowed: the contract's [training] allow_plaintext_aggregation is "
            "false; use secure_aggregation = \"masking\""
        )
    for name in (*spec.features, spec.label):
        if not schema.has(name):
            raise PolicyViolation(f"column `{name}` is not in the product schema")
        if name not in t.columns:
            raise PolicyViolation(f"column `{name}` is not allowed by the contract's [training] columns rule")
    label = schema.column(spec.label)
    if label.type == "float":
        raise InvalidInput(f"label `{spec.label}` is a float column; train on a category or int column")
    if label.type == "int":
        assert label.min is not None and label.max is not None
        if int(label.max) - int(label.min) + 1 > MAX_CLASSES:
            raise InvalidInput(f"label `{spec.label}` spans more than {MAX_CLASSES} classes; use a category label")
    if spec.architecture == "cnn":
        assert spec.model_options.image is not None
        c, h, w = spec.model_options.image
        from fedtrust.training.preprocess import input_width  # no heavy imports

        width = input_width(schema, spec.features)
        if width != c * h * w:
            raise InvalidInput(
                f"the cnn's image {c}x{h}x{w} needs {c * h * w} inputs but the features give {width}"
            )
    from fedtrust.training.models import check_parameter_count  # arithmetic only: nothing is built
    from fedtrust.training.preprocess import Preprocessor

    pre = Preprocessor.build(schema, spec.features, spec.label)
    check_parameter_count(spec, pre.width, pre.outputs)
