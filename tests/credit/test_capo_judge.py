"""CAPO's GenPRM critiques through a real judge: the project's OpenAI-compatible server on loopback (`judge_server`)
and `OpenAIJudge`, exactly what the trainer builds from ``judge_url``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from turngym.agents.judge import OpenAIJudge
from turngym.credit import GroupBatch, assign_credit
from turngym.credit import signals as sig
from turngym.credit.capo_signals import GenPRMCritiqueProvider
from turngym.errors import SignalError
from turngym.types import ToolCall, ToolResult, Trajectory, Turn


def rollout(group: str, steps: list[tuple[str, str]], answer: str | None, outcome: float) -> Trajectory:
    """A search rollout: ``steps`` are (action text, observation text); the last action answers if ``answer``."""
    turns = []
    for k, (text, obs) in enumerate(steps):
        is_answer = answer is not None and k == len(steps) - 1
        calls = [] if is_answer else [ToolCall("search", {"query": text})]
        res = [] if is_answer else [ToolResult("search", ok=True, output=obs)]
        msgs = [{"role": "tool", "content": obs}] if obs else []
        turns.append(Turn(action_ids=[10 + k, 11 + k, 12 + k], logprobs=[-0.2] * 3, action_text=text,
                          obs_ids=[40 + k] if obs else [], obs_messages=msgs, tool_calls=calls, tool_results=res))
    return Trajectory(group_id=group, prompt_ids=[1, 2, 3], turns=turns, outcome=outcome, final_answer=answer,
                      meta={"question": "Who directed the film that won Best Picture in 1998?",
                            "gold_answer": "James Cameron",
                            "gold_calls": [{"name": "search", "arguments": {"query": "Best Picture 1998"}}]})


def rollouts() -> list[Trajectory]:
    return [
        rollout("q", [("search Best Picture 1998", "Titanic won Best Picture."),
                      ("search Titanic director", "Titanic was directed by James Cameron."),
                      ("answer James Cameron", "")], "James Cameron", 1.0),
        rollout("q", [("search Best Picture 1997", "The English Patient won."),
                      ("answer Anthony Minghella", "")], "Anthony Minghella", 0.0),
        rollout("q", [("search Oscars", "The Academy Awards are..."), ("search Titanic", "Titanic is a 1997 film.")],
                None, 0.0),
    ]


def canned(prompt: str, counts: dict[str, int]) -> str:
    """The judge model: replies by rollout (recognised from its steps) and by how often the prompt was seen."""
    i = counts[prompt] = counts.get(prompt, -1) + 1
    if "Anthony Minghella" in prompt:  # wrong year searched, wrong answer: both steps flagged by most critiques
        return ["Step 0 used the wrong year. Incorrect: [0, 1]", "[0, 1]", "[1]"][i % 3]
    if "search Oscars" in prompt:  # a vague search; one critique is unparseable
        return ["[0]", "I cannot tell.", "[0, 7]"][i % 3]
    return ["[]", "[]", "[2]"][i % 3]  # the correct rollout: one critique disagrees


def test_critiques_reach_the_server_and_votes_land_in_the_signals(judge_server):
    counts: dict[str, int] = {}
    url, policy = judge_server(lambda text: canned(text, counts))
    judge = OpenAIJudge(url, temperature=0.7, max_tokens=64, batch_size=4)
    prov = GenPRMCritiqueProvider(judge, n_critiques=3, vote="majority", obs_chars=30)
    trajs = prov(rollouts())

    assert len(policy.prompts) == 9 and judge.calls == 3  # 3 rollouts x 3 critiques, 4 prompts per request
    first = policy.prompts[0]
    assert policy.prompts[:3] == [first] * 3  # each rollout's prompt repeated m times
    assert "Who directed the film that won Best Picture in 1998?" in first
    assert "Reference answer: James Cameron" in first
    for k, text in enumerate(["search Best Picture 1998", "search Titanic director", "answer James Cameron"]):
        assert f"<step {k}>\n{text}" in first
    assert "[observation] Titanic was directed by James \n<step 2>" in first  # cut to obs_chars = 30

    votes = [[u.signals["capo_votes"] for u in t.turns] for t in trajs]
    flags = [[u.signals["capo_err"] for u in t.turns] for t in trajs]
    assert votes == [[0.0, 0.0, 1.0], [2.0, 3.0], [2.0, 0.0]]
    assert flags == [[0.0, 0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]  # majority: v >= m_eff / 2
    assert [t.meta["prompt_signals"]["capo_valid_critiques"] for t in trajs] == [3.0, 3.0, 2.0]
    assert prov.invalid == 1 and prov.errors == 0

    batch = GroupBatch.from_trajectories(trajs)
    out = assign_credit("capo", batch)
    assert torch.isfinite(out.advantages).all()
    assert out.turn_advantages[0, 0] > 0 > out.turn_advantages[1, 0]  # correct clean vs wrong flagged
    assert out.turn_advantages[1, 0] < out.turn_advantages[2, 1]  # wrong flagged < wrong clean
    d = out.diagnostics
    assert d["llm_judged"] == 1.0 and d["invalid_critique_rate"] == pytest.approx(1 / 9)
    assert d["flagged_turn_rate"] == pytest.approx(3 / 7)


def test_the_factory_uses_the_served_judge_with_the_signal_options(judge_server):
    url, policy = judge_server(lambda text: "[0]")
    ctx = sig.SignalContext(method="capo", judge=OpenAIJudge(url), signal_options={"n_critiques": 2, "vote": "union"})
    (prov,) = sig.build_providers("capo", ctx)
    trajs = prov(rollouts())
    assert len(policy.prompts) == 6
    assert [[u.signals["capo_err"] for u in t.turns] for t in trajs] == [[1.0, 0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    assert all(t.meta["prompt_signals"]["capo_llm"] == 1.0 for t in trajs)


def test_an_unreachable_judge_raises_signal_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", model="m", timeout_s=5)
    with pytest.raises(SignalError, match="unreachable"):
        GenPRMCritiqueProvider(judge)(rollouts())


def test_two_grpo_steps_with_a_served_judge(judge_server, tmp_path: Path):
    """``judge_url=`` makes the trainer critique every rollout with the served GenPRM (not the rule stand-in)."""
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    url, policy = judge_server(lambda text: "[0]")
    cfg = resolve_train_config("capo", [
        "env_id=search/HopQA-v0", "model=tiny", "model_size=1m", "steps=2", "tasks_per_step=2", "group_size=2",
        "minibatch_size=4", "sft_steps=0", "pretrain_steps=0", "eval_tasks=0", "eval_every=0", "max_turns=2",
        "max_new_tokens=16", "max_traj_tokens=256", "checkpoint_every=10", "save_trajectories=0",
        "tensorboard=false", "progress=false", "report=false", "torch_threads=1", "seed=1",
        f"judge_url={url}", "signals.n_critiques=2", "signals.vote=union", f"run_dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
    ])
    train(cfg)
    lines = read_metrics(tmp_path / "run", kind="train")
    assert [d["step"] for d in lines] == [1, 2]
    assert all(d["credit/llm_judged"] == 1.0 and d["credit/invalid_critique_rate"] == 0.0 for d in lines)
    assert len(policy.prompts) == 2 * 4 * 2 and all("<step 0>" in p for p in policy.prompts)
