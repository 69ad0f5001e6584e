"""The README's two-agent env (examples/two_agent_env.py) through the token-level multi-agent rollout engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from turngym.agents.multi_rollout import Actor, attach_counterfactuals, collect_multi_rollouts, team_metrics
from turngym.agents.policy import HFPolicy, SamplingParams, ScriptedPolicy
from turngym.agents.render import Renderer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two_agent_env.py"
ENV_ID = "example/SpeakerListener-v0"


def _load_example():
    spec = importlib.util.spec_from_file_location("two_agent_env_for_multi_train", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # registers example/SpeakerListener-v0
    return mod


def test_example_env_rolls_out_with_scripted_and_model_policies(team_tiny):
    _load_example()
    tok, model, _ = team_tiny
    r = Renderer(tok)
    expert = ScriptedPolicy(tok, noise=0.0)
    trajs = collect_multi_rollouts(ENV_ID, {"speaker_0": Actor(expert, r), "listener_0": Actor(expert, r)},
                                   seeds=range(6), group_size=2, params=SamplingParams(max_new_tokens=32))
    assert team_metrics(trajs)["team/success"] == 1.0
    assert {t.group_id for t in trajs} == {f"{ENV_ID}:{s}:{a}" for s in range(6) for a in ("speaker_0", "listener_0")}
    # a model speaker with the scripted listener: the listener hears whatever the model said
    trajs = collect_multi_rollouts(ENV_ID, {"speaker_0": Actor(HFPolicy(model, tok), r), "listener_0": Actor(expert, r)},
                                   seeds=[0, 1], group_size=2, params=SamplingParams(max_new_tokens=12),
                                   env_kwargs={"max_cycles": 2})
    speakers = [t for t in trajs if t.agent_id == "speaker_0"]
    assert all(t.turns and all(len(u.logprobs) == len(u.action_ids) for u in t.turns) for t in speakers)
    attach_counterfactuals(ENV_ID, trajs, ["speaker_0"])
    # the scripted speaker names the colour and the listener (replayed or scripted) repeats it
    assert all(t.meta["prompt_signals"]["cf_outcome"] == 1.0 for t in speakers)
