"""Each bad input of the custom-env journey exits 2 with one line on stderr, before anything heavy loads.

The table in docs/custom_env.md ("Bad inputs") lists the same cases; ``CASES`` is that table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from turngym import cli

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


class DoubleEnv(Env):
    def __init__(self, max_turns: int = 3):
        super().__init__(tools=ToolSet([double]), max_turns=max_turns)

    def _sample_task(self, rng, options):
        x = int(rng.integers(1, 9))
        return Task(prompt=f"Double {x}.", gold_answer=str(2 * x), gold_calls=[{"name": "double", "arguments": {"x": x}}])


class NeedEnv(DoubleEnv):
    """A constructor argument without a default."""

    def __init__(self, factor: int, max_turns: int = 3):
        super().__init__(max_turns=max_turns)
        self.factor = factor

    def _sample_task(self, rng, options):
        x = int(rng.integers(1, 9))
        return Task(prompt=f"Multiply {x} by {self.factor}.", gold_answer=str(self.factor * x))
'''


@dataclass
class Case:
    what: str
    argv: tuple[str, ...]
    needle: str


CASES = [
    Case("an unregistered id", ("train", "env_id=my/Double-v0"), "Unknown env id 'my/Double-v0'"),
    Case("unknown `env_kwargs` key (file.py:Class)", ("train", "env_id=denv.py:DoubleEnv", "env_kwargs.bogus=1"),
         "Unknown keyword argument 'bogus' for env 'denv.py:DoubleEnv'"),
    Case("unknown `env_kwargs` key (module:Class)", ("check", "denv:DoubleEnv", "bogus=1"),
         "Unknown keyword argument 'bogus'"),
    Case("a required constructor argument not given (train)", ("train", "env_id=denv.py:NeedEnv"),
         "needs the constructor argument(s) 'factor', which were not given. Fix: add env_kwargs.factor=VALUE"),
    Case("unknown `eval_env_kwargs` key", ("train", "env_id=denv.py:DoubleEnv", "eval_env_kwargs.bogus=1"),
         "(from eval_env_kwargs.bogus)"),
    Case("a required constructor argument not given (check)", ("check", "denv.py:NeedEnv"), "Fix: add factor=VALUE"),
    Case("a required constructor argument not given (eval)", ("eval", "denv.py:NeedEnv"), "Fix: add factor=VALUE"),
    Case("a required constructor argument not given (serve-policy)", ("serve-policy", "--env", "denv.py:NeedEnv"),
         "Fix: add factor=VALUE"),
    Case("an env argument without `=` (eval)", ("eval", "denv.py:NeedEnv", "factor"), "Bad argument 'factor'"),
    Case("misspelled class", ("train", "env_id=denv:DoubleEnvv"), "has no class 'DoubleEnvv'. Did you mean 'DoubleEnv'?"),
    Case("missing env file", ("eval", "nofile.py:DoubleEnv"), "nofile.py'. Give a registered env id"),
    Case("`--import` of a missing module", ("train", "--import", "no_such_mod"), "Cannot import module 'no_such_mod' for --import no_such_mod"),
    Case("misspelled `model=`", ("train", "env_id=denv.py:DoubleEnv", "model=tinny"),
         "Unknown model 'tinny': neither a preset"),
    Case("a run dir as `model=` of train", ("train", "model=fake_run"), "is a turngym run directory"),
    Case("`learning_rate=`", ("train", "learning_rate=1e-3"), "Did you mean 'lr'?"),
    Case("`--n -3`", ("eval", "denv.py:DoubleEnv", "--n", "-3"), "--n -3: must be >= 1"),
    Case("no env for eval", ("eval",), "no env: give ENV"),
    Case("eval of an unregistered id", ("eval", "my/Double-v0"), "Unknown env id"),
    Case("OpenAI server down", ("eval", "denv.py:DoubleEnv", "--policy", "openai", "--url", "http://127.0.0.1:9",
                                "--n", "1"), "cannot reach the OpenAI-compatible server"),
    Case("`--policy scripted` without an expert", ("eval", "denv.py:DoubleEnv", "--policy", "scripted"),
         "has no scripted expert (_expert_next)"),
    Case("`view` of a missing file", ("view", "missing.jsonl", "--text"), "missing.jsonl does not exist"),
]


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "denv.py").write_text(ENV_PY)
    (tmp_path / "fake_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fake_run" / "config.yaml").write_text("env_id: search/HopQA-v0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_exits_2_with_one_line(case, project, capsys):
    rc = cli.main([*case.argv, "run_dir=out"] if case.argv[0] == "train" else list(case.argv))
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "Writing model shards" not in line and "Loading weights" not in line]
    assert rc == 2, err
    assert len(err) == 1 and case.needle in err[0], err
    assert not (project / "out").exists()


def test_env_arguments_reach_every_env_the_commands_build(project, capsys):
    # `check` used to rebuild the env for its last checks without the arguments (a TypeError for a required one),
    # and `eval` / `rollout` had no way to give them
    assert cli.main(["check", "denv.py:NeedEnv", "factor=7"]) == 0
    assert "passed" in capsys.readouterr().out
    for argv in (["denv.py:NeedEnv", "factor=7"], ["denv.py:NeedEnv", "--n", "1", "env_kwargs.factor=7"]):
        assert cli.main(["rollout", *argv, "--n", "1", "--max-new-tokens", "4", "--no-progress", "--out", "t.jsonl"]) == 0
        assert "by 7." in (project / "t.jsonl").read_text()


def test_over_long_context_names_a_flag_the_cli_has(monkeypatch):
    from turngym import evaluate as cli_impl
    from turngym.agents.policy import OpenAIPolicy, SamplingParams
    from turngym.errors import ConfigError

    class Resp:
        status_code = 400
        text = "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens."

    policy = OpenAIPolicy("http://127.0.0.1:9", tokenizer=None, model="m", stop_token_ids=[0])
    monkeypatch.setattr(policy._client, "post", lambda *a, **k: Resp())
    with pytest.raises(ConfigError, match="--max-context-tokens") as err:
        policy.generate([[1, 2, 3]], SamplingParams())
    assert "\n" not in str(err.value)
    assert "--max-context-tokens" in {a for o in cli_impl.build_parser("x", True)._actions for a in o.option_strings}


def test_tool_schema_error_has_single_punctuation():
    from turngym.errors import ToolError
    from turngym.tools import tool

    def f(x):
        return x

    with pytest.raises(ToolError) as err:
        tool(f)
    assert "!." not in str(err.value) and ".." not in str(err.value)
