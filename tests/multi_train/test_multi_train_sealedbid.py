"""Simultaneous moves: the token-level multi-agent engine on multi/SealedBid-v0 (a PettingZoo ParallelEnv), its
counterfactual replays, and a tiny `algo=multi` training run on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import turngym
from turngym.agents.multi_rollout import (
    Actor,
    collect_multi_rollouts,
    counterfactual_outcomes,
    episodes_of,
    make_multi_env,
    multi_env_texts,
)
from turngym.agents.policy import Sample, SamplingParams, ScriptedPolicy
from turngym.agents.render import Renderer
from turngym.envs.multi.episodes import play_parallel
from turngym.errors import ConfigError

ENV_ID = "multi/SealedBid-v0"
B0, B1 = "bidder_0", "bidder_1"
ROUNDS = 3


@pytest.fixture(scope="module")
def bid_tok():
    from turngym.agents.tiny import build_tokenizer

    torch.set_num_threads(1)
    return build_tokenizer(multi_env_texts(ENV_ID, n_seeds=8), vocab_size=512)


class FixedBid:
    """A text policy that always bids ``bid`` (needs no env); records every batch of contexts it is given."""

    def __init__(self, tok, bid: int):
        self.text = f"<answer>{bid}</answer>"
        self.ids = list(tok.encode(self.text, add_special_tokens=False)) + [ScriptedPolicy(tok).eot_id]
        self.calls: list[list[list[int]]] = []

    def generate(self, contexts, params, **_):
        self.calls.append([list(c) for c in contexts])
        return [Sample(ids=list(self.ids), logprobs=None, text=self.text, finish_reason="stop") for _ in contexts]


class Recording(ScriptedPolicy):
    def __init__(self, tok):
        super().__init__(tok, noise=0.0)
        self.calls: list[list[list[int]]] = []

    def generate(self, contexts, params, *, envs=None):
        self.calls.append([list(c) for c in contexts])
        return super().generate(contexts, params, envs=envs)


def test_parallel_rollout_one_trajectory_per_bidder_with_the_envs_rewards(bid_tok):
    tok = bid_tok
    r = Renderer(tok)
    half, one = Recording(tok), FixedBid(tok, 1)
    seeds, G = [3, 4], 2
    trajs, stats = collect_multi_rollouts(ENV_ID, {B0: Actor(half, r), B1: Actor(one, r)}, seeds, G,
                                          params=SamplingParams(max_new_tokens=16), env_kwargs={"rounds": ROUNDS},
                                          return_stats=True)
    assert len(trajs) == len(seeds) * G * 2
    assert [t.agent_id for t in trajs[:4]] == [B0, B1, B0, B1]
    assert {t.group_id for t in trajs} == {f"{ENV_ID}:{s}:{a}" for s in seeds for a in (B0, B1)}  # (task, role)
    # simultaneous moves: one round = one batched call per policy over every episode; every bidder acts every round
    assert stats.rounds == ROUNDS
    assert [len(c) for c in half.calls] == [len(seeds) * G] * ROUNDS == [len(c) for c in one.calls]

    env = turngym.make(ENV_ID, rounds=ROUNDS)
    rng = np.random.default_rng(0)
    for ep in episodes_of(trajs):
        seed = ep[B0].seed
        ref = play_parallel(env, {B0: lambda a, _o: env.expert_action(a, rng, 0.0), B1: lambda a, _o: one.text},
                            seed=seed, env_id=ENV_ID)
        values = env.values
        for a in (B0, B1):
            t = ep[a]
            assert t.agent_id == a and t.meta["episode"] == ep[B0].meta["episode"] and t.stop_reason == "terminated"
            assert len(t.turns) == ROUNDS
            # the env's own rewards, turn by turn, and the outcome they sum to
            assert [u.reward for u in t.turns] == [u.reward for u in ref[a].turns]
            assert sum(u.reward for u in t.turns) == pytest.approx(t.outcome) and t.outcome == ref[a].outcome
            assert [u.action_text for u in t.turns] == [u.action_text for u in ref[a].turns]
            assert t.prompt_messages == ref[a].prompt_messages
            assert [u.obs_messages for u in t.turns] == [u.obs_messages for u in ref[a].turns]
            # each bidder is told only its own value
            other = B1 if a == B0 else B0
            seen = " ".join(m["content"] for m in t.prompt_messages)
            assert f"your value for the item is {values[a][0]}." in seen
            assert f"your value for the item is {values[other][0]}." not in seen or values[a][0] == values[other][0]
            # token layout: prompt, then per round the sampled ids (loss) and the round's result (no loss)
            ids, mask = t.token_ids(), t.action_mask()
            assert ids[: len(t.prompt_ids)] == t.prompt_ids
            assert sum(mask) == sum(len(u.action_ids) for u in t.turns)
            assert [ids[i] for i, m in enumerate(mask) if m] == [x for u in t.turns for x in u.action_ids]
            assert t.turns[-1].obs_ids == [] and "auctions are over" in t.turns[-1].obs_messages[-1]["content"]
        # hand-checked rewards: the half-value bidder wins every round where half its value beats a bid of 1
        total = sum(values[B0])
        for k, v in enumerate(values[B0]):
            if v // 2 > 1:
                assert ep[B0].turns[k].reward == pytest.approx((v - v // 2) / total)
                assert ep[B1].turns[k].reward == 0.0
    env.close()
    # the context a bidder acted on in the last round is its own trajectory up to that round (other bidders' bids
    # reach it only as the env's round results)
    t = trajs[0]
    last_ctx = half.calls[-1][0]
    assert last_ctx == t.token_ids()[: len(last_ctx)]
    assert len(last_ctx) == len(t.token_ids()) - len(t.turns[-1].action_ids) - len(t.turns[-1].obs_ids)


def test_aec_view_rolls_out_the_same_trajectories(bid_tok):
    tok = bid_tok
    r = Renderer(tok)
    out = {}
    for api in ("parallel", "aec"):
        actors = {B0: Actor(ScriptedPolicy(tok, noise=0.0), r), B1: Actor(FixedBid(tok, 7), r)}
        out[api] = collect_multi_rollouts(ENV_ID, actors, [0, 1], 1, params=SamplingParams(max_new_tokens=16),
                                          env_kwargs={"api": api, "rounds": ROUNDS}, return_stats=True)
    (par, s_par), (aec, s_aec) = out["parallel"], out["aec"]
    assert s_par.rounds == ROUNDS and s_aec.rounds == 2 * ROUNDS  # the AEC view plays one bidder at a time
    for p, a in zip(par, aec):
        assert (p.agent_id, p.group_id, p.outcome) == (a.agent_id, a.group_id, a.outcome)
        assert p.token_ids() == a.token_ids() and p.action_mask() == a.action_mask()
        assert [u.reward for u in p.turns] == [u.reward for u in a.turns]


def test_parallel_counterfactuals_replace_one_bidder_by_the_scripted_one(bid_tok):
    env = turngym.make(ENV_ID, rounds=ROUNDS)
    rng = np.random.default_rng(0)
    expert = lambda a, _o: env.expert_action(a, rng, 0.0)
    eps = [play_parallel(env, {B0: expert, B1: expert}, seed=2, env_id=ENV_ID),
           play_parallel(env, {B0: lambda a, _o: "<answer>0</answer>", B1: expert}, seed=2, env_id=ENV_ID)]
    env.close()
    cf = counterfactual_outcomes(ENV_ID, eps, B0, env_kwargs={"rounds": ROUNDS})
    # bidder_0 scripted: the first episode is replayed unchanged; in the second its zero bids become half bids
    assert cf == [eps[0][B0].outcome, eps[0][B0].outcome]
    assert eps[1][B0].outcome < eps[0][B0].outcome
    # bidder_1 scripted (it already was): its outcomes are reproduced exactly
    assert counterfactual_outcomes(ENV_ID, eps, B1, env_kwargs={"rounds": ROUNDS}) == [e[B1].outcome for e in eps]


def test_turn_based_game_through_the_parallel_api_is_refused():
    with pytest.raises(ConfigError, match="turn-based"):
        make_multi_env("multi/Negotiate-v0", {"api": "parallel"})
    assert make_multi_env(ENV_ID).possible_agents == [B0, B1]


def test_tiny_self_play_training_on_sealedbid_changes_the_policy(tmp_path, tiny_overrides, train_lines):
    from turngym.trainers.checkpoint import load_checkpoint, step_dir_name
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    run = tmp_path / "run"
    cfg = resolve_train_config("multi-sealedbid", tiny_overrides(run, cache_dir=tmp_path / "cache"))
    assert cfg.env_id == ENV_ID and cfg.algo == "multi" and cfg.multi_mode == "self_play"
    summary = train(cfg)
    assert summary["steps"] == 2
    lines = train_lines(run)
    assert [d["step"] for d in lines] == [1, 2]
    for d in lines:
        assert d["train/loss"] is not None and math.isfinite(d["train/loss"])
        assert d["multi/learner/trajectories"] == cfg.tasks_per_step * cfg.group_size  # one seat per step
    ckpts = run / "checkpoints"
    w0 = load_checkpoint(ckpts / step_dir_name(0)).model_state
    w2 = load_checkpoint(ckpts / step_dir_name(2)).model_state
    learner = [k for k in w0 if k.startswith("learners.0.")]
    assert learner and any(not torch.equal(w0[k], w2[k]) for k in learner)
    assert (run / "final" / "learner").is_dir()
    # the start snapshot: the warm-started learner, frozen, kept in every checkpoint
    start = {k.removeprefix("start.0."): v for k, v in w2.items() if k.startswith("start.0.")}
    assert start and all(torch.equal(v, w0[f"learners.0.{k}"]) for k, v in start.items())
    # evaluation against the scripted bidder and against the start, each win rate inside its 95% interval
    evals = [d for d in read_lines(run) if d["kind"] == "eval"]
    assert [d["step"] for d in evals] == [0, 2]
    for d in evals:
        for key in ("eval/success", "multi/eval/vs_start/success"):
            assert 0 <= d[f"{key.removesuffix('success')}success_lo95"] <= d[key] <= d[f"{key}_hi95"] <= 1, d
        assert d["multi/eval/vs_start/games"] == 2 * cfg.eval_tasks  # each seat against the start


def read_lines(run) -> list[dict]:
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.parametrize(("wins", "n", "want"), [(0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)),
                                                 (10, 10, (0.7225, 1.0)), (30, 128, (0.1694, 0.3148))])
def test_wilson_interval_matches_the_tables(wins, n, want):
    from turngym.trainers.multi import wilson_interval

    assert wilson_interval(wins, n) == pytest.approx(want, abs=1e-4)


def test_wilson_interval_of_no_games_is_nan():
    from turngym.trainers.multi import wilson_interval

    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize("preset", ["multi-sealedbid", "multi-negotiate"])
def test_gold_answer_credit_on_a_game_fails_before_any_work(tmp_path, preset):
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import check_credit_fits_env, train

    run = tmp_path / "run"
    cfg = resolve_train_config(preset, ["credit=a2tgpo", f"run_dir={run}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="gold_answer") as err:
        train(cfg)
    assert "credit=grpo" in str(err.value)
    assert not run.exists() and not (tmp_path / "cache").exists()
    # the same credit on the cooperative env, whose tasks carry a gold answer, passes the check
    check_credit_fits_env(resolve_train_config("multi-searchteam", ["credit=a2tgpo"]))
