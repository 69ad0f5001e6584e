"""``text/TextWorld-v0`` family: generation, playing, ground-truth values, bad input, turn budget.

Games go to a temporary cache; the pools are kept small (3 short games, 2 long ones) so that the file generates
about six games in all (about 2 s each).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import turngym.envs as E
from turngym.envs.checker import check_env
from turngym.errors import ConfigError, EnvError, MissingExtraError

needs_textworld = pytest.mark.skipif(
    importlib.util.find_spec("textworld") is None,
    reason="textworld is not installed (pip install 'turngym[textworld]')",
)
SHORT, LONG = "text/TextWorld-v0", "text/TextWorld-Long-v0"


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A fresh cache for this file (``$TURNGYM_CACHE``, so that envs `check_env` makes from the spec use it too)."""
    root = tmp_path_factory.mktemp("turngym-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TURNGYM_CACHE", str(root))
        yield root / "textworld"


@pytest.fixture(scope="module")
def short():
    env = E.make(SHORT, games=3)
    yield env
    env.close()


@pytest.fixture(scope="module")
def long():
    env = E.make(LONG, games=2)
    yield env
    env.close()


def play_expert(env, game, noise=0.0, seed=0):
    """Play one game with the expert; returns the reset info and the step infos."""
    _, info0 = env.reset(options={"game": game})
    rng = np.random.default_rng(seed)
    infos = []
    while True:
        _, reward, term, trunc, info = env.step(env.expert_action(rng, noise))
        infos.append((reward, term, trunc, info))
        if term or trunc:
            return info0, infos


def test_importing_turngym_does_not_import_textworld():
    code = (
        "import sys, turngym, turngym.envs as E; ids = E.list_envs(); "
        "assert 'text/TextWorld-v0' in ids and 'text/TextWorld-Long-v0' in ids, ids; "
        "assert 'textworld' not in sys.modules and 'turngym.envs.builtin.textworld' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "textworld", None)  # `import textworld` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'turngym\[textworld\]'"):
        E.make(SHORT)


@needs_textworld
def test_check_env_passes(short):
    report = check_env(short)
    assert all(v == "ok" for v in report.values()), report


@needs_textworld
@pytest.mark.parametrize(("env_name", "games"), [("short", 3), ("long", 2)])
def test_expert_wins_every_game_and_values_rise_on_decisive_turns(env_name, games, request):
    env = request.getfixturevalue(env_name)
    lengths = []
    for game in range(games):
        info0, steps = play_expert(env, game)
        task = info0["task"]
        walk = task["walkthrough"]
        lengths.append(len(walk))
        reward, term, trunc, last = steps[-1]
        assert (reward, term, trunc, last["success"], last["outcome"]) == (1.0, True, False, True, 1.0)
        assert len(steps) == len(walk) and task["decisive_turns"] == list(range(len(walk)))
        assert task["gold_answer"] == "; ".join(walk)
        assert [c["arguments"]["command"] for c in task["gold_calls"]] == walk[:-1]
        assert info0["value"] == 0.0 and info0["remaining_steps"] == len(walk)
        # the gold probe's answer after each move: the rest of the walkthrough (empty once the game is won)
        assert info0["gold_answer"] == task["gold_answer"]
        assert [i["gold_answer"] for *_, i in steps] == ["; ".join(walk[k + 1:]) for k in range(len(walk))]
        values = [info0["value"]] + [i["value"] for *_, i in steps]
        assert values == pytest.approx(task["gold_turn_values"])
        deltas = [i["value_delta"] for *_, i in steps]
        assert all(d >= 0 for d in deltas)
        assert all(deltas[k] > 0 for k in task["decisive_turns"])
        assert sum(deltas) == pytest.approx(1.0)
        # GiGPO anchors: the state each action was taken in is the state the previous step led to
        anchors = [info0["anchor"]] + [i["anchor"] for *_, i in steps]
        assert [i["anchor_obs"] for *_, i in steps] == anchors[:-1]
        assert all(a.startswith("room: ") for a in anchors) and "coin" in anchors[-1]
    if env_name == "long":
        assert min(lengths) >= 10 and env.max_turns >= 3 * max(lengths)
    else:
        assert max(lengths) <= 6 and env.max_turns >= 2 * max(lengths)


@needs_textworld
def test_generation_is_deterministic_per_seed(short, tmp_path):
    from turngym.envs.builtin.textworld_games import TextWorldGame, compiled_game, game_seed_of

    obs_a, info_a = short.reset(seed=11)
    obs_b, info_b = short.reset(seed=11)
    assert obs_a == obs_b and info_a["task"] == info_b["task"]
    seed = game_seed_of(0, info_a["task"]["game"])
    assert info_a["task"]["game_seed"] == seed
    fresh = compiled_game("tw-coin_collector", 5, seed, tmp_path)  # generated again, elsewhere
    assert fresh.is_file() and fresh.with_suffix(".json").is_file()
    assert sorted(p.name for p in fresh.parent.iterdir()) == [
        f"seed{seed}.json",
        f"seed{seed}.lock",
        f"seed{seed}.z8",
    ]
    game = TextWorldGame(fresh)
    try:
        game.reset()
        assert game.remaining == info_a["task"]["walkthrough"]
        assert obs_a[-1]["content"].startswith(game.intro())
    finally:
        game.close()
    tasks = {short.reset(options={"game": g})[1]["task"]["id"] for g in range(3)}
    assert len(tasks) == 3  # different games in the pool


@needs_textworld
def test_evaluation_seeds_play_games_training_never_sees(short):
    # before the split every seed drew from one pool of 32 games: all 100 evaluation tasks of the TextWorld-v0 study
    # were games its training had played
    from turngym.envs.core import TEST_SEED_START

    env = E.make(SHORT, games=3, test_games=2)
    try:
        def games(seeds, **options):
            out = set()
            for s in seeds:
                task = env.reset(seed=s, options=options or None)[1]["task"]
                out.add((task["split"], task["game_seed"], tuple(task["walkthrough"])))
            return out

        train, test = games(range(12)), games(range(TEST_SEED_START, TEST_SEED_START + 8))
        assert {s for s, _, _ in train} == {"train"} and {s for s, _, _ in test} == {"test"}
        assert len(train) == 3 and len(test) == 2  # every game of each pool, each pool its own games
        assert not {g for _, g, _ in train} & {g for _, g, _ in test}
        assert {g for _, g, _ in train} == {t["game_seed"] for t in (short.reset(options={"game": i})[1]["task"]
                                                                      for i in range(3))}  # the training pool as before
        assert games(range(TEST_SEED_START, TEST_SEED_START + 8), split="train") <= train  # the option picks a pool
        assert games([0], split="test", game=1) <= test
    finally:
        env.close()
    with pytest.raises(ConfigError, match="split must be one of"):
        E.make(SHORT, split="eval")


@needs_textworld
def test_concurrent_generation_waits_for_one_build(tmp_path, monkeypatch):
    import textworld.challenges

    from turngym.envs.builtin import textworld_games

    builds = []
    desc, make, args = textworld.challenges.CHALLENGES["tw-coin_collector"]
    counting = lambda *a, **k: builds.append(1) or make(*a, **k)
    monkeypatch.setitem(textworld.challenges.CHALLENGES, "tw-coin_collector", (desc, counting, args))
    paths = []
    threads = [
        threading.Thread(
            target=lambda: paths.append(textworld_games.compiled_game("tw-coin_collector", 2, 7, tmp_path))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].is_file()
    assert len(builds) == 1
    assert not [p for p in paths[0].parent.iterdir() if ".tmp" in p.name]


@needs_textworld
def test_bad_commands_are_data(short):
    short.reset(options={"game": 0})
    cases = {
        "<command> eat the sky </command>": "can't see",  # the game's own reply
        "<command> xyzzy </command>": "not a verb",
        "<command> 北 é </command>": "not a verb",
        "<command> restart </command>": "interpreter command",  # would restart behind TextWorld's back
        "<command> QUIT </command>": "interpreter command",
        "<command> tw-trace-actions </command>": "interpreter command",
        "<command>" + "x" * 500 + "</command>": "too long",
        "<command></command>": "Send one game command",
        "go north": "no command found",
        "<search> coin </search>": "unknown tool or tag <search>",
        "<command> look </command><command> look </command>": "too many tool calls",
    }
    for action, expected in cases.items():
        obs, reward, term, trunc, info = short.step(action)
        assert not term and not trunc and reward == 0.0
        text = "\n".join(m["content"] for m in obs)
        assert expected in text, (action, text)
        assert info["value"] == 0.0 and info["value_delta"] == 0.0
    res = short.step("<command> eat the sky </command>")[4]["tool_results"][0]
    assert res.ok and res.meta == {"admissible": False}


@needs_textworld
def test_control_characters_never_reach_the_interpreter(short, tmp_path, monkeypatch):
    """U+000E-U+0015 (and NUL) in a command crashed (SIGSEGV) or hung TextWorld's interpreter, and the trainer with
    it, or made it create a file named after the command in the working directory; such a command is refused as
    data, and the game goes on."""
    monkeypatch.chdir(tmp_path)
    for ch in [*map(chr, range(0x20)), "\x7f", "\x85", "\u200b", "\u2028", "\ufeff"]:
        if ch in " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028":  # whitespace: collapsed to one space
            continue
        for action in (f"<command> go{ch} </command>", f"<command> go {ch} east </command>"):
            short.reset(options={"game": 0})
            obs, reward, term, trunc, _info = short.step(action)
            text = "\n".join(m["content"] for m in obs)
            if ch == "\x00":  # the action parser removes NUL before the env sees the command
                assert "NUL characters; removed" in text, text
            else:
                assert "cannot read" in text and f"U+{ord(ch):04X}" in text, (repr(ch), text)
            assert not term and not trunc and reward == 0.0
            assert "-= " in short.step("<command> look </command>")[0][-1]["content"]  # the game still answers
    assert list(tmp_path.iterdir()) == []


def finish_with_the_expert(env):
    """Play the expert from the current state; True when it wins (TextWorld's state tracking is intact)."""
    rng = np.random.default_rng(0)
    for _ in range(env.max_turns):
        _, reward, term, trunc, _info = env.step(env.expert_action(rng, 0.0))
        if term or trunc:
            return term and reward == 1.0
    return False


@needs_textworld
def test_one_command_per_turn(short):
    """The game's parser runs "a. b" and "a then b" as several actions in one turn; TextWorld's state tracking did
    not follow (the walkthrough stayed where it was, its markup leaked into the state): such a command is refused."""
    for cmd in ("look. look", "look.look", "inventory . look", "look then look", "go east, then take coin"):
        short.reset(options={"game": 0})
        obs, reward, term, trunc, info = short.step(f"<command> {cmd} </command>")
        text = "\n".join(m["content"] for m in obs)
        assert "one command per turn" in text, (cmd, text)
        assert not term and not trunc and reward == 0.0 and info["value_delta"] == 0.0
        assert finish_with_the_expert(short), cmd
    short.reset(options={"game": 0})
    assert "-= " in short.step("<command> look. </command>")[0][-1]["content"]  # a closing full stop is fine


@needs_textworld
def test_interpreter_commands_anywhere_in_a_command_are_refused(short, tmp_path, monkeypatch):
    """Only the first word was checked: "me, script" and "me, save" wrote files into the working directory,
    "quit," and "me, restart" asked to end or restart the game behind TextWorld's back."""
    monkeypatch.chdir(tmp_path)
    for cmd in ("me, script", "me, save", "quit,", "me, restart", "yourself, restore", "long", "short",
                "look, tw-trace-actions"):
        short.reset(options={"game": 0})
        obs, reward, term, trunc, _info = short.step(f"<command> {cmd} </command>")
        assert "interpreter command" in "\n".join(m["content"] for m in obs), cmd
        assert not term and not trunc and reward == 0.0
        short.step("<command> yes </command>")  # the answer to "Are you sure you want to quit?", had it been asked
        assert finish_with_the_expert(short), cmd
    assert list(tmp_path.iterdir()) == []


@needs_textworld
def test_a_backslash_never_reaches_the_interpreter(short, tmp_path):
    """A command starting with a backslash is an interpreter escape: "\\n..." made it loop forever, writing its
    error to stdout (2 GB in 20 s). Run in a child with its output discarded, so a regression fails by timeout."""
    result = tmp_path / "result.txt"
    code = (
        "import sys, traceback\n"
        "try:\n"
        "    import turngym.envs as E\n"
        f"    env = E.make({SHORT!r}, games=3)\n"
        "    env.reset(options={'game': 0})\n"
        "    obs = env.step('<command> \\\\n)5 look </command>')[0]\n"
        "    out = ('backslash' in obs[-1]['content'], '-= ' in env.step('<command> look </command>')[0][-1]['content'])\n"
        "except Exception:\n"
        "    out = traceback.format_exc()\n"
        "open(sys.argv[1], 'w').write(str(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(result)], check=False, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0 and result.read_text() == "(True, True)", result.read_text()


@needs_textworld
def test_a_crashed_or_hung_interpreter_ends_the_episode_not_the_process(short, monkeypatch):
    """The interpreter runs in a host process: a crash (SIGSEGV) or a hang becomes an EnvError for the episode (the
    rollout engine ends it with stop_reason "env_error"); the next reset starts a new host and plays on."""
    from turngym.envs.builtin.textworld_games import TextWorldGame
    from turngym.envs.builtin.textworld_host import HOST, HostError

    short.reset(options={"game": 0})
    other = TextWorldGame(short.task.private["path"])  # a second game in the same host (as turn_value replays)
    other.reset()
    crashed = HOST.pid
    os.kill(crashed, signal.SIGSEGV)
    with pytest.raises(HostError, match="exited with code -11"):
        short.step("<command> look </command>")
    with pytest.raises(HostError, match="lost"):
        other.play("look")
    short.reset(options={"game": 0})
    assert HOST.pid not in (None, crashed) and finish_with_the_expert(short)
    other.reset()  # reopened in the new host
    assert other.play("look")[0] and not other.won
    other.close()

    short.reset(options={"game": 0})
    hung = HOST.pid
    os.kill(hung, signal.SIGSTOP)
    monkeypatch.setattr(HOST, "timeout_s", 1.0)
    with pytest.raises(HostError, match="did not answer within 1 s"):
        short.step("<command> look </command>")
    monkeypatch.undo()  # the usual timeout again: a loaded machine never makes the rest of the test flaky
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)  # stopped and reaped
    short.reset(options={"game": 0})
    assert finish_with_the_expert(short)


@needs_textworld
def test_truncation_at_the_turn_budget(short):
    short.reset(options={"game": 1})
    assert short.max_turns == 12
    for turn in range(1, 13):
        _, reward, term, trunc, info = short.step("<command> look </command>")
        assert not term and reward == 0.0
        assert trunc == (turn == 12)
    assert info["truncated_by"] == "max_turns" and info["success"] is False and info["outcome"] == 0.0
    with pytest.raises(EnvError, match="reset"):
        short.step("<command> look </command>")


@needs_textworld
def test_a_win_on_the_last_allowed_turn_terminates():
    env = E.make(SHORT, games=3, max_turns=5)
    try:
        _, info0 = env.reset(options={"game": 2})
        assert len(info0["task"]["walkthrough"]) == 5
        _, steps = play_expert(env, 2)
        reward, term, trunc, info = steps[-1]
        assert (len(steps), reward, term, trunc, info["success"]) == (5, 1.0, True, False, True)
        assert "truncated_by" not in info
    finally:
        env.close()


@needs_textworld
def test_noisy_expert_detours_and_values_stay_in_range(long):
    outcomes = []
    for seed in range(3):
        _, steps = play_expert(long, seed % 2, noise=0.5, seed=seed)
        assert all(0.0 <= i["value"] <= 1.0 for *_, i in steps)
        assert any(i["value_delta"] <= 0 for *_, i in steps)  # the noise costs turns
        outcomes.append(steps[-1][3]["outcome"])
    assert set(outcomes) <= {0.0, 1.0}


@needs_textworld
def test_answer_runs_a_plan(short):
    _, info = short.reset(options={"game": 0})
    _, reward, term, _, end = short.step(f"<answer> {info['task']['gold_answer']} </answer>")
    assert (reward, term, end["success"], end["value"]) == (1.0, True, True, 1.0)
    assert end["plan_commands"] == len(info["task"]["walkthrough"])
    _, info = short.reset(options={"game": 0})
    first = info["task"]["walkthrough"][0]
    _, reward, term, _, end = short.step(f"<answer> {first}, look </answer>")
    assert (reward, term, end["success"], end["plan_commands"]) == (0.0, True, False, 2)
    assert end["value"] == pytest.approx(1 / len(info["task"]["walkthrough"]))


@needs_textworld
def test_turn_value_replays_a_history(short):
    _, steps = play_expert(short, 1, noise=0.3, seed=4)
    history = short.history
    assistant_at = [i for i, m in enumerate(history) if m["role"] == "assistant"]
    for k, (*_, info) in enumerate(steps):
        upto = assistant_at[k + 1] if k + 1 < len(assistant_at) else len(history)
        assert short.turn_value(history[:upto]) == pytest.approx(info["value"])
    assert short.turn_value() == steps[-1][3]["value"]


@needs_textworld
def test_options_bounded_observations_and_hermes(cache):
    env = E.make(SHORT, games=3, cache_dir=cache, list_commands=False, max_obs_chars=60, parser="hermes")
    try:
        obs, _ = env.reset(options={"game": 0})
        assert "Valid commands" not in obs[-1]["content"] and "<command>" not in obs[0]["content"]
        env.reset(options={"game": 0})
        new, *_ = env.step(env.expert_action(np.random.default_rng(0), 0.0))
        assert (
            new[0]["role"] == "tool" and len(new[0]["content"]) <= 60 and new[0]["content"].endswith(" ...")
        )
        _, steps = play_expert(env, 0)
        assert steps[-1][3]["success"] is True
        with pytest.raises(ConfigError, match="game=7"):
            env.reset(options={"game": 7})
    finally:
        env.close()


@needs_textworld
@pytest.mark.slow
def test_treasure_hunter_games(tmp_path):
    env = E.make(SHORT, challenge="tw-treasure_hunter", level=15, games=2, cache_dir=tmp_path, max_turns=30)
    try:
        for game in range(2):
            info0, steps = play_expert(env, game)
            assert steps[-1][3]["success"] is True and len(steps) == len(info0["task"]["walkthrough"])
            assert all(i["value_delta"] > 0 for *_, i in steps)
    finally:
        env.close()


@needs_textworld
def test_a_game_won_by_moves_is_not_a_missing_answer_for_credit():
    """A TextWorld game ends by a move, not an answer: credit must see the outcome, not IGPO's "no answer" -2.

    Two scripted episodes of one game and group, one won in 5 moves, one cut by the 4-turn budget. Before
    `GroupBatch.scored` (an answer, or an episode its env ended), both got IGPO's format-fail outcome -2 and the
    same advantage: the won game was not credited at all."""
    from turngym.agents import Renderer, ScriptedPolicy, collect_rollouts
    from turngym.agents.tiny import build_tokenizer
    from turngym.credit import GroupBatch, assign_credit

    tok = build_tokenizer(["<command> go east </command> take coin", "You are in a room."], vocab_size=300)
    won, cut = (collect_rollouts(SHORT, ScriptedPolicy(tok, noise=0.0), Renderer(tok), seeds=[2], group_size=1,
                                 env_kwargs={"games": 3, "max_turns": budget})[0] for budget in (5, 4))
    assert (won.stop_reason, won.final_answer, won.outcome) == ("terminated", None, 1.0)
    assert cut.stop_reason != "terminated" and cut.outcome == 0.0
    cut.group_id = won.group_id
    for t in (won, cut):  # a flat probe: no information gain anywhere, the outcome turn alone carries credit
        t.meta["prompt_signals"] = {"probe_score": -1.0}
        for turn in t.turns[:-1]:
            turn.signals["probe_score"] = -1.0
    batch = GroupBatch.from_trajectories([won, cut], pad_id=tok.pad_token_id)
    assert batch.has_answer.tolist() == [False, False]  # no answer text (SIOP has nothing to cluster)
    assert batch.scored.tolist() == [True, False]  # but the won game has an outcome
    adv = assign_credit("igpo", batch).advantages
    last_won, last_cut = adv[0, batch.turn_last[0, 4]], adv[1, batch.turn_last[1, 3]]
    assert last_won > 0 > last_cut
