"""LaRe's trainer-side pieces (wave-2 spec §6): the return-decomposition decoder (`turngym.trainers.lare_decoder`) and
the latent-reward code generation and sandboxed execution (`turngym.trainers.lare_code`).

* Decoder losses on the worked example §6.7 and the least-squares invariant §6.8; predict-then-train order, warm-up,
  buffer rules, seeding, checkpoint round trip (weights, Adam state, buffer, sampler) through a real checkpoint.
* Code generation with a scripted LLM callable (repair after a failing candidate, no passing function, shape (2,)
  rejected, merge of several candidates) and with the real loopback judge server + `OpenAIJudge`.
* The sandbox kills a function that loops forever; exec errors are counted and bounded.
* The accepted code is saved in the run directory and reused (resume).
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from tests.credit.credit_helpers import batch_of, make_traj
from tests.trainers.test_methods_train import TINY
from turngym.credit import assign_credit
from turngym.credit.signals import SIGNAL_PROVIDERS, SignalContext, build_providers
from turngym.errors import ConfigError, SignalError
from turngym.trainers import learned
from turngym.trainers.checkpoint import load_checkpoint, save_checkpoint
from turngym.trainers.config import check_signal_options
from turngym.trainers.lare_code import (
    CODE_FILE,
    RULE_CODE,
    RULE_FACTORS,
    LaReCodeGenConfig,
    LatentRewardCodeGen,
    LatentRewardProvider,
    TaskSpec,
    extract_code,
    make_lare_sandbox,
    run_latent_code,
)
from turngym.trainers.lare_decoder import (
    LaReDecoderConfig,
    LatentRewardDecoder,
    rd_loss,
    rrd_indices,
    rrd_loss,
)
from turngym.types import ToolCall, ToolResult, Trajectory, Turn

ATOL = 1e-4
Z1 = [[1.0, 0.0], [0.5, 1.0], [1.0, 1.0]]  # τ1, R = 1
Z2 = [[0.0, 1.0], [0.2, 0.4]]  # τ2, R = 0


def example_batch(outcomes=(1.0, 0.0)):
    trajs = [make_traj("g", len(z), outcome=o, signals={f"lare_z{d}": [row[d] for row in z] for d in range(2)})
             for z, o in zip((Z1, Z2), outcomes)]
    return batch_of(trajs)


def hand_decoder(**kw) -> LatentRewardDecoder:
    """Linear decoder f(z) = 0.5 z₁ − 0.25 z₂ + 0.1 (§6.7)."""
    dec = LatentRewardDecoder(LaReDecoderConfig(arch="linear", **kw), seed=0)
    dec._build(2)
    with torch.no_grad():
        dec.net.weight.copy_(torch.tensor([[0.5, -0.25]]))
        dec.net.bias.fill_(0.1)
    return dec


@pytest.fixture(scope="module")
def sandbox():
    with make_lare_sandbox() as sb:
        yield sb


# ============================================================================================ decoder losses


def padded_example():
    r_hat = torch.tensor([[0.6, 0.1, 0.35], [-0.15, 0.1, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return r_hat, mask, torch.tensor([1.0, 0.0], dtype=torch.float64)


def test_rd_losses_of_the_worked_example():
    r_hat, mask, ret = padded_example()
    assert float(rd_loss(r_hat, mask, ret, "mean")) == pytest.approx(0.000451, abs=1e-6)
    assert float(rd_loss(r_hat, mask, ret, "sum")) == pytest.approx(0.0025, abs=1e-6)


def test_rrd_losses_of_the_worked_example():
    r_hat, mask, ret = padded_example()
    idx = torch.tensor([[0, 2], [0, 1]])
    biased = float(rrd_loss(r_hat, mask, ret, idx))
    unbiased = float(rrd_loss(r_hat, mask, ret, idx, unbiased=True))
    assert biased == pytest.approx(0.010347, abs=1e-6)
    assert biased - unbiased == pytest.approx(0.002604, abs=1e-6)
    assert unbiased == pytest.approx(0.007743, abs=1e-6)


def test_rrd_loss_matches_a_loop_reference():
    g = torch.Generator().manual_seed(3)
    lens = torch.tensor([1, 4, 2, 7])
    mask = torch.arange(7)[None, :] < lens[:, None]
    r_hat = torch.where(mask, torch.randn(4, 7, generator=g, dtype=torch.float64), 0.0)
    ret = torch.randn(4, generator=g, dtype=torch.float64)
    idx = rrd_indices(lens, 3, g)
    ref_sq, ref_var = 0.0, 0.0
    for i in range(4):
        sel = [float(r_hat[i, j]) for j in idx[i].tolist()]
        mu = sum(sel) / 3
        ref_sq += (mu - float(ret[i]) / int(lens[i])) ** 2 / 4
        var = sum((s - mu) ** 2 for s in sel) / 2
        ref_var += (1 - 3 / int(lens[i])) / 3 * var / 4
    assert float(rrd_loss(r_hat, mask, ret, idx)) == pytest.approx(ref_sq, abs=1e-12)
    assert float(rrd_loss(r_hat, mask, ret, idx, unbiased=True)) == pytest.approx(ref_sq - ref_var, abs=1e-12)


def test_rrd_samples_without_replacement_unless_k_exceeds_t():
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([5, 3, 1, 8])
    for _ in range(20):
        idx = rrd_indices(lens, 4, g)
        assert idx.shape == (4, 4)
        for i, t in enumerate(lens.tolist()):
            row = idx[i].tolist()
            assert all(0 <= j < t for j in row)
            if t >= 4:
                assert len(set(row)) == 4  # no repeats
    assert rrd_indices(torch.tensor([1]), 3, g).tolist() == [[0, 0, 0]]


def test_component_predicts_the_worked_example_rewards_and_losses():
    b = example_batch()
    dec = hand_decoder()
    z = torch.stack([b.turn_signals["lare_z0"], b.turn_signals["lare_z1"]], -1)
    r = dec.predict(z)
    assert r[0].tolist() == pytest.approx([0.6, 0.1, 0.35], abs=1e-6)
    assert r[1, :2].tolist() == pytest.approx([-0.15, 0.1], abs=1e-6)
    dec.add(z, b.turn_mask, b.outcome)
    zp, mask, ret = dec._pad()
    assert float(dec.loss(zp, mask, ret).detach()) == pytest.approx(0.0025, abs=1e-6)
    assert float(hand_decoder(rd_form="mean").loss(zp, mask, ret).detach()) == pytest.approx(0.000451, abs=1e-6)


def test_predict_then_train_order_warmup_and_the_credit():
    b = example_batch()
    dec = hand_decoder()
    assert dec.before_credit(b, step=0) == {"warmup": 1.0}  # never trained: the credit falls back to the outcome
    assert "lare_reward" not in b.turn_signals
    assert assign_credit("lare", b).diagnostics["lare_fallback"] == 1.0
    dec.updates = 1  # as if trained once: the hand-set weights are used as they are
    m = dec.before_credit(b, step=0)
    assert m["warmup"] == 0.0
    assert b.turn_signals["lare_reward"][0].tolist() == pytest.approx([0.6, 0.1, 0.35], abs=1e-6)
    assert torch.isnan(b.turn_signals["lare_reward"][1, 2])
    out = assign_credit("lare", b)  # §6.7 advantages from the decoded rewards
    assert out.turn_advantages[0].tolist() == pytest.approx([1.486626, 0.061943, 0.495542], abs=ATOL)
    w_before = dec.net.weight.detach().clone()
    m = dec.after_credit(b, out, step=0)
    assert m["added"] == 2.0 and m["buffer"] == 2.0 and m["loss"] == pytest.approx(0.0025, abs=1e-6)
    assert not torch.equal(w_before, dec.net.weight)  # trained after predicting

    late = hand_decoder(warmup_steps=3)
    late.updates = 1
    b2 = example_batch()
    assert late.before_credit(b2, step=2) == {"warmup": 1.0} and "lare_reward" not in b2.turn_signals
    assert late.before_credit(b2, step=3)["warmup"] == 0.0 and "lare_reward" in b2.turn_signals


def test_buffer_leaves_out_rows_without_a_target_and_is_bounded():
    dec = LatentRewardDecoder(LaReDecoderConfig(buffer_trajectories=3), seed=0)
    trajs = [make_traj("g", 2, outcome=1.0, signals={"lare_z0": [1, 2]}),
             make_traj("g", 2, outcome=float("nan"), signals={"lare_z0": [3, 4]}),
             make_traj("g", 1, outcome=0.0, answered=False, signals={"lare_z0": [5]}),
             make_traj("g", 1, outcome=0.5, signals={"lare_z0": [6]})]
    b = batch_of(trajs)
    z = b.turn_signals["lare_z0"][..., None]
    assert dec.add(z, b.turn_mask, b.outcome, b.has_answer) == 2
    assert dec.buffer_r == [1.0, 0.5] and [x.flatten().tolist() for x in dec.buffer_z] == [[1.0, 2.0], [6.0]]
    dec.add(z, b.turn_mask, b.outcome, b.has_answer)
    assert dec.buffer_r == [0.5, 1.0, 0.5]  # oldest dropped


def test_missing_latents_and_direct_mode():
    dec = LatentRewardDecoder(seed=0)
    b = batch_of([make_traj("g", 2, outcome=1.0)])
    with pytest.raises(Exception, match="lare_latent"):
        dec.before_credit(b, 0)
    direct = batch_of([make_traj("g", 2, outcome=1.0, signals={"lare_reward": [0.2, 0.3]})])
    assert dec.before_credit(direct, 0) == {"direct": 1.0} and dec.after_credit(direct, None, 0) == {}
    assert direct.turn_signals["lare_reward"][0].tolist() == pytest.approx([0.2, 0.3])


def test_least_squares_invariant_with_a_linear_decoder():
    """§6.8: sum-form RD with a linear decoder = least squares on features [Σ_k z_k, T]."""
    zs = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 1.0]]]
    rets = [1.0, 0.5, 0.2, 1.4]
    feats = torch.tensor([[*torch.tensor(z).sum(0).tolist(), len(z)] for z in zs], dtype=torch.float64)
    sol = torch.linalg.lstsq(feats, torch.tensor(rets, dtype=torch.float64)[:, None]).solution.flatten()
    assert sol.tolist() == pytest.approx([0.833333, 0.033333, -0.15], abs=1e-6)
    trajs = [make_traj("g", len(z), outcome=r, signals={f"lare_z{d}": [row[d] for row in z] for d in range(2)})
             for z, r in zip(zs, rets)]
    b = batch_of(trajs)
    dec = LatentRewardDecoder(LaReDecoderConfig(arch="linear", lr=0.3, updates_per_step=600), seed=0)
    dec.after_credit(b, None, step=0)
    got = [*dec.net.weight.detach().flatten().tolist(), float(dec.net.bias.detach())]
    assert got == pytest.approx(sol.tolist(), abs=1e-5)


def test_decoder_is_deterministic_given_its_seed():
    def run(seed):
        dec = LatentRewardDecoder(LaReDecoderConfig(hidden=16, loss="rrd_unbiased", rrd_k=2, updates_per_step=3),
                                  seed=seed)
        dec.after_credit(example_batch(), None, 0)
        return torch.cat([p.detach().flatten() for p in dec.net.parameters()])

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_state_round_trips_through_a_real_checkpoint(tmp_path):
    cfg = LaReDecoderConfig(hidden=8, loss="rrd_unbiased", rrd_k=2, updates_per_step=2)
    a = LatentRewardDecoder(cfg, seed=1)
    a.after_credit(example_batch(), None, 0)
    state = learned.learned_state([a])
    path = save_checkpoint(tmp_path, 1, model=torch.nn.Linear(1, 1), components=state)
    loaded = load_checkpoint(path).components  # torch.load(weights_only=True)
    b = LatentRewardDecoder(cfg, seed=99)  # another seed: everything must come from the checkpoint
    learned.load_learned_state([b], loaded)
    assert b.updates == a.updates == 2 and b.buffer_r == a.buffer_r
    assert all(torch.equal(x, y) for x, y in zip(a.buffer_z, b.buffer_z))
    assert a.optimizer.state_dict()["state"][0]["step"] == b.optimizer.state_dict()["state"][0]["step"]
    for dec in (a, b):  # the same next step: weights, Adam moments and the rrd sampler all restored
        dec.after_credit(example_batch((0.5, 0.25)), None, 1)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(p, q)
    fresh = LatentRewardDecoder(cfg, seed=1)
    fresh.load_state_dict(LatentRewardDecoder(cfg).state_dict())  # never built: stays empty
    assert fresh.net is None and fresh.buffer_r == []


def test_registered_components_and_options():
    comps = learned.build_learned("lare", learned.LearnedContext(method="lare", options={"lr": 1e-3, "hidden": 8,
                                                                                        "n_candidates": 2}, seed=4))
    assert [c.name for c in comps] == ["lare_decoder"] and comps[0].cfg.hidden == 8 and comps[0].seed == 4
    assert SIGNAL_PROVIDERS["lare_latent"].config_cls is LaReCodeGenConfig
    assert check_signal_options("lare", {"lr": "1e-3", "n_candidates": "3", "direct": "false"}) == {
        "lr": 1e-3, "n_candidates": 3, "direct": False}
    with pytest.raises(ConfigError, match="n_candidates"):
        check_signal_options("lare", {"n_candidate": 3})
    with pytest.raises(ConfigError, match="hidden"):
        LaReDecoderConfig(hidden=0)


# ============================================================================================ code generation

GOOD = "def evaluation_func(observation, action):\n    return [[[float(len(a) > 3)] for a in action], " \
       "[[1.0] for _ in observation]]\n"
RAISES = "def evaluation_func(observation, action):\n    return [[[{}['missing']]]]\n"
FLAT = "def evaluation_func(observation, action):\n    return [[1.0 for _ in observation]]\n"
SPEC = TaskSpec(task="Answer questions with a search tool.", state_format="a str", action_format="a str",
                example_state="Question: who?", example_action="<search>who</search>")


def reply(code: str) -> str:
    return json.dumps({"Understand": "u", "Analyze": "a", "Functions": code})


class ScriptedLLM:
    """A judge callable answering the candidate / merge / repair requests from lists, recording every prompt."""

    def __init__(self, candidates, repairs=(), merged=None):
        self.candidates, self.repairs, self.merged = list(candidates), list(repairs), merged
        self.prompts: list[str] = []
        self.temperature = 0.7

    def __call__(self, prompts):
        self.prompts += list(prompts)
        out = []
        for p in prompts:
            if p.startswith("## Repair"):
                out.append(reply(self.repairs.pop(0)) if self.repairs else reply(RAISES))
            elif p.startswith("## Merge"):
                out.append(reply(self.merged))
            else:
                out.append(reply(self.candidates.pop(0)))
        return out


def test_failing_candidate_is_repaired_in_one_round(sandbox):
    llm = ScriptedLLM([RAISES], repairs=[GOOD])
    gen = LatentRewardCodeGen(llm, LaReCodeGenConfig(n_candidates=1), sandbox=sandbox).generate(SPEC)
    assert (gen.code, gen.n_factors, gen.repair_rounds, gen.source) == (GOOD, 2, 1, "llm")
    repair = [p for p in llm.prompts if p.startswith("## Repair")]
    assert len(repair) == 1 and "KeyError" in repair[0] and "'missing'" in repair[0]
    assert [d["kind"] for d in gen.dialogue] == ["candidate", "repair"]
    assert [d["temperature"] for d in gen.dialogue] == [1.0, 0.3] and llm.temperature == 0.7  # restored


def test_no_passing_function_after_five_repairs_is_a_signal_error(sandbox):
    llm = ScriptedLLM([RAISES])
    with pytest.raises(SignalError, match="5 repair round.*KeyError"):
        LatentRewardCodeGen(llm, LaReCodeGenConfig(n_candidates=1), sandbox=sandbox).generate(SPEC)
    assert sum(p.startswith("## Repair") for p in llm.prompts) == 5


def test_a_flat_factor_of_shape_2_is_rejected(sandbox):
    llm = ScriptedLLM([FLAT], repairs=[GOOD])
    gen = LatentRewardCodeGen(llm, LaReCodeGenConfig(n_candidates=1), sandbox=sandbox).generate(SPEC)
    assert gen.repair_rounds == 1
    assert "shape (2,), expected (2, 1)" in next(p for p in llm.prompts if p.startswith("## Repair"))


def test_several_candidates_are_merged(sandbox):
    llm = ScriptedLLM([GOOD, RAISES, "no code at all"], merged=GOOD)
    llm.candidates[2] = "def oops("  # a reply without evaluation_func
    gen = LatentRewardCodeGen(llm, LaReCodeGenConfig(n_candidates=3), sandbox=sandbox).generate(SPEC)
    assert gen.repair_rounds == 0 and [d["kind"] for d in gen.dialogue] == ["candidate"] * 3 + ["merge"]
    merge = llm.prompts[3]
    assert merge.startswith("## Merge") and "Candidate 3" in merge and GOOD.strip() in merge


def test_direct_mode_needs_one_factor(sandbox):
    one = "def evaluation_func(observation, action):\n    return [[[0.5] for _ in action]]\n"
    llm = ScriptedLLM([GOOD], repairs=[one])
    gen = LatentRewardCodeGen(llm, LaReCodeGenConfig(n_candidates=1, direct=True), sandbox=sandbox).generate(SPEC)
    assert gen.n_factors == 1 and gen.repair_rounds == 1 and gen.direct
    assert "exactly ONE factor" in llm.prompts[0]


def test_judge_failures_are_signal_errors(sandbox):
    def broken(prompts):
        raise RuntimeError("server down")

    with pytest.raises(SignalError, match="server down"):
        LatentRewardCodeGen(broken, LaReCodeGenConfig(n_candidates=1), sandbox=sandbox).generate(SPEC)
    with pytest.raises(SignalError, match="2 completions for 3"):
        LatentRewardCodeGen(lambda p: ["x", "y"], LaReCodeGenConfig(n_candidates=3), sandbox=sandbox).generate(SPEC)


def test_extract_code_reads_json_fences_and_bare_code():
    assert extract_code(reply(GOOD)) == GOOD
    raw = '{"Understand": "x", "Functions": "def evaluation_func(o, a):\n    return []"}'  # raw newline in JSON
    assert extract_code(raw).startswith("def evaluation_func(o, a):\n")
    assert extract_code("Here:\n```python\n" + GOOD + "```\nDone.") == GOOD
    assert extract_code(GOOD) == GOOD.strip()
    assert extract_code("I cannot help") is None


# ============================================================================================ sandbox


def test_sandbox_kills_a_function_that_loops_forever(sandbox):
    looping = "def evaluation_func(observation, action):\n    while True:\n        pass\n"
    res = run_latent_code(sandbox, looping, ["s", "s"], ["a", "a"], mode="probe", timeout_s=5, turn_timeout_s=0.2)
    assert "did not finish within 0.2 s" in res["error"]
    # a function that disables the per-turn alarm is killed by the sandbox's wall-clock limit
    stubborn = ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                "def evaluation_func(observation, action):\n    while True:\n        pass\n")
    t0 = time.monotonic()
    res = run_latent_code(sandbox, stubborn, ["s"], ["a"], mode="eval", n_factors=1, timeout_s=0.6)
    assert res["timed_out"] and "timed out" in res["call_error"] and time.monotonic() - t0 < 5


def test_generated_code_cannot_use_the_network_or_write_host_files(sandbox, tmp_path):
    target = tmp_path / "pwned"
    code = ("import socket, os\n"
            "def evaluation_func(observation, action):\n"
            "    try:\n        socket.create_connection(('1.1.1.1', 80), timeout=0.5); net = 1.0\n"
            "    except OSError:\n        net = 0.0\n"
            f"    try:\n        open({str(target)!r}, 'w').write('x'); wrote = 1.0\n"
            "    except OSError:\n        wrote = 0.0\n"
            "    return [[[net] for _ in action], [[wrote] for _ in action]]\n")
    res = run_latent_code(sandbox, code, ["s"], ["a"], mode="eval", n_factors=2, timeout_s=10)
    assert res["z"] == [[0.0, 0.0]] and not target.exists()


# ============================================================================================ the provider


def hop_traj(group="g", outcome=1.0, answered=True, bad_call=False) -> Trajectory:
    t0 = Turn(action_text="<search>capital of France</search>", tool_calls=[ToolCall("search", {"q": "x"})],
              tool_results=[ToolResult("search", not bad_call, "Paris is the capital.", error="boom")],
              obs_messages=[{"role": "tool", "content": "Paris is the capital."}],
              info={"parse_errors": [], "tool_errors": int(bad_call)})
    t1 = Turn(action_text="<answer>Paris</answer>" if answered else "hmm", info={"parse_errors": []})
    return Trajectory(group_id=group, prompt_messages=[{"role": "system", "content": "Use <search>."},
                                                       {"role": "user", "content": "Capital of France?"}],
                      turns=[t0, t1], outcome=outcome, final_answer="Paris" if answered else None,
                      meta={"gold_calls": [{"name": "search", "arguments": {"query": "capital of France"}}]},
                      env_id="search/HopQA-v0")


def test_rule_stand_in_writes_the_factors_in_one_sandbox_call(tmp_path, sandbox):
    calls = []

    class Counting:
        kind = sandbox.kind

        def run(self, code, *, timeout_s):
            calls.append(code)
            return sandbox.run(code, timeout_s=timeout_s)

    p = LatentRewardProvider(run_dir=tmp_path, sandbox=Counting())
    trajs = [hop_traj(), hop_traj(bad_call=True), hop_traj(answered=False)]
    p(trajs)
    assert p.source == "rule" and len(calls) == 2  # the probe of the rule code, then one call for all 6 turns
    p(trajs)
    assert len(calls) == 3  # one call per batch from then on
    z = [[t.turns[k].signals[f"lare_z{d}"] for d in range(len(RULE_FACTORS))] for t in trajs for k in range(2)]
    assert z == [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 0, 0, 1], [0, 0, 1, 0, 0], [1, 1, 0, 0, 0], [0] * 5]
    assert all(t.meta["prompt_signals"]["lare_llm"] == 0.0 for t in trajs)
    saved = json.loads((tmp_path / CODE_FILE).with_suffix(".json").read_text())
    assert (tmp_path / CODE_FILE).read_text() == RULE_CODE and saved["factor_names"] == list(RULE_FACTORS)
    assert saved["source"] == "rule" and saved["sandbox"] == sandbox.kind


def test_exec_errors_are_zeroed_counted_and_bounded(sandbox):
    code = ("def evaluation_func(observation, action):\n"
            "    if 'answer' in action[0]:\n        raise ValueError('no')\n"
            "    return [[[1.0] for _ in action]]\n")
    gen_llm = ScriptedLLM([code])
    trajs = [hop_traj(), hop_traj()]
    with pytest.raises(SignalError, match="2 of 4 turns.*ValueError"):
        LatentRewardProvider(LaReCodeGenConfig(n_candidates=1), judge=gen_llm, sandbox=sandbox)(trajs)
    p = LatentRewardProvider(LaReCodeGenConfig(n_candidates=1, max_exec_error_rate=0.5),
                             judge=ScriptedLLM([code]), sandbox=sandbox)
    p(trajs)
    assert p.exec_errors == 2 and [t.turns[1].signals["lare_z0"] for t in trajs] == [0.0, 0.0]
    assert [t.turns[k].signals["lare_exec_error"] for t in trajs for k in range(2)] == [0.0, 1.0, 0.0, 1.0]
    assert [t.turns[0].signals["lare_z0"] for t in trajs] == [1.0, 1.0]


def test_generated_code_is_saved_and_reused_on_resume(tmp_path, sandbox):
    llm = ScriptedLLM([RAISES], repairs=[GOOD])
    p = LatentRewardProvider(LaReCodeGenConfig(n_candidates=1), judge=llm, run_dir=tmp_path, sandbox=sandbox)
    first = [hop_traj()]
    p(first)
    assert (tmp_path / CODE_FILE).read_text() == GOOD
    saved = json.loads((tmp_path / CODE_FILE).with_suffix(".json").read_text())
    assert saved["n_factors"] == 2 and saved["repair_rounds"] == 1 and len(saved["dialogue"]) == 2

    def no_llm(prompts):
        raise AssertionError("the saved code must be reused")

    again = [hop_traj()]
    LatentRewardProvider(LaReCodeGenConfig(n_candidates=1), judge=no_llm, run_dir=tmp_path, sandbox=sandbox)(again)
    assert [u.signals for u in again[0].turns] == [u.signals for u in first[0].turns]
    with pytest.raises(ConfigError, match="delete"):  # the run was made with the LLM: no silent switch to rules
        LatentRewardProvider(run_dir=tmp_path, sandbox=sandbox)([hop_traj()])


def test_factory_uses_the_rule_stand_in_without_a_judge(tmp_path):
    (p,) = build_providers("lare", SignalContext(method="lare", run_dir=tmp_path))
    assert isinstance(p, LatentRewardProvider) and p.name == "lare_latent" and p.source == "rule"
    (q,) = build_providers("lare", SignalContext(method="lare", judge=ScriptedLLM([]),
                                                 signal_options={"n_candidates": 2, "lr": 1.0}))
    assert q.source == "llm" and q.cfg.n_candidates == 2
    with pytest.raises(ConfigError, match="judge_url"):
        build_providers("lare", SignalContext(method="lare", signal_options={"direct": True}))


def test_the_real_loopback_judge_writes_the_code(judge_server, tmp_path):
    from turngym.agents.judge import OpenAIJudge

    def respond(prompt: str) -> str:
        if prompt.startswith("## Merge"):
            return reply(GOOD)
        return reply(RAISES if "Candidate" not in prompt and not prompt.startswith("## Repair") else GOOD)

    url, policy = judge_server(respond)
    judge = OpenAIJudge(url, temperature=0.7, max_tokens=256)
    p = LatentRewardProvider(LaReCodeGenConfig(n_candidates=2), judge=judge, run_dir=tmp_path)
    trajs = [hop_traj(), hop_traj(outcome=0.0)]
    p(trajs)
    assert p.generated.repair_rounds == 0 and p.generated.n_factors == 2
    assert len(policy.prompts) == 3 and policy.prompts[2].startswith("## Merge")
    assert "Capital of France?" in policy.prompts[0] and "HopQA" in policy.prompts[0]
    assert (judge.temperature, judge.max_tokens) == (0.7, 256)
    assert [t.turns[0].signals["lare_z0"] for t in trajs] == [1.0, 1.0]
    assert (tmp_path / CODE_FILE).read_text() == GOOD
    assert all(t.meta["prompt_signals"]["lare_llm"] == 1.0 for t in trajs)


# ============================================================================================ trainer resume


@pytest.mark.slow
def test_resumed_run_continues_the_decoder_and_reuses_the_code(tmp_path, warm_model):
    """3 steps in one go == 2 steps, then --resume to 3: the same decoder weights, Adam state and buffer (the
    trainer's components.pt), and the saved latent-reward code is read back instead of regenerated."""
    from turngym.trainers.checkpoint import checkpoint_dirs
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train

    base = [o for o in TINY if not o.startswith("steps=")] + ["credit=lare", "algo=grpo", f"model={warm_model}",
                                                              "eval_tasks=1"]
    once, split = tmp_path / "once", tmp_path / "split"
    train(resolve_train_config("lare", [*base, "steps=3", f"run_dir={once}"]))
    train(resolve_train_config("lare", [*base, "steps=2", f"run_dir={split}"]))
    code = split / CODE_FILE
    code.write_text(code.read_text() + "# kept across the resume\n")  # a regenerated file would lose this line
    train(resolve_train_config("lare", [*base, "steps=3", f"run_dir={split}", "resume=true"]))
    assert code.read_text().endswith("# kept across the resume\n")
    a = load_checkpoint(checkpoint_dirs(once)[-1]).components["lare_decoder"]
    b = load_checkpoint(checkpoint_dirs(split)[-1]).components["lare_decoder"]
    assert a["updates"] == b["updates"] == 3 and len(a["buffer_z"]) == len(b["buffer_z"]) > 0
    assert torch.equal(a["buffer_r"], b["buffer_r"])
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values()))


def test_no_loss_is_reported_while_the_buffer_is_empty():
    dec = LatentRewardDecoder(LaReDecoderConfig(hidden=4), seed=0)
    b = batch_of([make_traj("g", 2, outcome=1.0, answered=False, signals={"lare_z0": [1, 0]})])
    m = dec.after_credit(b, None, 0)
    assert "loss" not in m and m["buffer"] == 0.0 and dec.updates == 0
    assert dec.before_credit(b, 1) == {"warmup": 1.0}  # still untrained: the credit keeps the outcome


def test_without_bwrap_generated_code_runs_with_the_network_cut(monkeypatch):
    import turngym.tools.sandbox as sandboxes
    from turngym.tools.sandbox.hostile import HostContext

    monkeypatch.setattr(sandboxes, "bwrap_available", lambda: False)  # the fallback, also where bwrap exists
    with HostContext() as ctx, make_lare_sandbox() as sb:
        assert sb.kind == "subprocess" and sb.network is False
        code = ("import socket\ndef evaluation_func(observation, action):\n    try:\n"
                f"        socket.create_connection(('127.0.0.1', {ctx.port}), timeout=0.5); net = 1.0\n"
                "    except OSError:\n        net = 0.0\n    return [[[net] for _ in action]]\n")
        res = run_latent_code(sb, code, ["s"], ["a"], mode="eval", n_factors=1, timeout_s=10)
        assert res["z"] == [[0.0]] and ctx.connections == 0
