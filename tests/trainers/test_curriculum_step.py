"""Training rollouts hand the RL step to an env with a curriculum (``curriculum_step``); evaluation does not."""

from __future__ import annotations

from turngym.trainers import policy_setup, sampling
from turngym.trainers.config import TrainConfig


def test_step_env_kwargs_only_for_a_curriculum():
    plain = TrainConfig(env_id="tool/Calc-v0", env_kwargs={"x": 1})
    assert sampling.step_env_kwargs(plain, 7) == {"x": 1}
    cur = TrainConfig(env_id="tool/ReasoningGym-v0", env_kwargs={"curriculum": {"every": 5}})
    assert sampling.step_env_kwargs(cur, 7) == {"curriculum": {"every": 5}, "curriculum_step": 7}
    fixed = TrainConfig(env_id="tool/ReasoningGym-v0", env_kwargs={"curriculum": {"every": 5}, "curriculum_step": 2})
    assert sampling.step_env_kwargs(fixed, 7)["curriculum_step"] == 2  # the user's own value wins


def test_training_rollouts_pass_the_step_evaluation_does_not(monkeypatch):
    from turngym.agents import rollout as rollout_mod

    seen = []

    def fake_collect(*args, env_kwargs=None, **kw):
        seen.append(dict(env_kwargs))
        return [], None

    monkeypatch.setattr(rollout_mod, "collect_rollouts", fake_collect)
    cfg = TrainConfig(env_id="tool/ReasoningGym-v0", env_kwargs={"curriculum": {"every": 5}})
    setup = policy_setup.Setup(model=None, tokenizer=None, renderer=None, policy=object(), device=None, pad_id=0)
    sampling.rollout(cfg, setup, [1], 2, step=12)
    sampling.rollout(cfg, setup, [1], 1, sampler="group")  # evaluation: the env's eval level
    assert seen == [{"curriculum": {"every": 5}, "curriculum_step": 12}, {"curriculum": {"every": 5}}]
