"""Training through the gateway (``rollout=agent:...``, turngym.trainers.agent_rollout) with real `openai`-client
agents on the tiny HopQA policy."""

from __future__ import annotations

import json
import logging
import math
import textwrap
from pathlib import Path

import pytest

from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig

pytest.importorskip("openai")

ENV_ID = "search/HopQA-v0"

AGENT = '''
import itertools

_calls = itertools.count()


async def run(client, task):
    """Two turns with the env's tools; every third episode raises after its first turn (an agent bug)."""
    i = next(_calls)
    messages = list(task.messages)
    r = await client.chat.completions.create(model="policy", messages=messages, tools=task.tools, max_tokens=8)
    if i % 3 == 2:
        raise RuntimeError("agent bug on purpose")
    messages += [r.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "once more"}]
    r = await client.chat.completions.create(model="policy", messages=messages, tools=task.tools)
    return {"reward": float(len(r.choices[0].message.content or "") % 2), "final_answer": "x"}
'''


def _cfg(tmp_path, agent_file, **kw) -> TrainConfig:
    base = {"env_id": ENV_ID, "model": "tiny", "steps": 1, "tasks_per_step": 2, "group_size": 3, "minibatch_size": 6,
            "ppo_epochs": 1, "pretrain_steps": 0, "sft_steps": 0, "eval_tasks": 2, "max_new_tokens": 12,
            "max_traj_tokens": 48, "rollout": f"agent:{agent_file}:run", "run_dir": str(tmp_path / "run"),
            "torch_threads": 1, "progress": False, "report": False, "tensorboard": False, "checkpoint_every": 0,
            "save_trajectories": 0}
    base.update(kw)
    return TrainConfig(**base)


def test_rollout_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="not an agent rollout"):
        TrainConfig(rollout="examples.agent:run")
    with pytest.raises(ConfigError, match="sampler=group"):
        TrainConfig(rollout="agent:examples.agent:run", sampler="tree")
    with pytest.raises(ConfigError, match="max_staleness"):
        TrainConfig(rollout="agent:examples.agent:run", max_staleness=1)
    with pytest.raises(ConfigError, match="no_such_module"):
        TrainConfig(rollout="agent:no_such_module:run").validate_names()
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no callable 'run'"):
        TrainConfig(rollout=f"agent:{f}:run").validate_names()


def test_train_through_the_gateway_drops_failed_episodes_only(tmp_path, caplog):
    from turngym.trainers.grpo import train

    agent = tmp_path / "agent.py"
    agent.write_text(textwrap.dedent(AGENT))
    cfg = _cfg(tmp_path, agent)
    cfg.validate_names()
    with caplog.at_level(logging.WARNING, logger="turngym.gateway"):
        summary = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (step,) = [x for x in lines if x["kind"] == "train"]
    assert step["agent/episodes"] == 6 and step["agent/failures"] == 2  # episodes 2 and 5 raised
    assert step["rollout/trajectories"] == 4 and step["rollout/turns"] == 2
    assert step["gateway/generate_calls"] < 8 and step["gateway/errors"] == 0
    # the learner rescores the recorded tokens: the ratio is 1 before the (single) update, the loss finite
    assert step["train/ratio_mean"] == pytest.approx(1.0, abs=1e-3) and math.isfinite(step["train/loss"])
    assert step["train/grad_norm"] > 0 and summary["steps"] == 1
    tracebacks = [r.getMessage() for r in caplog.records if "failed and is dropped" in r.getMessage()]
    assert len(tracebacks) == 2 and all("agent bug on purpose" in t for t in tracebacks)


def test_agent_rollout_groups_live_weights_and_total_failure(tmp_path):
    import torch

    from turngym.agents.policy import score_sequence
    from turngym.trainers import policy_setup
    from turngym.trainers.agent_rollout import AgentRolloutError, rollout

    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent('''
        async def run(client, task):
            r = await client.chat.completions.create(model="p", messages=task.messages, tools=task.tools)
            assert task.call_tool("search", {"query": task.question}).strip()
            return task.score(r.choices[0].message.content or "")
    '''))
    cfg = _cfg(tmp_path, good)
    s = policy_setup.setup(cfg)
    trajs, stats = rollout(cfg, s, [3, 4], 2, sample_seed=0)
    assert [t.group_id for t in trajs] == [f"{ENV_ID}:3"] * 2 + [f"{ENV_ID}:4"] * 2
    assert all(t.meta["gold_answer"] and t.seed in (3, 4) and len(t.turns) == 1 for t in trajs)
    assert stats.extra["agent/failures"] == 0 and stats.trajectories == 4
    with torch.no_grad():  # an update between two steps: the next requests sample from the new weights
        for p in s.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (t,) = rollout(cfg, s, [5], 1, sample_seed=1)[0]
    ids = t.prompt_ids + t.turns[0].action_ids
    assert t.turns[0].logprobs == pytest.approx(score_sequence(s.model, ids)[len(t.prompt_ids):], abs=1e-4)

    # the documented example agent (examples/gateway_agent.py): 6-turn episodes that run into the 48-token budget
    example = Path(__file__).resolve().parents[2] / "examples" / "gateway_agent.py"
    trajs, stats = rollout(_cfg(tmp_path, example), s, [6], 2, sample_seed=2)
    assert len(trajs) == 2 and stats.extra["agent/failures"] == 0
    for t in trajs:
        assert t.stop_reason in ("terminated", "max_tokens") and sum(len(u.action_ids) for u in t.turns) <= 48
    assert stats.extra["agent/budget_stops"] == sum(t.stop_reason == "max_tokens" for t in trajs)

    bad = tmp_path / "bad.py"
    bad.write_text("async def run(client, task):\n    raise ValueError('broken agent')\n")
    with pytest.raises(AgentRolloutError, match="broken agent"):
        rollout(_cfg(tmp_path, bad), s, [3], 2)
