"""The side-by-side benchmark scripts: their pieces (fast) and a run of each at a tiny size (slow)."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from script_loader import load_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_rounds_of_rebuilds_the_sampler_contexts():
    from turngym.types import Trajectory, Turn

    overhead = load_script("overhead")
    a = Trajectory(group_id="g", prompt_ids=[1, 2], turns=[Turn(action_ids=[3, 4, 5], obs_ids=[6]),
                                                            Turn(action_ids=[7])])
    b = Trajectory(group_id="g", prompt_ids=[9], turns=[Turn(action_ids=[8])])
    rounds = overhead.rounds_of([a, b])
    assert rounds == [([[1, 2], [9]], 3), ([[1, 2, 3, 4, 5, 6]], 1)]
    # the context of round k plus turn k's action is a prefix of the packed sequence the trainer sees
    ctx, _ = rounds[1]
    assert a.token_ids()[: len(ctx[0]) + 1] == ctx[0] + [7]


def test_clock_measures_wall_and_cpu():
    import time

    overhead = load_script("overhead")
    with overhead.Clock() as c:
        time.sleep(0.05)
    assert c.wall >= 0.05
    assert c.cpu < c.wall  # sleeping costs no CPU


def test_floor_train_changes_the_weights_and_floor_generate_runs():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from turngym.types import Trajectory, Turn

    overhead = load_script("overhead")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trajs = [Trajectory(group_id="g", prompt_ids=[1, 2, 3], turns=[Turn(action_ids=[4, 5], obs_ids=[6]),
                                                                   Turn(action_ids=[7, 8])]),
             Trajectory(group_id="g", prompt_ids=[1], turns=[Turn(action_ids=[9])])]
    before = [p.detach().clone() for p in model.parameters()]
    clk = overhead.floor_train(model, opt, trajs, minibatch_size=2, pad_id=0)
    assert clk.wall > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert overhead.floor_generate(model, overhead.rounds_of(trajs), pad_id=0).wall > 0


def test_arith_env_passes_check_env_and_scores_answers():
    vs_trl = load_script("vs_trl")
    vs_trl.register_env()
    from turngym.envs import check_env, make

    env = make(vs_trl.ENV_ID)
    check_env(env)
    msgs, info = env.reset(seed=3)
    gold = info["task"]["gold_answer"]
    assert gold in {str(eval(msgs[-1]["content"].removeprefix("What is ").rstrip("?")))}
    assert env.step(f"<answer>{gold}</answer>")[1] == 1.0
    env.reset(seed=3)
    assert env.step(f"<answer>{int(gold) + 1}</answer>")[1] == 0.0
    env.reset(seed=3)
    _, r, term, trunc, _ = env.step("no answer")
    assert r == 0.0 and (term or trunc)  # one turn only


@pytest.mark.slow
def test_overhead_script_tiny(tmp_path, capsys):
    overhead = load_script("overhead")
    out = tmp_path / "o.json"
    res = overhead.main(["--tasks", "2", "--group", "2", "--max-new-tokens", "8", "--max-turns", "2",
                         "--repeats", "1", "--warmup", "0", "--cache-dir", str(tmp_path / "cache"),
                         "--json", str(out)])
    text = capsys.readouterr().out
    assert "Overhead vs floor" in text and "load average" in text
    row = res["rows"][0]
    assert row["trajectories"] == 4 and 1 <= row["rounds"] <= 2
    assert 0 < row["sampled_tokens"] <= row["floor_sampled_tokens"] <= 4 * 2 * 8
    assert row["trained_tokens"] > row["sampled_tokens"]
    assert res["floor_s"]["generate"] > 0 and res["floor_s"]["train"] > 0
    assert res["turngym_s"]["step"] >= res["turngym_s"]["rollout"] + res["turngym_s"]["update"]
    assert json.loads(out.read_text())["config"]["env"] == "search/HopQA-v0"


def test_heldout_overlap_counts_training_tasks_among_evaluation_tasks():
    heldout = load_script("heldout")
    before = heldout.overlap("search/HopQA-v0", {"topk": 1, "split": "all"}, 400, 50)
    after = heldout.overlap("search/HopQA-v0", {"topk": 1}, 400, 50)
    assert before["eval_seen"] > 25 and after["eval_seen"] == 0
    assert before["train_distinct"] <= 400 and after["eval_distinct"] <= 50


@pytest.mark.slow
def test_vs_trl_script_tiny(tmp_path, capsys):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    vs_trl = load_script("vs_trl")
    res = vs_trl.main(["--tasks", "2", "--group", "2", "--max-new-tokens", "8", "--steps", "2", "--warmup", "1",
                       "--no-tensorboard", "--cache-dir", str(tmp_path / "cache")])
    text = capsys.readouterr().out
    assert "turngym / TRL time per step" in text
    assert res["config"]["same_prompt_ids"] is True
    assert len(res["per_step"]["trl"]) == len(res["per_step"]["turngym"]) == 3
    lens = res["mean_completion_tokens"]
    assert 0 < lens["turngym"] <= 8 and 0 < lens["trl"] <= 8
    assert res["trl_s"]["step"] > 0 and res["turngym_s"]["step"] > 0 and res["ratio_median"] > 0
    assert "transformers.generate" in res["trl_profile_s"]


def test_parsers_script_tiny(capsys):
    parsers = load_script("parsers")
    assert parsers.main(["--sizes", "1024", "4096", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "| parser | family | 1 KB | 4 KB | last/first |" in text and "load average" in text
    rows = [line for line in text.splitlines() if line.startswith(("| hermes |", "| tags |"))]
    assert len(rows) == len(parsers.FAMILIES)
    assert all(len(build(4096)) == 4096 for build in parsers.FAMILIES.values())


def test_selfplay_interval_widens_with_the_seed_spread():
    selfplay = load_script("selfplay")
    lo, hi = selfplay.seed_game_bootstrap([0.5, 0.5, 0.5], games=2000)
    assert lo < 0.5 < hi and hi - lo < 0.04  # games only: about 2 x 1.96 x sqrt(0.25 / 6000)
    lo2, hi2 = selfplay.seed_game_bootstrap([0.3, 0.5, 0.7], games=2000)
    assert lo2 < 0.4 and hi2 > 0.6  # the seeds disagree: the interval covers them


def test_selfplay_paired_gain_is_zero_for_no_change_and_positive_for_a_real_one():
    selfplay = load_script("selfplay")
    lo, hi = selfplay.paired_gain([0.5, 0.6, 0.4], [0.5, 0.6, 0.4], games=128)
    assert lo < 0 < hi
    lo, hi = selfplay.paired_gain([0.8, 0.7, 0.9], [0.5, 0.4, 0.6], games=128)
    assert 0.15 < lo < 0.3 < hi < 0.45


@pytest.mark.slow
def test_selfplay_quick_grid_tables_both_opponents_and_reuses_finished_runs(tmp_path, capsys):
    selfplay = load_script("selfplay")
    args = ["--quick", "--presets", "multi-sealedbid", "--seeds", "2", "--set", "env_kwargs.rounds=2", "--set", "sft_steps=4",
            "--out", str(tmp_path / "out"), "--json", str(tmp_path / "t.json")]
    assert selfplay.main(args) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["multi-sealedbid"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        for col in ("vs scripted", "vs start"):
            v = r[col]
            assert len(v["per_seed"]) == 2 and v["games"] == 2 * selfplay.QUICK["eval_tasks"]
            assert 0 <= v["lo"] <= v["mean"] <= v["hi"] <= 1
            assert v["gain_lo"] <= v["gain"] <= v["gain_hi"] and len(v["payoff_per_seed"]) == 2
    assert rows[0]["vs start"]["gain"] == 0.0
    assert "| 2 |" in capsys.readouterr().out
    assert selfplay.main(args) == 0  # every run finished: reused, nothing trained
    assert "0 run(s) to train, 2 reused" in capsys.readouterr().err


@pytest.mark.slow
def test_multi_credit_quick_study_starts_every_arm_from_one_warm_start_and_reuses_finished_runs(tmp_path, capsys):
    multi_credit = load_script("multi_credit")
    arms = "grpo (self-play),team-difference (self-play)"
    args = ["--quick", "--study", "kuhnpoker", "--arms", arms, "--seeds", "1", "--set", "sft_steps=4",
            "--out", str(tmp_path / "out"), "--json", str(tmp_path / "t.json")]
    assert multi_credit.main(args) == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["arm"] for r in rows] == arms.split(",")
    games = 2 * multi_credit.QUICK["eval_tasks"]  # self-play: the learner plays each seat
    for r in rows:
        assert r["games"] == games and r["step"] == multi_credit.QUICK["steps"]
        assert 0 <= r["last_ci"][0] <= r["last"][0] <= r["last_ci"][1] <= 1
        assert r["gain_ci"][0] <= r["gain"] <= r["gain_ci"][1]
    assert "vs_ref" not in rows[0] and rows[1]["vs_ref"] == pytest.approx(rows[1]["last"][0] - rows[0]["last"][0])
    # both arms start from the one warm start (its step-0 checkpoint), so their step-0 evaluations agree
    assert rows[0]["first"] == rows[1]["first"]
    warm = tmp_path / "out" / "kuhnpoker" / "warm"
    assert [p.name for p in warm.iterdir()] == ["self_play"]
    cfg = yaml.safe_load((tmp_path / "out" / "kuhnpoker" / "team-difference-self-play" / "seed0" /
                          "config.yaml").read_text())
    assert cfg["multi_init"] == str(warm / "self_play" / "seed0" / "checkpoints" / "step-00000000")
    out = capsys.readouterr()
    assert "1 warm start(s) and 2 run(s) to train" in out.err and "| team-difference (self-play) |" in out.out
    assert multi_credit.main(args) == 0  # every run finished: reused, nothing trained
    assert "0 warm start(s) and 0 run(s) to train, 1 and 2 reused" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        multi_credit.main(["--study", "kuhnpoker", "--arms", "nope", "--out", str(tmp_path / "x")])


def test_searchteam_failures_sorts_episodes_by_what_went_wrong_first():
    from turngym.types import ToolCall, ToolResult, Trajectory, Turn

    failures = load_script("searchteam_failures")
    doc = "[1] Cyrex: The founder of Cyrex is Rosa Brenn."

    def searcher(*acts, result=doc):
        turns = []
        for a in acts:
            search = a.startswith("<search>")
            turns.append(Turn(action_text=a, tool_calls=[ToolCall("search", {"query": "founder of Cyrex"})] if search
                              else [], tool_results=[ToolResult(name="search", ok=True, output=result)] if search
                              else []))
        return Trajectory(group_id="g", prompt_ids=[1], turns=turns, meta={"gold_answer": "Rosa Brenn"})

    def answerer(won):
        return Trajectory(group_id="g", prompt_ids=[1], turns=[Turn(action_text="<answer> x </answer>")],
                          outcome=float(won))

    search = "<search> founder of Cyrex </search>"
    cases = {
        "no notes": (searcher(search, "<answer>"), None),
        "no search": (searcher("<answer> Bruno Amari </answer>"), answerer(False)),
        "result had it, notes wrong": (searcher(search, "<answer> The founder of Cyrex is Ines Arden. </answer>"),
                                       answerer(False)),
        "no result had it": (searcher(search, "<answer> Ines Arden </answer>", result="[1] Voxico: nothing"),
                             answerer(False)),
        "notes right, answer wrong": (searcher(search, "<answer> The founder of Cyrex is Rosa Brenn. </answer>"),
                                      answerer(False)),
        "success": (searcher(search, "<answer> rosa brenn </answer>"), answerer(True)),
        "success, not from the notes": (searcher("<answer> Ines Arden </answer>"), answerer(True)),
    }
    assert list(cases) == list(failures.CATEGORIES)
    for want, (s, a) in cases.items():
        assert failures.classify(s, a) == want
    assert failures.notes_of(cases["success"][0]) == "rosa brenn"


def test_rollout_benchmark_runs_the_decode_step_beside_the_eager_forward():
    """`benchmarks/rollout.py --decode step`: both arms sample the same tokens (the step changes speed only)."""
    rollout = load_script("rollout")
    r = rollout.run(2, 2, 2, 6, 2, 1, "1m", 8, None, None, decode="step")
    for mode in ("batched", "sequential"):
        assert r[f"{mode}_step"]["sampled_tokens"] == r[f"{mode}_new"]["sampled_tokens"] > 0
    assert r["decode_vs_new_batched_tok_per_s"] > 0
    assert "decode=step / eager" in rollout.markdown(r)


def test_hopqa_failures_sorts_real_expert_episodes(tmp_path, capsys):
    from turngym.cli import main as cli

    failures = load_script("hopqa_failures")
    out = tmp_path / "expert.jsonl"
    assert cli(["rollout", "--policy", "scripted", "--noise", "0", "search/HopQA-v0", "topk=1", "--n", "30",
                "--out", str(out), "--no-progress"]) == 0
    trajs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {failures.classify(t) for t in trajs} == {"success"}  # the expert searches every hop, then answers
    assert all(failures.searches(t) == t["meta"]["hops"] for t in trajs)
    two = next(t for t in trajs if t["meta"]["hops"] == 2)
    # the same episode without its second search: answered from memory if right, before the last hop if wrong
    short = dict(two, turns=[two["turns"][0], two["turns"][-1]])
    assert failures.classify(short) == "success, last hop not searched"
    assert failures.classify(dict(short, outcome=0.0, final_answer="Nobody")) == "answered before the last hop"
    shown = two["turns"][1]["tool_results"][0]["output"]
    src = two["meta"]["chain"][1]["src"]  # named in the second result (its subject), not the answer
    assert src in shown
    assert failures.classify(dict(two, outcome=0.0, final_answer=src)) == "every hop shown, wrong entity of the results"
    assert failures.classify(dict(two, outcome=0.0, final_answer="Nobody")) == \
        "every hop shown, a name not in the results"
    assert failures.classify(dict(two, outcome=0.0, final_answer="")) == "no answer"
    assert failures.main([str(out)]) == 0
    table = capsys.readouterr().out
    assert "| success | 1.00 | 1.00 |" in table and "| searches per episode | 1.00 | 2.00 |" in table
