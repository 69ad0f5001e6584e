"""Difference-reward team credit (`turngym.credit.team`): hand-computed values, loop reference, contract."""

from __future__ import annotations

import math

import pytest
import torch

from turngym.credit import CREDIT, GroupBatch, assign_credit
from turngym.credit.team import CF_SIGNAL, DifferenceConfig, difference_advantages, difference_rewards
from turngym.errors import CreditError
from turngym.types import Trajectory, Turn


def _loop_reference(r, c, g, normalize, mix=0.0, eps=1e-6):
    """Slow per-row reference of the module docstring formula."""
    d = [ri - ci for ri, ci in zip(r, c)]
    out = []
    for i in range(len(r)):
        if math.isnan(d[i]):
            out.append(0.0)
            continue
        mates = [d[j] for j in range(len(r)) if g[j] == g[i] and not math.isnan(d[j])]
        n = len(mates)
        mean = sum(mates) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in mates) / (n - 1)) if n > 1 else 0.0
        if normalize == "none":
            a = d[i]
        elif n < 2 or max(mates) == min(mates):
            a = 0.0
        elif normalize == "center":
            a = d[i] - mean
        else:
            a = (d[i] - mean) / (std + eps)
        if mix:
            rs = [r[j] for j in range(len(r)) if g[j] == g[i]]
            m = sum(rs) / len(rs)
            s = math.sqrt(sum((x - m) ** 2 for x in rs) / (len(rs) - 1)) if len(rs) > 1 else 0.0
            grpo = 0.0 if len(rs) < 2 or max(rs) == min(rs) else (r[i] - m) / (s + eps)
            a = (1 - mix) * a + mix * grpo
        out.append(a)
    return out


def test_hand_computed_answerer_group():
    # answerers of one seed: notes were good in rows 0-2 (expert answerer would succeed: C=1), bad in row 3 (C=0)
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    c = torch.tensor([1.0, 1.0, 1.0, 0.0])
    g = torch.zeros(4, dtype=torch.long)
    assert difference_rewards(r, c).tolist() == [0.0, -1.0, 0.0, 0.0]
    adv, _ = difference_advantages(r, c, g, DifferenceConfig(normalize="none"))
    assert adv.tolist() == [0.0, -1.0, 0.0, 0.0]  # row 3 failed only because of the notes: not blamed
    adv, _ = difference_advantages(r, c, g, DifferenceConfig(normalize="center"))
    assert torch.allclose(adv, torch.tensor([0.25, -0.75, 0.25, 0.25]))
    adv, _ = difference_advantages(r, c, g, DifferenceConfig(normalize="group"))
    assert torch.allclose(adv, torch.tensor([0.5, -1.5, 0.5, 0.5]), atol=1e-5)  # std_u of D = 0.5
    # plain GRPO would blame row 3 as much as row 1
    grpo, _ = difference_advantages(r, torch.zeros(4), g, DifferenceConfig(normalize="group"))
    assert grpo[1] == pytest.approx(grpo[3])


@pytest.mark.parametrize("normalize", ["group", "center", "none"])
@pytest.mark.parametrize("mix", [0.0, 0.3])
def test_matches_loop_reference(normalize, mix):
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (24,), generator=gen).float()
    c = torch.randint(0, 2, (24,), generator=gen).float()
    c[5] = float("nan")
    g = torch.randint(0, 5, (24,), generator=gen)
    adv, _ = difference_advantages(r, c, g, DifferenceConfig(normalize=normalize, mix=mix))
    ref = _loop_reference(r.tolist(), c.tolist(), g.tolist(), normalize, mix)
    assert torch.allclose(adv, torch.tensor(ref), atol=1e-5)
    if mix == 0:
        assert adv[5] == 0.0


def test_shape_and_config_errors():
    with pytest.raises(ValueError, match="outcome"):
        difference_rewards(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="mix"):
        DifferenceConfig(mix=1.5)


def _traj(group: str, outcome: float, cf: float | None, n_actions: tuple[int, ...]) -> Trajectory:
    turns = [Turn(action_ids=list(range(3, 3 + n)), logprobs=[-0.5] * n, obs_ids=[1, 2]) for n in n_actions]
    meta = {"prompt_signals": {CF_SIGNAL: cf}} if cf is not None else {}
    return Trajectory(group_id=group, agent_id=group.split(":")[-1], prompt_ids=[9, 9], turns=turns,
                      outcome=outcome, meta=meta)


def test_registered_method_broadcasts_to_policy_tokens_only():
    assert "team-difference" in CREDIT
    trajs = [_traj("e:1:answerer_0", 1.0, 1.0, (2,)), _traj("e:1:answerer_0", 0.0, 1.0, (3, 1)),
             _traj("e:1:answerer_0", 0.0, 0.0, (2,)), _traj("e:1:searcher_0", 0.0, 1.0, (2, 2))]
    batch = GroupBatch.from_trajectories(trajs)
    out = assign_credit("team-difference", batch, normalize="none")
    adv = out.advantages
    assert torch.all(adv[~batch.action_mask] == 0)
    assert torch.all(adv[1][batch.action_mask[1]] == -1.0)
    assert torch.all(adv[3][batch.action_mask[3]] == -1.0)
    assert torch.all(adv[0] == 0) and torch.all(adv[2] == 0)
    assert out.diagnostics["cf_missing"] == 0.0


def test_missing_counterfactual_names_the_rollout_helper():
    batch = GroupBatch.from_trajectories([_traj("e:1:a", 1.0, None, (2,)), _traj("e:1:a", 0.0, None, (2,))])
    with pytest.raises(CreditError, match="cf_outcome"):
        assign_credit("team-difference", batch)


def test_signal_name_matches_the_rollout_module():
    from turngym.agents.multi_rollout import CF_SIGNAL as ROLLOUT_CF_SIGNAL

    assert ROLLOUT_CF_SIGNAL == CF_SIGNAL
