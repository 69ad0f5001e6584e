"""The README's "define your own env and tool" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Define your own env and tool", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README lost its 'Define your own env and tool' python block"
    return match.group(1)


def test_readme_example_runs_and_solves_its_task():
    code = readme_example()
    assert len(code.strip().splitlines()) <= 45
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - the README is the project's own text
    info = ns["info"]
    results = info["tool_results"]
    assert [r.ok for r in results] == [True]
    env = ns["env"]
    gold = env.task.gold_answer
    assert results[0].output == gold and gold in ("paris", "lima")
    assert ns["terminated"] is False
    _msgs, reward, terminated, truncated, info = env.step(f"<answer>{gold}</answer>")
    assert terminated and not truncated
    assert info["success"] is True and reward == 1.0


def test_readme_two_agent_env_is_the_tested_example():
    """The README's multi-agent class is the one `examples/two_agent_env.py` defines (run by tests/multi)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Multi-agent experiments", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    example = (README.parent / "examples" / "two_agent_env.py").read_text(encoding="utf-8")
    start = block.index("COLOURS = (")
    cls = block[start: block.index('turngym.register("example/SpeakerListener-v0"')].strip()
    assert cls and cls in example
    assert len(block.strip().splitlines()) <= 45


def test_readme_example_truncates_at_its_max_turns():
    from turngym.envs.registration import registry

    registry.pop("my/Capital-v0", None)  # the example registers it; another test may have run it already
    ns: dict = {}
    exec(compile(readme_example(), str(README), "exec"), ns)  # noqa: S102 - the README is the project's own text
    env = ns["CapitalEnv"]()  # the class itself, not registered: the constructor's max_turns=3 holds
    env.reset(seed=0)
    ends = [env.step("<lookup>Spain</lookup>")[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
