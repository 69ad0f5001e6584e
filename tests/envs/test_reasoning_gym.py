"""``tool/ReasoningGym-v0``: reasoning-gym datasets as a task source, scored by each dataset's own scorer.

Everything here runs the real reasoning-gym package (the ``reasoning-gym`` extra) and the real tools
(calculator, python in a subprocess sandbox); the file is skipped where the extra is not installed, except the
test of the missing-extra error itself.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import turngym.envs as E
from turngym.envs.checker import check_env
from turngym.errors import ConfigError, EnvError, MissingExtraError

ID = "tool/ReasoningGym-v0"
needs_rg = pytest.mark.skipif(
    importlib.util.find_spec("reasoning_gym") is None,
    reason="reasoning-gym is not installed (pip install 'turngym[reasoning-gym]')",
)
#: Three datasets: arithmetic with the calculator, counting with the calculator on (no gold call), a word
#: task without tools.
THREE = [
    ("basic_arithmetic", {"tools": ["calculator"]}),
    ("leg_counting", {"tools": ["calculator"]}),
    ("spell_backward", {"tools": []}),
]


def play(env, seed, noise=0.0, rng_seed=0, options=None):
    """One episode of the scripted expert; returns (actions, final info)."""
    env.reset(seed=seed, options=options)
    rng = np.random.default_rng(rng_seed)
    actions = []
    while True:
        a = env.expert_action(rng, noise)
        actions.append(a)
        _, _, term, trunc, info = env.step(a)
        if term or trunc:
            return actions, info


def rg_dataset(name, seed, size, **cfg):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **cfg)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # `import reasoning_gym` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'turngym\[reasoning-gym\]'"):
        E.make(ID)


@needs_rg
@pytest.mark.parametrize(("dataset", "kw"), THREE)
def test_three_datasets_reset_step_and_the_datasets_own_scorer(dataset, kw):
    env = E.make(ID, dataset=dataset, **kw)
    try:
        obs, info = env.reset(seed=11)
        task = info["task"]
        entry = rg_dataset(dataset, 0, 1000)[task["index"]]  # the same entry, straight from reasoning-gym
        assert task["dataset"] == dataset and task["split"] == "train"
        assert obs[-1] == {"role": "user", "content": entry["question"]}
        assert task["gold_answer"] == entry["answer"]
        scorer = env.unwrapped.task.private["dataset"].score_answer

        _, reward, term, _, end = env.step(f"<answer>{entry['answer']}</answer>")
        assert term and reward == 1.0 and end["success"] is True and end["outcome"] == 1.0

        env.reset(seed=11)
        wrong = env.unwrapped._expert_wrong_answer(np.random.default_rng(0))
        assert wrong != entry["answer"]
        _, reward, term, _, end = env.step(f"<answer>{wrong}</answer>")
        assert term and end["success"] is False
        assert reward == end["outcome"] == end["score"] == scorer(wrong, entry) < 1.0

        actions, end = play(env, seed=12)  # the noise-0 expert solves it
        assert end["success"] is True
        assert len(actions) == 1 + len(end["task"]["gold_calls"])
    finally:
        env.close()


@needs_rg
@pytest.mark.parametrize(("dataset", "kw"), THREE)
def test_check_env_passes(dataset, kw):
    env = E.make(ID, dataset=dataset, **kw)
    try:
        report = check_env(env)
    finally:
        env.close()
    assert report["expert"] == "ok" and report["gymnasium"] == "ok"
    assert all(v == "ok" or v.startswith("skipped") for v in report.values()), report


@needs_rg
def test_partial_credit_comes_from_the_dataset_scorer():
    # the base scorer gives len(gold) / len(answer) when the answer contains the gold answer
    env = E.make(ID, dataset="spell_backward", tools=[])
    try:
        _, info = env.reset(seed=3)
        gold = info["task"]["gold_answer"]
        _, reward, _, _, end = env.step(f"<answer>{gold}!!</answer>")
        scorer = env.unwrapped.task.private["dataset"].score_answer
        assert 0.0 < reward < 1.0 and reward == scorer(gold + "!!", env.unwrapped.task.private["entry"])
        assert end["success"] is False
    finally:
        env.close()


@needs_rg
def test_reward_success_turns_partial_credit_into_zero():
    env = E.make(ID, dataset="basic_arithmetic", tools=[], reward="success")
    try:
        _, info = env.reset(seed=3)
        gold = info["task"]["gold_answer"]
        _, reward, _, _, end = env.step(
            f"<answer>{gold}0</answer>"
        )  # contains the gold string: partial score
        assert 0.0 < end["score"] < 1.0 and reward == end["outcome"] == 0.0 and end["success"] is False
        env.reset(seed=3)
        _, reward, _, _, end = env.step(f"<answer>{gold}</answer>")
        assert reward == end["outcome"] == end["score"] == 1.0
    finally:
        env.close()
    with pytest.raises(ConfigError, match="reward must be"):
        E.make(ID, reward="f1")


@needs_rg
def test_same_seed_same_task_and_seeds_differ():
    a, b = E.make(ID), E.make(ID)
    try:
        for s in (0, 5, 999_999, 1_000_003):
            oa, ia = a.reset(seed=s)
            ob, ib = b.reset(seed=s)
            assert oa == ob and ia["task"] == ib["task"]
        prompts = {a.reset(seed=s)[0][-1]["content"] for s in range(10)}
        assert len(prompts) >= 8
        # another dataset seed gives other tasks for the same reset seed
        c = E.make(ID, seed=7)
        assert c.reset(seed=0)[0][-1]["content"] != a.reset(seed=0)[0][-1]["content"]
        c.close()
    finally:
        a.close()
        b.close()


@needs_rg
def test_tools_off_is_single_turn_and_tool_calls_are_data():
    env = E.make(ID, tools=[], parser="hermes")
    try:
        obs, info = env.reset(seed=2)
        assert env.unwrapped.toolset is None and env.unwrapped.tool_schemas == []
        assert info["task"]["gold_calls"] == [] and "at once" in obs[0]["content"]
        call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 1"}}</tool_call>'
        _, reward, term, _, sinfo = env.step(call)
        assert not term and reward == 0.0
        assert sinfo["tool_errors"] == 1 and "no tools" in sinfo["tool_results"][0].error
        actions, end = play(env, seed=2)
        assert len(actions) == 1 and end["success"] is True
    finally:
        env.close()


@needs_rg
def test_calculator_gold_call_reproduces_the_answer():
    env = E.make(
        ID, dataset="chain_sum", dataset_config={"max_terms": 3}, tools=["calculator"], parser="tags"
    )
    try:
        for seed in range(5):
            _, info = env.reset(seed=seed)
            (call,) = info["task"]["gold_calls"]
            assert call["arguments"]["expression"] == info["task"]["source_metadata"]["expression"]
            obs, _, _, _, sinfo = env.step(f"<calculator>{call['arguments']['expression']}</calculator>")
            assert obs[0]["content"] == info["task"]["gold_answer"] and sinfo["value"] == 1.0
    finally:
        env.close()


@needs_rg
def test_python_tool_runs_in_a_real_sandbox():
    from turngym.tools.sandbox import make_sandbox

    sandbox = make_sandbox("subprocess")
    env = E.make(ID, tools=["python"], sandbox=sandbox, parser="hermes")
    try:
        actions, end = play(env, seed=4)
        assert actions[0].startswith('<tool_call>{"name": "python"') and end["success"] is True
        env.reset(seed=4)
        _, _, term, _, info = env.step(
            '<tool_call>{"name": "python", "arguments": {"code": "1/0"}}</tool_call>'
        )
        assert not term and info["tool_errors"] == 1 and "ZeroDivisionError" in info["tool_results"][0].error
    finally:
        env.close()
        sandbox.close()  # the caller's sandbox: the env does not close it


@needs_rg
def test_held_out_tasks_never_repeat_a_training_question():
    cfg = {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 2,
        "operators": ["+"],
        "allow_parentheses": False,
    }
    env = E.make(ID, dataset_config=cfg, size=300, eval_size=60)
    try:
        train_q = {e["question"] for e in rg_dataset("basic_arithmetic", 0, 300, **cfg)}
        pool = env.unwrapped.eval_indices()
        raw_eval = rg_dataset("basic_arithmetic", 300, 60, **cfg)
        expected, seen = [], set(train_q)
        for i in range(60):  # by hand: drop training questions and repeats of earlier held-out questions
            if raw_eval[i]["question"] not in seen:
                seen.add(raw_eval[i]["question"])
                expected.append(i)
        # this small config has duplicates, and they are removed
        assert pool == expected and 0 < len(pool) < 60
        assert len({raw_eval[i]["question"] for i in pool}) == len(pool)
        seen = set()
        for i in range(len(pool)):
            _, info = env.reset(seed=1_000_000 + i)
            assert info["task"]["split"] == "eval" and info["task"]["prompt"] not in train_q
            seen.add(info["task"]["index"])
        assert seen == set(pool)  # eval_seed + i -> held-out entry i: distinct tasks
        _, info = env.reset(seed=999_999)
        assert info["task"]["split"] == "train" and info["task"]["prompt"] in train_q
        _, info = env.reset(seed=5, options={"split": "eval"})
        assert info["task"]["split"] == "eval"
    finally:
        env.close()


@needs_rg
def test_a_task_space_too_small_for_a_held_out_split_is_a_config_error():
    cfg = {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 1,
        "operators": ["+"],
        "allow_parentheses": False,
    }  # 11 x 11 questions, all in a training pool of 2000
    env = E.make(ID, dataset_config=cfg, size=2000, eval_size=20)
    try:
        env.reset(seed=0)  # training is fine
        with pytest.raises(ConfigError, match="too few distinct tasks"):
            env.reset(seed=1_000_000)
    finally:
        env.close()


@needs_rg
def test_curriculum_raises_the_difficulty_by_step():
    env = E.make(ID, curriculum={"every": 10, "max_level": 2, "mode": "upper_bound"})
    u = env.unwrapped
    try:
        assert [u.schedule.level_at(t) for t in (0, 9, 10, 19, 20, 500)] == [0, 0, 1, 1, 2, 2]
        terms = {}
        for step in (0, 10, 25):
            u.set_curriculum_step(step)
            assert u.curriculum_level == min(step // 10, 2)
            infos = [env.reset(seed=s)[1]["task"] for s in range(6)]
            assert {t["level"] for t in infos} == {u.curriculum_level}
            terms[step] = {t["source_metadata"]["num_terms"] for t in infos}
        # reasoning-gym's basic_arithmetic curriculum: num_terms levels [2, 3, 4, 5, 6]; upper_bound mode
        assert terms == {0: {2}, 10: {3}, 25: {4}}
        # the same seed at another step is another (harder) task; at the same step the same task
        u.set_curriculum_step(0)
        low = env.reset(seed=3)[1]["task"]
        u.set_curriculum_step(20)
        high = env.reset(seed=3)[1]["task"]
        assert low["prompt"] != high["prompt"] and env.reset(seed=3)[1]["task"] == high
        assert env.reset(seed=3, options={"curriculum_step": 0})[1]["task"] == low
        # held-out tasks: the eval level (max_level) whatever the step
        u.set_curriculum_step(0)
        ev = env.reset(seed=1_000_000)[1]["task"]
        assert ev["level"] == 2 and ev["source_metadata"]["num_terms"] == 4
        # the expert still solves a high-level task
        _, end = play(env, seed=1, options={"curriculum_step": 20})
        assert end["success"] is True and end["task"]["level"] == 2
    finally:
        env.close()


@needs_rg
def test_curriculum_step_from_the_constructor_and_bad_curricula():
    env = E.make(ID, curriculum={"every": 5}, curriculum_step=12)
    assert env.unwrapped.curriculum_level == 2 and env.reset(seed=0)[1]["task"]["level"] == 2
    env.close()
    with pytest.raises(ConfigError, match="Did you mean 'every'"):
        E.make(ID, curriculum={"evry": 5})
    with pytest.raises(ConfigError, match="sets by level"):
        E.make(ID, dataset_config={"min_terms": 2}, curriculum={"every": 5})
    with pytest.raises(ConfigError, match=r"max_level must be an int in 0\.\.4"):
        E.make(ID, curriculum={"max_level": 9})
    with pytest.raises(ConfigError, match="no curriculum"):
        E.make(ID, dataset="composite", curriculum={})
    with pytest.raises(ConfigError, match="need a curriculum"):
        E.make(ID).reset(seed=0, options={"level": 1})


@needs_rg
def test_bad_names_and_configs_are_config_errors():
    with pytest.raises(
        ConfigError,
        match=r"Unknown reasoning-gym dataset 'basic_arithmetc'\. Did you mean 'basic_arithmetic'",
    ):
        E.make(ID, dataset="basic_arithmetc")
    with pytest.raises(ConfigError, match="Did you mean 'max_terms'"):
        E.make(ID, dataset_config={"max_term": 3})
    with pytest.raises(ConfigError, match="rejected the config.*min_terms must be positive"):
        E.make(ID, dataset_config={"min_terms": 0})
    with pytest.raises(ConfigError, match="env's own argument"):
        E.make(ID, dataset_config={"seed": 3})
    with pytest.raises(ConfigError, match="Did you mean 'calculator'"):
        E.make(ID, tools=["calculater"])
    with pytest.raises(ConfigError, match="list of tool names"):
        E.make(ID, tools="calculator")
    env = E.make(ID)
    with pytest.raises(ConfigError, match="unknown keys"):
        env.reset(seed=0, options={"hops": 2})
    env.close()


@needs_rg
def test_a_scorer_that_raises_raises_never_a_silent_zero(monkeypatch):
    env = E.make(ID, dataset="leg_counting", tools=[])
    try:
        env.reset(seed=0)
        ds = env.unwrapped.task.private["dataset"]

        def broken(answer, entry):
            raise KeyError("total_legs")

        monkeypatch.setattr(
            ds, "score_answer", broken
        )  # the real scorer is tested above; this is its failure path
        with pytest.raises(EnvError, match="score_answer raised KeyError"):
            env.step("<answer>12</answer>")
    finally:
        env.close()


@needs_rg
def test_datasets_without_reference_answers_have_no_expert_but_still_score():
    env = E.make(ID, dataset="propositional_logic", tools=[])
    try:
        _, info = env.reset(seed=0)
        assert info["task"]["has_gold_answer"] is False
        with pytest.raises(EnvError, match="no reference answer"):
            env.expert_action(np.random.default_rng(0))
        entry = env.unwrapped.task.private["entry"]
        _, reward, term, _, end = env.step(f"<answer>{entry['metadata']['example_answer']}</answer>")
        assert term and reward == end["outcome"] and 0.0 <= reward <= 1.0
    finally:
        env.close()


@needs_rg
def test_noisy_expert_mistakes_are_data():
    env = E.make(ID)
    try:
        outcomes = [play(env, seed=s, noise=0.6, rng_seed=s)[1] for s in range(20)]
        assert any(not o["success"] for o in outcomes) and any(o["success"] for o in outcomes)
        assert all(0.0 <= o["outcome"] <= 1.0 for o in outcomes)
    finally:
        env.close()


@needs_rg
def test_ecosystem_doc_example():
    # the example of docs/ecosystem.md, "reasoning-gym tasks"
    import numpy as np

    import turngym

    env = turngym.make(
        "tool/ReasoningGym-v0", dataset="chain_sum", dataset_config={"max_terms": 3}, tools=["calculator"]
    )
    obs, info = env.reset(seed=0)
    print(obs[-1]["content"])  # the dataset's question
    rng = np.random.default_rng(0)
    while True:
        _, _, terminated, truncated, info = env.step(env.expert_action(rng, noise=0.0))
        if terminated or truncated:
            break
    print(info["success"], info["outcome"], info["final_answer"], info["task"]["gold_calls"])
    env.close()
    assert info["success"] is True and info["final_answer"] == info["task"]["gold_answer"]
