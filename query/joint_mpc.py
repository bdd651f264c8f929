"""Joint statistics as an MPC program (job kind "joint", `privacy.mpc.program`): the daemons' side of
`query.joint_program`. At each owner: admission (the rules, the stored PSI alignment the job names, the sizes;
nothing read or spent), the owner's secret inputs from its aligned rows, the shares; at the buyer: the table.
(Kept apart from `query.joint_program`, which the benchmark also runs over raw CrypTen: importing the MPC
runtime installs fedtrust's per-thread CrypTen communicator.)
"""
from __future__ import annotations

from typing import Any

import torch

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.privacy.mpc.program import SCALE, Charge, MpcProgram, ProgramContext, register
from fedtrust.query.joint_program import check_capacity, compute_shares, finish, local_tensors
from fedtrust.query.joint_sql import JointPlan
from fedtrust.trust.schema import Schema

__all__ = ["KIND", "PROGRAM"]

KIND = "joint"





def _plan_of(ctx: ProgramContext) -> JointPlan:
    from fedtrust.query.joint_checks import plan_joint_job

    return plan_joint_job(ctx.contract, ctx.job)


def _schemas_of(ctx: ProgramContext) -> list[tuple[str, Schema]]:
    from fedtrust.query.joint_checks import joint_schemas

    return joint_schemas(ctx.contract, ctx.parties)


def _rows(ctx: ProgramContext) -> list[int]:
    job = ctx.job
    alignment = job.payload.alignment
    rows = ctx.data.alignment(job.contract_digest, alignment) if ctx.data is not None else None
    if rows is None:
        raise PolicyViolation(f"this node holds no alignment of PSI job {alignment!r} under this "
                              "contract; name a PSI job that finished here (`fedtrust psi`), or run one first")
    return rows


def _admit(ctx: ProgramContext) -> Charge:
    plan = _plan_of(ctx)
    rules = ctx.contract.rules.vertical
    check_capacity(plan, _schemas_of(ctx), rules.max_keys, len(_rows(ctx)))
    return Charge(KIND, rules.max_jobs)


def _local_inputs(ctx: ProgramContext) -> dict[str, torch.Tensor]:
    held = ctx.data.held
    return local_tensors(_plan_of(ctx), held.product.dataset, held.dataset, _rows(ctx),
                         ctx.contract.rules.vertical.max_keys)


def _compute(ctx: ProgramContext, inputs: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if inputs is None:
        raise InvalidInput("a joint statistics party computes with its own aligned rows")
    rules = ctx.contract.rules.vertical
    return compute_shares(_plan_of(ctx), _schemas_of(ctx), ctx.rank, int(inputs["groups"].shape[0]),
                          rules.joint.min_group_size, inputs, device=ctx.device)


def _finish(ctx: ProgramContext, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    # the runtime decoded the summed ring elements as fixed point at SCALE; the outputs are integers below 2^52
    total = torch.round(outputs["joint"].double() * SCALE).to(torch.int64)
    result = finish(_plan_of(ctx), _schemas_of(ctx), total, ctx.contract.rules.vertical.max_keys)
    return result.to_dict()


PROGRAM = register(MpcProgram(KIND, _local_inputs, _compute, _finish, admit=_admit))
