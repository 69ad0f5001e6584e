"""OPRL's implicit PRM (wave-2 spec §2.3, §2.5, §2.9): the DPO loss of the worked example, a DPO step on the tiny
policy, the no-pair skip, q ≡ 0 on the first step after init, and checkpoint / resume of the PRM through a real run.

The batch is real data: noisy scripted-expert HopQA episodes (mixed successes) rendered by the tiny model's renderer,
with "sampler" log-probs = the tiny policy's teacher-forced ones plus float noise (what a KV-cached sampler or another
engine gives).
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import turngym.trainers.implicit_prm  # noqa: F401  (registers the component)
from turngym.credit import GroupBatch, assign_credit
from turngym.credit.oprl import oprl_step_rewards
from turngym.errors import ConfigError
from turngym.trainers.forward import batch_logprobs
from turngym.trainers.implicit_prm import (
    ImplicitPRM,
    ImplicitPRMConfig,
    dpo_loss,
    dpo_pairs,
    implicit_prm,
    trajectory_scores,
)
from turngym.trainers.learned import LEARNED_SIGNALS, LearnedContext, build_learned

ENV = "search/HopQA-v0"


# ------------------------------------------------------------------------------------------ §2.8 PRM loss
def _example():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "credit"))
    from test_oprl import example_batch

    return example_batch()


@pytest.mark.parametrize(("form", "scores", "loss"), [
    ("sum", [0.30, -0.35, -0.05], 0.476719),
    ("mean", [0.15, -0.116667, -0.05], 0.583408),
])
def test_worked_example_prm_loss(form, scores, loss):
    b = _example()
    q, _, _ = oprl_step_rewards(b, b.token_features["prm_logprobs"], b.old_logprobs, beta=0.05)
    s = trajectory_scores(q, b.turn_mask, 0.05, form)  # per-turn log-ratios
    np.testing.assert_allclose(s, scores, atol=1e-5)
    d = (b.token_features["prm_logprobs"].double() - b.old_logprobs.double()) * b.action_mask
    np.testing.assert_allclose(trajectory_scores(d, b.turn_mask, 0.05, form), scores, atol=1e-5)  # per-token
    pos, neg = dpo_pairs(b.outcome, b.group_index)
    assert sorted(zip(pos.tolist(), neg.tolist())) == [(0, 1), (0, 2)]
    assert float(dpo_loss(s, pos, neg)) == pytest.approx(loss, abs=1e-5)


def test_pairs_stay_inside_groups_and_follow_the_threshold():
    outcome = torch.tensor([1.0, 0.0, float("nan"), 7.0, 5.0, 6.5])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    pos, neg = dpo_pairs(outcome, group)
    assert sorted(zip(pos.tolist(), neg.tolist())) == [(0, 1), (0, 2)]  # NaN is a negative; group 1 all positive
    pos, neg = dpo_pairs(outcome, group, positive_threshold=6.0)  # SOTOPIA: goal score > 6
    assert sorted(zip(pos.tolist(), neg.tolist())) == [(3, 4), (5, 4)]
    assert float(dpo_loss(torch.zeros(6), pos[:0], neg[:0])) == 0.0


# ------------------------------------------------------------------------------------------ tiny policy
@pytest.fixture(scope="module")
def tiny(tiny_hopqa):
    """(model, tokenizer, renderer) of the 1m tiny policy, built once per module."""
    return tiny_hopqa[:3]


@pytest.fixture(scope="module")
def demos(tiny):
    """12 noisy expert episodes (3 tasks x 4) with mixed outcomes."""
    from turngym.trainers.sft import collect_demonstrations

    _, tok, renderer = tiny
    seeds = [s for s in (11, 12, 13) for _ in range(4)]
    trajs = collect_demonstrations(ENV, tok, renderer, seeds, noise=0.5, seed=5, max_new_tokens=48,
                                   max_traj_tokens=384)
    for i, t in enumerate(trajs):
        t.group_id = f"{ENV}:{seeds[i]}"
    assert {t.outcome for t in trajs} >= {0.0, 1.0}, [t.outcome for t in trajs]
    return trajs


def make_batch(tiny, trajs, noise: float = 1e-4, seed: int = 0) -> GroupBatch:
    """A batch whose "sampler" log-probs are the policy's teacher-forced ones plus float noise."""
    model, tok, _ = tiny
    b = GroupBatch.from_trajectories(copy.deepcopy(trajs), pad_id=tok.pad_token_id or 0)
    lp = batch_logprobs(model, b)
    gen = torch.Generator().manual_seed(seed)
    b.old_logprobs = torch.where(b.action_mask, lp + noise * torch.randn(lp.shape, generator=gen), 0.0)
    return b


def one_pair(trajs):
    """A success and a failure of one task, as one group."""
    for g in dict.fromkeys(t.group_id for t in trajs):
        rows = [t for t in trajs if t.group_id == g]
        ok = [t for t in rows if t.outcome > 0]
        bad = [t for t in rows if t.outcome <= 0]
        if ok and bad:
            return [ok[0], bad[0]]
    raise AssertionError("no task with a success and a failure")


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_first_step_after_init_gives_zero_step_rewards_and_grpo(tiny, demos):
    model = tiny[0]
    batch = make_batch(tiny, demos)
    prm = ImplicitPRM(model, ImplicitPRMConfig())  # rescore_old on by default
    m = prm.before_credit(batch, 0)
    lp = batch.token_features["prm_logprobs"]
    assert torch.equal(lp, batch.old_logprobs)  # q ≡ 0 exactly
    assert m["prm_logratio_absmax"] == 0.0 and 0 < m["prm_rescore_diff"] < 1e-3
    for est, ref in (("grpo", "grpo"), ("rloo", "rloo")):
        out = assign_credit("oprl", batch, estimator=est)
        assert torch.equal(out.advantages, assign_credit(ref, batch).advantages)
        assert out.diagnostics["oprl_step_reward_absmax"] == 0.0

    # without rescoring, the sampler's float noise shows up as spurious step rewards (why the option exists)
    batch = make_batch(tiny, demos)
    ImplicitPRM(model, ImplicitPRMConfig(rescore_old=False)).before_credit(batch, 0)
    out = assign_credit("oprl", batch)
    assert out.diagnostics["oprl_step_reward_absmax"] > 0
    assert not torch.equal(out.advantages, assign_credit("grpo", batch).advantages)


def test_lora_policy_gets_a_full_trainable_copy_with_zero_first_step_rewards(tiny, demos):
    peft = pytest.importorskip("peft")
    base = copy.deepcopy(tiny[0])
    policy = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # adapters that change the output
    trainable = sum(p.requires_grad for p in policy.parameters())
    prm = ImplicitPRM(policy, ImplicitPRMConfig())
    assert all(p.requires_grad for p in prm.model.parameters())
    assert sum(p.requires_grad for p in policy.parameters()) == trainable  # the policy keeps training adapters only
    batch = make_batch(tiny, demos[:4])
    prm.before_credit(batch, 0)
    assert torch.equal(batch.token_features["prm_logprobs"], batch.old_logprobs)


def test_logprobs_are_of_the_tempered_policy(tiny, demos):
    model = tiny[0]
    batch = make_batch(tiny, demos[:4])
    ImplicitPRM(model, ImplicitPRMConfig(), temperature=0.7).before_credit(batch, 0)
    want = torch.where(batch.action_mask, batch_logprobs(model, batch, temperature=0.7), 0.0)
    torch.testing.assert_close(batch.token_features["prm_logprobs"], want, atol=1e-5, rtol=0)
    assert not torch.allclose(want, torch.where(batch.action_mask, batch_logprobs(model, batch), 0.0), atol=1e-3)


def test_dpo_step_on_the_tiny_policy_increases_the_margin(tiny, demos):
    model = tiny[0]
    policy_before = params(model)
    batch = make_batch(tiny, one_pair(demos))
    # lr 1e-3: spec §2.9 says 1e-2 for a 2-layer toy LM; on the 1m tiny policy Adam's first step of 1e-2 on every
    # weight overshoots (the margin falls), 1e-3 .. 1e-5 all raise it
    prm = ImplicitPRM(model, ImplicitPRMConfig(lr=1e-3))
    prm.before_credit(batch, 0)
    s0 = prm.scores(batch, batch.token_features["prm_logprobs"])
    m = prm.after_credit(batch, None, 0)
    assert m["prm_pairs"] == 1.0 and m["prm_loss"] == pytest.approx(math.log(2), abs=1e-6)  # s_pos = s_neg = 0
    assert m["prm_grad_norm"] > 0 and prm.updates == 1
    s1 = prm.scores(batch, prm.logprobs(prm.model, batch))
    assert float(s1[0] - s1[1]) > float(s0[0] - s0[1]) + 1e-3, (s0, s1)
    assert float(dpo_loss(s1, torch.tensor([0]), torch.tensor([1]))) < m["prm_loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in policy_before.items())  # the policy is untouched


def test_dpo_gradient_equals_autograd_of_the_loss(tiny, demos):
    """The chunked surrogate Σ_i g_i s_i gives the gradient of L_PRM itself (mean score form, several pairs)."""
    from turngym.trainers.forward import chunk_logprobs, iter_chunks

    model = tiny[0]
    batch = make_batch(tiny, demos[:8])
    prm = ImplicitPRM(model, ImplicitPRMConfig(traj_score="mean", lr=0.0, grad_clip=1e9), chunk_size=3)
    with torch.no_grad():  # move φ away from θ so that the scores differ
        for p in prm.model.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prm.before_credit(batch, 0)
    pos, neg = dpo_pairs(batch.outcome, batch.group_index)
    assert pos.numel() >= 2

    # reference: one forward of every row with autograd, the loss of the spec, backward
    ref = copy.deepcopy(prm.model)
    (chunk,) = list(iter_chunks(batch, torch.arange(batch.batch_size), batch.batch_size))
    out, _, _ = chunk_logprobs(ref, chunk)  # [B, l] in chunk.rows order
    out = torch.nn.functional.pad(out, (0, batch.length - chunk.length))
    lp = torch.zeros(batch.response_ids.shape, dtype=out.dtype).index_copy(0, chunk.rows, out)
    d = torch.where(batch.action_mask, lp.double() - batch.old_logprobs.double(), 0.0)
    dpo_loss(trajectory_scores(d, batch.turn_mask, prm.cfg.beta, "mean"), pos, neg).backward()
    want = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}

    grads = {}
    step = prm.optimizer.step

    def capture():
        grads.update({n: p.grad.clone() for n, p in prm.model.named_parameters() if p.grad is not None})
        step()

    prm.optimizer.step = capture
    prm.after_credit(batch, None, 0)
    assert want.keys() == grads.keys() and want
    for n, g in want.items():
        torch.testing.assert_close(grads[n], g.float(), atol=1e-7, rtol=1e-4)


def test_no_pairs_leaves_the_prm_unchanged(tiny, demos):
    model = tiny[0]
    fails = [t for t in demos if t.outcome <= 0][:3]
    batch = make_batch(tiny, fails)
    prm = ImplicitPRM(model, ImplicitPRMConfig(lr=1e-2))
    before = params(prm.model)
    prm.before_credit(batch, 0)
    m = prm.after_credit(batch, None, 0)
    assert m["prm_pairs"] == 0.0 and m["prm_loss"] == 0.0
    assert all(torch.equal(v, prm.model.state_dict()[k]) for k, v in before.items())
    assert prm.optimizer.state_dict()["state"] == {} and prm.updates == 0


def test_update_before_scores_with_the_updated_prm(tiny, demos):
    model = tiny[0]
    batch = make_batch(tiny, one_pair(demos))
    prm = ImplicitPRM(model, ImplicitPRMConfig(lr=1e-3, update="before"))
    m = prm.before_credit(batch, 0)
    assert m["prm_pairs"] == 1.0 and prm.updates == 1
    assert prm.after_credit(batch, None, 0) == {}
    s = prm.scores(batch, batch.token_features["prm_logprobs"])
    assert float(s[0] - s[1]) > 1e-3  # credit sees φ_s, already trained on this batch


def test_state_dict_loads_with_weights_only(tiny, demos, tmp_path):
    model = tiny[0]
    batch = make_batch(tiny, one_pair(demos))
    prm = ImplicitPRM(model, ImplicitPRMConfig(lr=1e-2))
    prm.before_credit(batch, 0)
    prm.after_credit(batch, None, 0)
    torch.save({"implicit_prm": prm.state_dict()}, tmp_path / "components.pt")
    state = torch.load(tmp_path / "components.pt", weights_only=True)["implicit_prm"]
    fresh = ImplicitPRM(model, ImplicitPRMConfig(lr=1e-2))
    fresh.load_state_dict(state)
    assert fresh.updates == 1
    assert _same(params(fresh.model), params(prm.model))
    assert _same_opt(fresh.optimizer.state_dict(), prm.optimizer.state_dict())


def test_factory_reads_signal_and_credit_options(tiny):
    model = tiny[0]
    assert LEARNED_SIGNALS["implicit_prm"] is implicit_prm and implicit_prm.config_cls is ImplicitPRMConfig
    ctx = LearnedContext(method="oprl", options={"lr": 3e-4, "traj_score": "mean"},
                         credit_options={"beta": 0.2, "prm_logprob_key": "mine"}, model=model, temperature=0.5,
                         chunk_size=4)
    (c,) = build_learned("oprl", ctx)
    assert isinstance(c, ImplicitPRM) and c.name == "implicit_prm"
    assert (c.cfg.lr, c.cfg.traj_score, c.cfg.beta, c.key, c.temperature, c.chunk_size) == (3e-4, "mean", 0.2,
                                                                                          "mine", 0.5, 4)
    assert c.model is not model and all(p.requires_grad for p in c.model.parameters())
    assert c.optimizer.param_groups[0]["lr"] == 3e-4
    (c,) = build_learned("oprl", LearnedContext(method="oprl", options={"beta": 0.1}, credit_options={"beta": 0.2},
                                                model=model))
    assert c.cfg.beta == 0.1  # signals.beta wins
    with pytest.raises(ConfigError, match="no model"):
        implicit_prm(LearnedContext(method="oprl"))
    with pytest.raises(ConfigError, match="traj_score"):
        ImplicitPRMConfig(traj_score="max")


def test_signal_options_are_checked_against_the_prm_config():
    from turngym.trainers.config import check_signal_options

    assert check_signal_options("oprl", {"lr": "1e-3", "traj_score": "mean"}) == {"lr": 1e-3, "traj_score": "mean"}
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        check_signal_options("oprl", {"lrr": 1e-3})


# ------------------------------------------------------------------------------------------ checkpoint / resume
def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_opt(a, b) -> bool:
    """Equal optimizer state dicts (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_opt(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_opt(x, y) for x, y in zip(a, b))
    return a == b


COIN_ENV = """
from turngym.envs.core import Env, Score, Task


class CoinEnv(Env):
    \"\"\"The outcome is the parity of the characters the agent wrote: it differs inside a group whatever a
    random-init policy samples (a length-based outcome did not: such a policy writes to the token cap).\"\"\"

    def __init__(self, max_turns: int = 2):
        super().__init__(max_turns=max_turns)  # the env ends the episode (a rollout cap would not score it)

    def _sample_task(self, rng, options):
        return Task(prompt="Say anything.", gold_answer="x")

    def _score(self, answer, task):
        return Score(outcome=0.0, success=False)

    def reset(self, *, seed=None, options=None):
        self.chars = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.chars += len(action)
        msgs, reward, terminated, truncated, info = super().step(action)
        if terminated or truncated:
            info["outcome"] = reward = float(self.chars % 2)
        return msgs, reward, terminated, truncated, info
"""

TINY_RUN = [
    "model=tiny", "model_size=1m", "device=cpu", "tasks_per_step=2", "group_size=6",
    "minibatch_size=12", "ppo_epochs=1", "sft_steps=0", "eval_tasks=1", "eval_every=0",
    "max_new_tokens=16", "max_traj_tokens=256", "save_trajectories=0", "tensorboard=false", "progress=false",
    "report=false", "torch_threads=1", "seed=0", "lr=1e-3", "credit=oprl", "algo=grpo",
    # outcomes 0 / 1 by a coin of the policy's own text: every group of 6 is very likely to hold both, so the PRM
    # has (positive, negative) pairs to train on at every step
    "signals.positive_threshold=0.5", "signals.lr=1e-2", "checkpoint_every=1", "keep_checkpoints=10",
]


@pytest.mark.slow
def test_prm_state_survives_checkpoint_and_resume(tmp_path: Path, monkeypatch):
    from turngym.trainers import grpo
    from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.runlog import read_metrics

    saved: dict[int, dict] = {}  # n-th checkpoint (steps 0, 1, 2) -> a deep copy of the state it received
    loaded: list[dict] = []
    orig_state, orig_load = ImplicitPRM.state_dict, ImplicitPRM.load_state_dict

    def spy_state(self):
        st = orig_state(self)
        saved[len(saved)] = copy.deepcopy(st)
        return st

    def spy_load(self, state):
        orig_load(self, state)
        loaded.append(copy.deepcopy(orig_state(self)))

    monkeypatch.setattr(ImplicitPRM, "state_dict", spy_state)
    monkeypatch.setattr(ImplicitPRM, "load_state_dict", spy_load)
    cache = tmp_path / "cache"
    ref = tmp_path / "ref"
    (tmp_path / "coin_env.py").write_text(COIN_ENV)
    env = f"env_id={tmp_path / 'coin_env.py'}:CoinEnv"
    grpo.train(resolve_train_config(None, [*TINY_RUN, env, f"cache_dir={cache}", f"run_dir={ref}", "steps=2"]))
    lines = read_metrics(ref, kind="train")
    assert [d["step"] for d in lines] == [1, 2]
    assert all(d["learned/implicit_prm/prm_pairs"] > 0 for d in lines), "a step without DPO pairs: weak check"
    ckpts = {load_checkpoint(p).step: load_checkpoint(p) for p in checkpoint_dirs(ref)}
    assert sorted(ckpts) == [0, 1, 2] and all(c.components is not None for c in ckpts.values())
    w = {s: ckpts[s].components["implicit_prm"]["model"] for s in (0, 1, 2)}
    assert not _same(w[1], w[2]), "the PRM did not move in step 2: the resume check would prove nothing"
    for step in (0, 1, 2):  # components.pt holds exactly what the component handed over
        assert _same(w[step], saved[step]["model"])
        assert _same_opt(ckpts[step].components["implicit_prm"]["optimizer"], saved[step]["optimizer"])

    # resume from step 1: a copy of the run without its step-2 checkpoint
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    last = max(checkpoint_dirs(run), key=lambda p: load_checkpoint(p).step)
    shutil.rmtree(last)
    (run / "latest").unlink(missing_ok=True)
    saved.clear()
    grpo.train(resolve_train_config(None, ["steps=2"], resume_dir=str(run)))
    assert len(loaded) == 1  # the PRM weights AND optimizer state loaded are those saved at step 1
    assert _same(loaded[0]["model"], w[1])
    assert _same_opt(loaded[0]["optimizer"], ckpts[1].components["implicit_prm"]["optimizer"])
    assert loaded[0]["optimizer"]["state"], "no optimizer state at step 1: the check would prove nothing"

    # the resumed run ends where the uninterrupted one did (policy and PRM, weights and optimizer)
    final = max((load_checkpoint(p) for p in checkpoint_dirs(run)), key=lambda c: c.step)
    assert final.step == 2
    assert _same(final.model_state, ckpts[2].model_state)
    assert _same(final.components["implicit_prm"]["model"], w[2])
    assert _same_opt(final.components["implicit_prm"]["optimizer"], ckpts[2].components["implicit_prm"]["optimizer"])


def test_async_rollouts_with_rescored_old_logprobs_are_refused():
    from turngym.errors import ConfigError
    from turngym.trainers.learned import LearnedContext

    with pytest.raises(ConfigError, match="rescore_old=false"):
        implicit_prm(LearnedContext(method="oprl", model=torch.nn.Linear(2, 2), async_rollouts=True))
