"""Vertical logistic regression after a PSI job through real daemons: the owners' stored alignments feed the MPC
program, whose model comes within 0.02 AUC of central training on the plaintext join (the demo's vertical part)."""
from __future__ import annotations

from fedtrust.demo.vertical import run_vertical


def test_vertical_model_after_psi_through_the_daemons_matches_central_training(tmp_path):
    v = run_vertical(tmp_path / "vertical")
    assert v.intersection_size == v.joined_rows == 200  # the attested PSI size is the plaintext join's
    assert abs(v.auc_vertical - v.auc_central) <= 0.02
    assert v.auc_central > 0.65 and v.auc_bank_only < v.auc_vertical - 0.02  # joining the telco's columns helps
    # the demo's joint statistic (kind "joint", MPC with the dealer through the daemons) equals the plaintext join
    plain = {r[0]: r for r in v.joint_plain}
    assert len(v.joint) == 3 and sum(r[1] for r in v.joint) == v.joined_rows
    for row in v.joint:
        assert row[1] == plain[row[0]][1] and all(abs(a - b) < 1e-6 for a, b in zip(row[2:], plain[row[0]][2:]))
