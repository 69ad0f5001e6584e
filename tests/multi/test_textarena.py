"""multi/TextArena-v0: PettingZoo's api_test / seed_test on every claimed game, the games' own rules through the
adapter, the scripted policies, determinism without touching the global RNG, and the refusals."""

from __future__ import annotations

import random
import sys
import warnings

import numpy as np
import pytest
from pettingzoo.test import api_test, parallel_api_test, seed_test

import turngym
from turngym.envs.multi.episodes import play_aec
from turngym.errors import ConfigError, EnvError, MissingExtraError

ta_mod = pytest.importorskip("turngym.envs.multi.textarena")
pytest.importorskip("textarena")

ENV_ID = "multi/TextArena-v0"
P0, P1 = "player_0", "player_1"


def _make(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PettingZoo: "observation is not a NumPy array"
        return turngym.make(ENV_ID, **kw)


@pytest.fixture()
def env():
    e = _make()
    yield e
    e.close()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


# ------------------------------------------------------------------ PettingZoo's checkers, every claimed game
@pytest.mark.parametrize("game", ta_mod.OFFLINE_GAMES)
def test_textarena_api_test_and_seed_test_every_claimed_game(game):
    env = _make(game=game)
    api_test(env, num_cycles=100)
    env.close()
    seed_test(lambda: _make(game=game), num_cycles=30)


def test_textarena_parallel_view_and_hermes_parser():
    parallel_api_test(_make(game="ConnectFour-v0", api="parallel"), num_cycles=50)
    api_test(_make(parser="hermes"), num_cycles=50)


# ------------------------------------------------------------------ TicTacToe through the adapter
def _obs_text(env, agent):
    return "\n".join(m["content"] for m in env.observe(agent))


def test_textarena_observations_are_the_games_messages(env):
    env.reset(seed=0)
    first = env.observe(P0)
    assert first[0]["role"] == "system" and "You are Player 0 in Tic Tac Toe" in first[0]["content"]
    assert "player_0" in first[0]["content"] and "Available Moves" in first[1]["content"]
    env.step("[4]")
    obs1 = env.observe(P1)
    assert {"role": "user", "name": P0, "content": "[4]"} in obs1  # the other player's move, named
    assert "Player 0 placed their symbol (O) in cell 4." in "\n".join(m["content"] for m in obs1)
    assert all(not (m.get("name") == P0 and m["role"] == "user") for m in env.observe(P0))  # own echo dropped
    assert {"role": "assistant", "content": "[4]"} in env.history(P0)


def test_textarena_boards_last_shows_one_current_board_per_turn():
    full, last = _make(), _make(boards="last")
    for e in (full, last):
        e.reset(seed=4)
        for move in ("[4]", "[0]", "[8]"):
            e.step(move)
    assert _obs_text(full, P1).count("Current Board") == 2  # after player_1's own move and after player_0's
    assert _obs_text(last, P1).count("Current Board") == 1
    assert " X | 1 | 2 \n---+---+---\n 3 | O | 5 \n---+---+---\n 6 | 7 | O " in _obs_text(last, P1)
    for e in (full, last):  # the other messages are the same
        assert {"role": "user", "name": P0, "content": "[8]"} in e.observe(P1)
        assert "Player 1 placed their symbol (X) in cell 0." in _obs_text(e, P1)
        assert "Player 0 placed their symbol (O) in cell 8." in _obs_text(e, P1)
    with pytest.raises(ConfigError, match="boards"):
        _make(boards="some")


def test_textarena_tictactoe_win_pays_the_winner(env):
    env.reset(seed=1)
    for move in ("[4]", "[0]", "[2]", "[1]"):
        env.step(move)
        assert not any(env.terminations.values())
    env.step("[6]")  # O: 2-4-6 diagonal
    assert env.terminations == {P0: True, P1: True}
    assert env.rewards == {P0: 1.0, P1: 0.0}
    for a, won in ((P0, True), (P1, False)):
        info = env.infos[a]
        assert info["success"] is won and info["outcome"] == (1.0 if won else 0.0)
        assert info["textarena_reward"] == (1.0 if won else -1.0)
        assert info["winner"] == P0 and info["stop_reason"] == "game_over"
        assert "Game over" in env.observe(a)[-1]["content"]


def test_textarena_invalid_moves_follow_the_games_rules(env):
    env.reset(seed=2)
    env.step("[4]")
    env.step("[4]")  # occupied: TextArena warns and player 1 moves again
    assert env.agent_selection == P1 and env.infos[P1]["invalid"]
    assert "invalid move" in _obs_text(env, P1) and "already occupied" in _obs_text(env, P1)
    env.step("[0]")  # a valid move clears the warning
    assert env.agent_selection == P0 and not env.infos[P1]["invalid"]
    env.step("no brackets here")
    assert env.agent_selection == P0 and env.infos[P0]["invalid"]
    env.step("[9]")  # second invalid move in a row: player 0 loses
    assert env.terminations == {P0: True, P1: True}
    assert env.infos[P0]["lost_by_invalid_move"] and not env.infos[P1]["lost_by_invalid_move"]
    assert env.infos[P0]["outcome"] == 0.0 and env.infos[P1]["outcome"] == 1.0
    assert env.infos[P0]["episode_counts"]["invalid"] == 2 and env.infos[P1]["episode_counts"]["invalid"] == 1


def test_textarena_answer_tag_and_tool_calls(env):
    env.reset(seed=3)
    env.step("I take the centre. <answer>[4]</answer> not [0]")  # the answer's content is the move
    assert env.agent_selection == P1 and "cell 4" in _obs_text(env, P1)
    env.step("<search>best reply</search> [0]")  # no tools: a failed tool result, the text is still played
    info = env.infos[P1]
    assert info["tool_errors"] == 1 and not info["tool_results"][0].ok
    assert env.agent_selection == P0 and "cell 0" in _obs_text(env, P0)
    tool_msgs = [m for m in env.history(P1) if m["role"] == "tool"]
    assert tool_msgs and "no tools" in tool_msgs[0]["content"]


def test_textarena_max_cycles_is_a_draw():
    env = _make(max_cycles=2)
    env.reset(seed=0)
    for move in ("[0]", "[3]", "[1]"):
        env.step(move)
    assert env.truncations == {P0: True, P1: True}
    assert all(env.infos[a]["outcome"] == 0.5 and not env.infos[a]["success"] for a in (P0, P1))
    assert env.infos[P0]["stop_reason"] == "max_cycles"


def test_textarena_a_game_that_raises_ends_the_episode(env):
    env.reset(seed=0)
    game = env.unwrapped._game

    def broken_step(action):  # a real game object, with its step failing on this move
        raise IndexError("list index out of range")

    game.step = broken_step
    env.step("[4]")
    assert env.truncations == {P0: True, P1: True}
    info = env.infos[P0]
    assert info["stop_reason"] == "game_error" and "IndexError" in info["game_error"]
    assert env.infos[P0]["outcome"] == 0.0 and env.infos[P1]["outcome"] == 0.5


# ------------------------------------------------------------------ determinism, global RNG
def test_textarena_seeded_and_leaves_the_global_random_alone():
    random.seed(1234)
    before = random.getstate()
    a, b = _make(game="KuhnPoker-v0"), _make(game="KuhnPoker-v0")
    firsts = []
    for env in (a, b, a):
        env.reset(seed=7)
        firsts.append({ag: env.observe(ag) for ag in env.possible_agents})
    assert firsts[0] == firsts[1] == firsts[2]
    assert random.getstate() == before  # make, reset and the game's own random.seed() left it untouched
    a.reset(seed=8)
    assert {ag: a.observe(ag) for ag in a.possible_agents} != firsts[0]
    rng = np.random.default_rng(0)
    trajs = play_aec(a, lambda ag, _o: a.unwrapped.expert_action(ag, rng, 0.0), seed=9, env_id=ENV_ID)
    assert random.getstate() == before and all(t.turns for t in trajs.values())


# ------------------------------------------------------------------ scripted policies
def test_tictactoe_move_heuristic():
    rng = np.random.default_rng(0)
    e = ""
    assert ta_mod.tictactoe_move(["O", "O", e, "X", "X", e, e, e, e], "O", rng) == 2  # win beats block
    assert ta_mod.tictactoe_move(["O", "O", e, "X", e, e, e, e, e], "X", rng) == 2  # block
    assert ta_mod.tictactoe_move([e] * 9, "O", rng) == 4  # centre
    assert ta_mod.tictactoe_move([e, e, e, e, "O", e, e, e, e], "X", rng) in (0, 2, 6, 8)  # a corner
    assert ta_mod.tictactoe_move(["X", "O", "X", "X", "O", "O", "O", "X", e], "X", rng) == 8  # the last cell
    with pytest.raises(ValueError):
        ta_mod.tictactoe_move(["X"] * 9, "O", rng)


def _play_experts(env, seeds, noise, rng):
    u = env.unwrapped
    ends = []
    for seed in seeds:
        env.reset(seed=seed)
        invalid = 0
        for a in env.agent_iter():
            _obs, _r, term, trunc, _info = env.last()
            if term or trunc:
                env.step(None)
                continue
            env.step(u.expert_action(a, rng, noise))
            invalid += int(u.last_infos[a]["invalid"])
        ends.append((u.last_infos[P0], invalid))
    return ends


def test_tictactoe_scripted_players_draw_without_noise_and_beat_random(env):
    rng = np.random.default_rng(0)
    ends = _play_experts(env, range(10), 0.0, rng)
    assert all(info["winner"] is None and info["stop_reason"] == "game_over" and n == 0 for info, n in ends)
    u, wins = env.unwrapped, 0
    for seed in range(20):  # the heuristic (player_0) against uniformly random legal moves
        env.reset(seed=seed)
        for a in env.agent_iter():
            _obs, _r, term, trunc, _info = env.last()
            if term or trunc:
                env.step(None)
                continue
            moves = u._listed_moves(a)
            env.step(u.expert_action(a, rng, 0.0) if a == P0 else moves[int(rng.integers(len(moves)))])
        wins += u.last_infos[P0]["winner"] == P0
        assert u.last_infos[P0]["winner"] != P1
    assert wins >= 15


@pytest.mark.parametrize("family", ta_mod.LEGAL_MOVE_GAMES)
def test_legal_move_policies_play_only_legal_moves(family):
    game = next(g for g in ta_mod.OFFLINE_GAMES if ta_mod.family_of(g) == family)
    env = _make(game=game, max_cycles=200)
    ends = _play_experts(env, range(2), 0.0, np.random.default_rng(0))
    assert all(n == 0 and info["stop_reason"] == "game_over" for info, n in ends), ends


def test_games_without_a_scripted_policy_say_so():
    env = _make(game="ConnectFour-v0")
    env.reset(seed=0)
    with pytest.raises(EnvError, match="no scripted policy"):
        env.unwrapped.expert_action(P0, np.random.default_rng(0))


# ------------------------------------------------------------------ refusals
def test_unavailable_games_are_refused_before_any_download():
    from textarena.envs.registration import ENV_REGISTRY

    for family, reason in ta_mod.UNAVAILABLE_GAMES.items():
        game = next(g for g in ENV_REGISTRY if ta_mod.family_of(g) == family and not g.endswith(("-raw", "-train")))
        with pytest.raises(ConfigError, match="cannot run here") as err:
            _make(game=game)
        assert reason in str(err.value) and "TicTacToe-v0" in str(err.value)


def test_bad_game_ids_are_config_errors():
    with pytest.raises(ConfigError, match="TicTacToe-v0"):
        _make(game="TicTacToo-v0")  # did you mean
    with pytest.raises(ConfigError, match="plain id"):
        _make(game="TicTacToe-v0-raw")
    with pytest.raises(ConfigError, match="two players"):
        _make(game="Sudoku-v0")
    with pytest.raises(ConfigError, match="two players"):
        _make(game="ThreePlayerTicTacToe-v0")
    if sys.version_info < (3, 12):
        with pytest.raises(ConfigError, match="does not import"):
            _make(game="Chess-v0")
    with pytest.raises(ConfigError, match="bogus"):
        _make().reset(seed=0, options={"bogus": 1})


def test_untested_variant_warns():
    with pytest.warns(UserWarning, match="not among the games tested"):
        turngym.make(ENV_ID, game="ConnectFour-v0-large")


def test_missing_textarena_is_a_missing_extra_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "textarena", None)
    with pytest.raises(MissingExtraError, match=r"turngym\[textarena\]"):
        ta_mod.import_textarena()


def test_docs_example_runs():
    """The example of the TextArena section of docs/ecosystem.md."""
    import numpy as np

    import turngym

    env = turngym.make("multi/TextArena-v0", game="TicTacToe-v0")  # a pettingzoo.AECEnv
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for agent in env.agent_iter():
        obs, _reward, terminated, truncated, _info = env.last()  # obs: the game's messages since the agent's last move
        if terminated or truncated:
            env.step(None)
            continue
        # player_0 always plays the centre; player_1 is the scripted heuristic (win, block, centre, corner)
        env.step("[4]" if agent == "player_0" else env.unwrapped.expert_action(agent, rng))
    end = env.unwrapped.last_infos
    print(obs[-1]["content"])  # the last agent's end message: "Game over. cell 4 is ... Your TextArena reward: 1."
    print(end["player_0"]["reason"], {a: end[a]["outcome"] for a in env.possible_agents})
    assert end["player_0"]["reason"] == "cell 4 is already occupied."  # the second invalid move in a row loses
    assert {a: end[a]["outcome"] for a in env.possible_agents} == {"player_0": 0.0, "player_1": 1.0}


@pytest.mark.slow  # ~50 s of CPU: tokenizer, SFT warm start, two RL steps, three checkpoints
def test_kuhnpoker_preset_trains_through_the_multi_trainer(tmp_path):
    """Two self-play steps of the ``multi-kuhnpoker`` preset, shrunk: finite losses, only the learner's seat trained,
    the learner's weights moved, a per-seat evaluation against the scripted player."""
    import math

    import torch

    from turngym.trainers.checkpoint import load_checkpoint, step_dir_name
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    run = tmp_path / "run"
    small = {"steps": 2, "tasks_per_step": 2, "group_size": 4, "minibatch_size": 8, "sft_steps": 40,
             "sft_episodes": 16, "eval_tasks": 2, "eval_every": 0, "checkpoint_every": 1, "keep_checkpoints": 4,
             "lr": 1e-3, "tensorboard": "false", "progress": "false", "report": "false", "save_trajectories": 1,
             "run_dir": str(run), "cache_dir": str(tmp_path / "cache")}
    cfg = resolve_train_config("multi-kuhnpoker", [f"{k}={v}" for k, v in small.items()])
    assert cfg.env_kwargs == {"game": "KuhnPoker-v0", "max_cycles": 12} and cfg.multi_mode == "self_play"
    summary = train(cfg)
    assert 0.0 <= summary["success_before"] <= 1.0 and 0.0 <= summary["success_after"] <= 1.0
    import json

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    trains = [d for d in lines if d["kind"] == "train"]
    assert len(trains) == 2
    for d in trains:
        assert math.isfinite(d["train/loss"])
        assert 0 < d["multi/learner/trajectories"] <= 2 * 4  # one seat per step (a seat that never moved is dropped)
    evals = [d for d in lines if d["kind"] == "eval"]
    assert {"multi/eval/player_0/success", "multi/eval/player_1/success"} <= set(evals[-1])
    w0 = load_checkpoint(run / "checkpoints" / step_dir_name(0)).model_state
    w2 = load_checkpoint(run / "checkpoints" / step_dir_name(2)).model_state
    keys = [k for k in w0 if k.startswith("learners.0.")]
    assert keys and any(not torch.equal(w0[k], w2[k]) for k in keys)
