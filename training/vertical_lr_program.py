"""The vertical-lr job kind as an MPC program (`privacy.mpc.program`): the daemons' contexts in, the model out.

* admit (each owner, before anything is read or spent): the contract's rules (`trust.vertical_lr`), and the PSI
  job the spec names (`alignment`) left this node an alignment of at least `min_intersection` rows; the job
  counts against `[vertical] max_jobs` (as kind vertical-lr) and spends no ε (the kind is refused under
  `[privacy]`);
* local_inputs: this owner's columns in the alignment's order, preprocessed from the public schema only;
* compute: the inputs secret-shared, SGD on shares (`training.vertical_lr`), this party's shares of `weight` and
  `bias` out — nothing is revealed to any party;
* finish (the buyer, from the added shares): the weights per input, the bias and the digest of the model file
  (`training.vertical_lr.model_file`), which the buyer writes next to the result.
"""
from __future__ import annotations

from typing import Any

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.privacy.mpc.program import Charge, MpcProgram, ProgramContext, register, share_input, share_of
from fedtrust.query.checks import check_query_receipt  # an MPC job's statement: each owner's relayed output
from fedtrust.training import vertical_lr as vlr
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.verify import KindCheck
from fedtrust.trust.vertical_lr import KIND, VerticalLRSpec, check_vertical_lr

__all__ = ["PROGRAM", "VERTICAL_LR", "model_of_result"]


def _spec(job: Any) -> VerticalLRSpec:
    return job.payload_as(VerticalLRSpec, "the vertical-lr program")


def _plan(ctx: ProgramContext) -> vlr.Plan:
    return vlr.plan_for(ctx.contract, ctx.parties, _spec(ctx.job))


def _rows(ctx: ProgramContext) -> list[int]:
    spec, rules = _spec(ctx.job), ctx.contract.rules.vertical
    rows = ctx.data.alignment(ctx.job.contract_digest, spec.alignment)
    if rows is None:
        raise PolicyViolation(f"this node holds no alignment of PSI job {spec.alignment!r} under this contract; run "
                              "`fedtrust psi` and name its job id as `alignment`")
    if len(rows) < rules.min_intersection:
        raise PolicyViolation(f"the alignment is smaller than the contract's min_intersection ({rules.min_intersection})")
    return rows


def _admit(ctx: ProgramContext) -> Charge:
    check_vertical_lr(ctx.contract, _spec(ctx.job))
    if ctx.data is not None:
        _rows(ctx)
    return Charge(counts_as=KIND, max_jobs=ctx.contract.rules.vertical.max_jobs)


def _local_inputs(ctx: ProgramContext) -> dict[str, Any]:
    return vlr.local_inputs(_plan(ctx), ctx.name, ctx.data.held.dataset, _rows(ctx))


def _compute(ctx: ProgramContext, inputs: dict[str, Any] | None) -> dict[str, Any]:
    if inputs is None:
        raise InvalidInput("a vertical-lr party needs its inputs")
    w, b = vlr.compute(_plan(ctx), ctx.rank, inputs, vlr.order_seed(ctx.job.nonce),
                       share=lambda t, src, shape: share_input(ctx, t, src, shape), device=ctx.device)
    return {"weight": share_of(w), "bias": share_of(b)}


def _finish(ctx: ProgramContext, outputs: dict[str, Any]) -> dict[str, Any]:
    plan = _plan(ctx)
    model = vlr.finish(plan.spec, outputs)
    names = vlr.input_names(plan.preprocessor)
    return {"columns": ["input", "weight"],
            "rows": [[n, float(w)] for n, w in zip(names, model.weight)] + [["(bias)", float(model.bias)]],
            "model_digest": sha256_hex(vlr.model_file(plan, ctx.job.job_id, model))}


def model_of_result(contract: Any, job: Any, result: dict[str, Any]) -> bytes:
    """The model file from a vertical-lr result (its weights); VerificationError unless it has the digest the
    result names (the digest the buyer acknowledges covers it)."""
    import numpy as np

    plan = vlr.plan_for(contract, tuple(job.participants), _spec(job))
    rows = result["rows"]
    model = vlr.VerticalModel(np.array([r[1] for r in rows[:-1]], dtype=np.float32), float(np.float32(rows[-1][1])))
    raw = vlr.model_file(plan, job.job_id, model)
    if sha256_hex(raw) != result.get("model_digest"):
        raise VerificationError("the vertical model's weights do not give the model file the result names")
    return raw


def _check_rules(contract: Any, job: Any) -> None:
    try:
        check_vertical_lr(contract, _spec(job))
    except (PolicyViolation, InvalidInput) as e:
        raise VerificationError(f"the vertical-lr job breaks the contract's rules: {e}") from None


def _check_spend(privacy: Any, att: Any) -> None:
    raise VerificationError(f"attestation of node {att.node} states a spend under [privacy], where vertical-lr jobs "
                            "are refused")


PROGRAM = register(MpcProgram(KIND, _local_inputs, _compute, _finish, admit=_admit))
#: what `exchange verify` and the buyer check of a vertical-lr job's payload
VERTICAL_LR = KindCheck(_check_rules, receipt=check_query_receipt, spend=_check_spend, blocks=frozenset({"relayed"}))
