"""Separate policies per role: a few RL steps on a cooperative env change both policies, and each agent's loss
only reaches its own policy and its own sampled tokens."""

from __future__ import annotations

import copy

import numpy as np
import torch

import turngym
from turngym.agents.render import Renderer
from turngym.credit import GroupBatch, assign_credit
from turngym.envs.multi import Action, TextAECEnv
from turngym.trainers import policy_setup
from turngym.trainers.config import TrainConfig
from turngym.trainers.forward import chunk_logprobs, iter_chunks
from turngym.trainers.losses import policy_loss
from turngym.trainers.multi import Learner, learner_step, rollout, seat_actors

PARITY_ID = "test/ParityTeam-v0"


class ParityTeam(TextAECEnv):
    """``speaker_0`` writes anything; ``listener_0`` reads it and writes anything; the team wins when the two texts'
    lengths add up to an even number (a cooperative game any random policy wins about half the time)."""

    possible_agents = ["speaker_0", "listener_0"]
    metadata = {"name": "parity_team_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def _start(self, rng, options):
        self.send("speaker_0", "Say something to your partner.", role="system")
        self.send("speaker_0", "Your turn.")
        self.send("listener_0", "Listen to your partner, then reply.", role="system")
        return {"gold_answer": "even"}

    def _turn(self, agent: str, action: Action) -> None:
        if agent == "speaker_0":
            self.said = action.text
            self.send("listener_0", f"Partner: {action.text}", name=agent)
            self.agent_selection = "listener_0"
        else:
            won = float((len(self.said) + len(action.text)) % 2 == 0)
            self.end({a: won for a in self.agents}, final_answer=action.text)


if PARITY_ID not in turngym.envs.registration.registry:
    turngym.register(PARITY_ID, ParityTeam)


def _learners(cfg, tok, models):
    from turngym.agents.policy import HFPolicy

    out = []
    r = Renderer(tok)
    for i, (role, m) in enumerate(zip(("speaker_0", "listener_0"), models)):
        m = copy.deepcopy(m)
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr)
        pol = HFPolicy(m, tok, seed=i)
        out.append(Learner(role, [role], m, opt, pol, policy_setup.Setup(m, tok, r, pol, torch.device("cpu"), tok.pad_token_id)))
    return out, r


def _cfg(**kw):
    base = {"env_id": PARITY_ID, "algo": "multi", "multi_mode": "separate", "credit": "grpo", "tasks_per_step": 2,
            "group_size": 4, "minibatch_size": 8, "max_new_tokens": 6, "max_traj_tokens": 64, "lr": 1e-3,
            "temperature": 1.0, "torch_threads": 1, "sft_steps": 0, "eval_tasks": 0}
    base.update(kw)
    return TrainConfig(**base)


def test_separate_policies_both_change_and_losses_stay_apart(team_tiny):
    tok, m1, m2 = team_tiny
    cfg = _cfg()
    learners, r = _learners(cfg, tok, (m1, m2))
    before = [[p.detach().clone() for p in ln.model.parameters()] for ln in learners]
    rng = np.random.default_rng(0)
    trained_steps = {ln.name: 0 for ln in learners}
    for step in range(3):
        actors, _ = seat_actors(cfg, learners, r, ["speaker_0", "listener_0"], [], step, rng)
        assert actors["speaker_0"].policy is learners[0].policy and actors["listener_0"].policy is learners[1].policy
        trajs, _ = rollout(cfg, actors, [10 * step, 10 * step + 1], cfg.group_size, sample_seed=step)
        assert len(trajs) == 2 * cfg.group_size * 2
        for ln in learners:
            mine = [t for t in trajs if t.agent_id in ln.roles and t.turns]
            assert {t.group_id.rsplit(":", 1)[1] for t in mine} == {ln.name}
            m = learner_step(cfg, ln, mine)
            assert np.isfinite(m["train/loss"])
            trained_steps[ln.name] += int(m["train/optimizer_steps"] > 0)
    for ln, b in zip(learners, before):
        changed = sum(not torch.equal(p, q) for p, q in zip(ln.model.parameters(), b))
        assert changed > 0, f"{ln.name}'s parameters did not change"
        assert trained_steps[ln.name] > 0

    # agent A's (the listener's) loss: its gradient w.r.t. B's (the speaker's) policy is zero, and its action mask
    # covers exactly the listener's sampled tokens (the speaker's words are observation tokens)
    a, b = learners[1], learners[0]
    actors, _ = seat_actors(cfg, learners, r, ["speaker_0", "listener_0"], [], 0, rng)
    trajs, _ = rollout(cfg, actors, [99], 4, sample_seed=7)
    mine = [t for t in trajs if t.agent_id == "listener_0" and t.turns]
    batch = GroupBatch.from_trajectories(mine, pad_id=tok.pad_token_id)
    for i, t in enumerate(mine):
        assert batch.response_ids[i][batch.action_mask[i]].tolist() == [x for u in t.turns for x in u.action_ids]
        said = next(tr for tr in trajs if tr.meta["episode"] == t.meta["episode"] and tr.agent_id == "speaker_0")
        assert said.turns[0].action_text in tok.decode(t.prompt_ids)  # in the listener's prompt, mask 0
    out = assign_credit("grpo", batch)
    adv = torch.where(batch.action_mask, torch.ones_like(out.advantages), out.advantages)  # non-zero everywhere
    rows = torch.arange(batch.batch_size)
    (chunk,) = list(iter_chunks(batch, rows, batch.batch_size))
    logp, _, _ = chunk_logprobs(a.model, chunk)
    sl = slice(0, chunk.length)
    loss, _ = policy_loss(logp, batch.old_logprobs[chunk.rows, sl], adv[chunk.rows, sl],
                          batch.action_mask[chunk.rows, sl], batch.turn_id[chunk.rows, sl])
    g_b = torch.autograd.grad(loss, list(b.model.parameters()), retain_graph=True, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in g_b)
    g_a = torch.autograd.grad(loss, list(a.model.parameters()), allow_unused=True)
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in g_a)


def test_shared_policy_acts_for_every_role(team_tiny):
    tok, m1, _ = team_tiny
    cfg = _cfg(multi_mode="shared")
    learners, r = _learners(cfg, tok, (m1,))
    learners[0].roles = ["speaker_0", "listener_0"]
    actors, trained = seat_actors(cfg, learners, r, ["speaker_0", "listener_0"], [], 0, np.random.default_rng(0))
    assert actors["speaker_0"].policy is actors["listener_0"].policy and trained == {"speaker_0", "listener_0"}


def test_self_play_trains_one_seat_against_a_frozen_snapshot(team_tiny):
    from turngym.trainers.loop import frozen_copy as frozen

    tok, m1, _ = team_tiny
    cfg = _cfg(multi_mode="self_play")
    learners, r = _learners(cfg, tok, (m1,))
    learners[0].roles = ["speaker_0", "listener_0"]
    pool = [frozen(learners[0].model)]
    for step, seat in ((0, "speaker_0"), (1, "listener_0")):
        actors, trained = seat_actors(cfg, learners, r, ["speaker_0", "listener_0"], pool, step,
                                      np.random.default_rng(0))
        assert trained == {seat}
        other = "listener_0" if seat == "speaker_0" else "speaker_0"
        assert actors[seat].policy is learners[0].policy
        assert actors[other].policy.model is pool[0]
    assert not any(p.requires_grad for p in pool[0].parameters())
