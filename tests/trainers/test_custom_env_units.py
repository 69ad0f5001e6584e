"""Small pieces of the custom-env journey: no-expert config, tokenizer text without an expert, report wall time
over resumed segments, host paths kept out of tool errors, file-path env ids made absolute."""

from __future__ import annotations

import numpy as np

ENV_PY = '''
from turngym.envs.core import Env, Score, Task
from turngym.tools import ToolSet, tool


@tool
def double(x: int) -> str:
    """Double a number.

    Args:
        x: The number.
    """
    return str(2 * x)


@tool
def read_file(path: str) -> str:
    """Read a file.

    Args:
        path: The file.
    """
    return open("/nonexistent/dir/" + path).read()


class NoExpertEnv(Env):
    def __init__(self, max_turns: int = 3):
        super().__init__(tools=ToolSet([double, read_file]), max_turns=max_turns)

    def _sample_task(self, rng, options):
        x = int(rng.integers(1, 9))
        return Task(prompt=f"Double {x}.", gold_answer=str(2 * x), gold_calls=[{"name": "double", "arguments": {"x": x}}])


class NamedEnv(NoExpertEnv):
    """An env with a required constructor argument that changes what it says."""

    def __init__(self, animal: str, max_turns: int = 3):
        super().__init__(max_turns=max_turns)
        self.animal = animal

    def _sample_task(self, rng, options):
        x = int(rng.integers(1, 9))
        return Task(prompt=f"The {self.animal} asks: double {x}.", gold_answer=str(2 * x))
'''


def _write(tmp_path):
    (tmp_path / "noexp.py").write_text(ENV_PY)
    return f"{tmp_path / 'noexp.py'}:NoExpertEnv"


def test_no_expert_turns_sft_off_with_one_note(tmp_path, monkeypatch):
    from turngym.api import prepare_config
    from turngym.trainers.config import resolve_train_config

    monkeypatch.chdir(tmp_path)
    _write(tmp_path)
    cfg = resolve_train_config(None, ["env_id=noexp.py:NoExpertEnv", "run_dir=r"])
    assert cfg.env_kwargs == {}  # the default preset's HopQA env_kwargs are dropped for another env
    notes: list[str] = []
    out = prepare_config(cfg, say=notes.append)
    assert out.sft_steps == 0 and out.pretrain_steps == 0 and cfg.sft_steps > 0
    assert out.env_id == f"{tmp_path / 'noexp.py'}:NoExpertEnv"
    assert len(notes) == 1 and "no scripted expert" in notes[0] and "docs/custom_env.md" in notes[0]


def test_tiny_tokenizer_text_without_an_expert(tmp_path):
    from turngym.agents.tiny import env_texts

    texts = list(env_texts(_write(tmp_path), n_seeds=4))
    assert any("<tool_call>" in t and '"double"' in t for t in texts)  # random calls of the env's tools
    assert any("Double" in t for t in texts)  # prompts


def test_the_tiny_policy_is_built_from_the_env_its_config_makes(tmp_path):
    # the tokenizer's text comes from make(env_id, **env_kwargs): an env with a required argument used to crash
    # the trainer's model setup (TypeError: missing argument), and kwargs that change the env's text were ignored
    from turngym.api import train
    from turngym.evaluate import load_trained
    from turngym.trainers import policy_setup
    from turngym.trainers.config import TrainConfig

    _write(tmp_path)
    env_id = f"{tmp_path / 'noexp.py'}:NamedEnv"
    cfg = TrainConfig(env_id=env_id, env_kwargs={"animal": "quokka"}, eval_env_kwargs={"animal": "wombat"},
                      cache_dir=str(tmp_path / "cache"), device="cpu",
                      steps=1, tasks_per_step=2, group_size=2, minibatch_size=4, eval_tasks=2, max_new_tokens=8,
                      pretrain_steps=0, sft_steps=0, progress=False, report=False, tensorboard=False,
                      run_dir=str(tmp_path / "run"))
    other = policy_setup.setup(cfg.replace(env_kwargs={"animal": "zebra"}))
    train(cfg)
    # the run keeps its tokenizer, and a trained run is read back with it (not one rebuilt from another env's text)
    _, tok = load_trained(str(tmp_path / "run"))
    assert len(tok.encode(" quokka")) < len(tok.encode(" zebra"))  # each tokenizer learned its own env's word
    assert len(other.tokenizer.encode(" zebra")) < len(other.tokenizer.encode(" quokka"))
    assert tok.get_vocab() == policy_setup.setup(cfg).tokenizer.get_vocab()
    # the held-out evaluation plays eval_env_kwargs over env_kwargs, in the run and in `eval --model RUN_DIR`
    from turngym.evaluate import _namespace, rollout_main
    from turngym.trainers import sampling

    s = policy_setup.setup(cfg)
    assert all("The wombat asks" in str(t.prompt_messages) for t in sampling.evaluate(cfg.replace(eval_tasks=3), s)[1])
    assert all("The quokka asks" in str(t.prompt_messages) for t in sampling.rollout(cfg, s, [0, 1], 1)[0])
    assert _namespace(["--model", str(tmp_path / "run")], True, {}).env_kwargs == {"animal": "wombat"}
    assert _namespace(["--model", str(tmp_path / "run")], False, {}).env_kwargs == {"animal": "quokka"}
    # `eval` / `rollout --model RUN_DIR key=value` plays the run's env with that argument changed

    out = tmp_path / "t.jsonl"
    rollout_main(["--model", str(tmp_path / "run"), "animal=zebra", "--n", "1", "--max-new-tokens", "4",
                  "--no-progress", "--out", str(out)])
    assert "The zebra asks" in out.read_text()


def test_tool_errors_do_not_show_host_paths(tmp_path):
    from turngym.envs import make

    env = make(_write(tmp_path))
    env.reset(seed=0)
    obs, *_ = env.step('<tool_call>{"name": "read_file", "arguments": {"path": "a.txt"}}</tool_call>')
    assert "a.txt" in obs[0]["content"] and "/nonexistent/dir" not in obs[0]["content"]


def test_report_wall_time_sums_resumed_segments():
    from turngym.trainers.report import wall_time

    lines = [{"elapsed_s": e} for e in (1.0, 5.0, 9.0, 0.5, 4.0, 7.0)]  # killed at 9 s, resumed for 7 s
    assert wall_time(lines) == 16.0
    assert wall_time([{"elapsed_s": 3.0}, {"elapsed_s": 6.0}]) == 6.0
    assert wall_time([]) == 0.0


def test_random_action_uses_schema_types():
    from turngym.agents.tiny import random_action
    from turngym.envs import Env, Task
    from turngym.tools import ToolSet, tool

    @tool
    def f(n: int, flag: bool, word: str) -> str:
        """F.

        Args:
            n: A number.
            flag: A flag.
            word: A word.
        """
        return "x"

    class E(Env):
        def __init__(self):
            super().__init__(tools=ToolSet([f]))

        def _sample_task(self, rng, options):
            return Task(prompt="alpha beta", gold_answer="g")

    env = E()
    env.reset(seed=0)
    acts = [random_action(env, np.random.default_rng(i)) for i in range(20)]
    calls = [c for a in acts for c in env.parser.parse(a).calls]
    assert calls and all(isinstance(c.arguments["n"], int) and c.arguments["word"] in ("alpha", "beta") for c in calls)
