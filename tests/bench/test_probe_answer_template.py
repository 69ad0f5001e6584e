"""The probe providers built by the trainers (`turngym.trainers.batch_signals.signal_providers`) score the gold answer with
the token ids the policy writes when it answers in the env's format.

Regression: the gold probe used the template ``"<answer>" + gold + "</answer>"`` while HopQA's tags parser writes
``"<answer> gold </answer>"``; with a BPE tokenizer ``"Varton"`` and ``" Varton"`` are different ids, so the probe
scored a token sequence the policy never produces (its probability was ~0 whatever the context). SIOP's support used
IGPO's ``<think>`` template (``"\\n" + gold``), with the same mismatch."""

from __future__ import annotations

import pytest

from turngym.trainers import batch_signals


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


@pytest.mark.parametrize("credit,provider", [("a2tgpo", "gold_probe"), ("igpo", "gold_probe"),
                                             ("siop", "siop_support")])
def test_probe_scores_the_answer_tokens_the_policy_writes(tiny_setup, credit, provider):
    from turngym.agents.policy import SamplingParams, ScriptedPolicy
    from turngym.agents.rollout import collect_rollouts

    s, run_cfg = tiny_setup
    probe = next(p for p in batch_signals.signal_providers(run_cfg.replace(credit=credit), s) if p.name == provider)
    expert = collect_rollouts("search/HopQA-v0", ScriptedPolicy(s.tokenizer, noise=0.0, seed=0), s.renderer,
                              [3, 4, 5], 1, params=SamplingParams(max_new_tokens=64), env_kwargs=run_cfg.env_kwargs)
    for t in expert:
        assert t.final_answer == t.meta["gold_answer"]
        ids, a, b = probe.pseudo(t.meta["gold_answer"])
        assert b > a
        # the scored gold tokens are exactly the tokens of the answer in the policy's own answer action
        assert _contains(list(t.turns[-1].action_ids), ids[a:b]), (
            s.tokenizer.convert_ids_to_tokens(ids[a:b]), s.tokenizer.convert_ids_to_tokens(t.turns[-1].action_ids))


def test_answer_template_follows_the_env_parser():
    from turngym.trainers.config import TrainConfig

    assert batch_signals.answer_template(TrainConfig(env_id="search/HopQA-v0")) == ("<answer> ", " </answer>")  # tags
    assert batch_signals.answer_template(TrainConfig(env_id="tool/Calc-v0")) == ("<answer>", "</answer>")  # hermes
