"""Credit methods declare the signal providers and token features they need (`register_credit(..., signals=...,
token_features=...)`); `turngym.credit.signals.build_providers` builds exactly those from a `SignalContext`.

The first-wave declarations must build the providers the trainer's old if/elif built, same types, same order."""

from __future__ import annotations

import math

import pytest

from turngym.credit import CREDIT, CreditNeeds, credit_needs, register_credit
from turngym.credit import signals as sig
from turngym.credit.outcome import GRPOConfig, grpo
from turngym.errors import ConfigError
from turngym.trainers.learned import import_builtin
from turngym.types import Trajectory, Turn

import_builtin()  # the providers registered on the trainer side (LaRe's sandboxed 'lare_latent')

#: What `turngym.trainers.batch_signals.signal_providers` built per method before the declarations (its if/elif).
BEFORE = {
    "igpo": [sig.GoldProbeProvider],
    "a2tgpo": [sig.GoldProbeProvider],
    "matchtir": [sig.ToolMatchProvider],
    "siop": [sig.OutcomeClusterProvider, sig.SupportProvider],
    "slate": [sig.RuleStepJudgeProvider],
    "pure": [sig.RuleStepJudgeProvider, sig.RulePRMProvider],  # was the function trainers.common.rule_prm
}


def _scorer(contexts, continuations):
    return [[0.0] * len(c) for c in continuations]


def _tokenize(text: str):
    return [ord(ch) for ch in text], [(i, i + 1) for i in range(len(text))]


def ctx(method: str) -> sig.SignalContext:
    return sig.SignalContext(method=method, scorer=_scorer, tokenize=_tokenize, answer_prefix="<answer> ",
                             answer_suffix=" </answer>")


@pytest.mark.parametrize("method", CREDIT.names())
def test_declared_providers_match_the_old_trainer_table(method: str):
    providers = sig.build_providers(method, ctx(method))
    if method in BEFORE or not credit_needs(method).signals:  # the first wave's methods: the same types as before
        assert [type(p) for p in providers] == BEFORE.get(method, [])
    assert [p.name for p in providers] == list(credit_needs(method).signals)


@pytest.mark.parametrize("method", CREDIT.names())
def test_only_delta_declares_a_token_feature(method: str):
    assert credit_needs(method).token_features == (("hidden",) if method == "delta" else ())


@pytest.mark.parametrize("cls", [sig.GoldProbeProvider, sig.SupportProvider])
def test_probe_providers_get_the_context_scorer_and_answer_template(cls):
    method = "a2tgpo" if cls is sig.GoldProbeProvider else "siop"
    p = next(p for p in sig.build_providers(method, ctx(method)) if isinstance(p, cls))
    assert p.scorer is _scorer
    assert (p.pseudo.tokenize, p.pseudo.prefix, p.pseudo.suffix) == (_tokenize, "<answer> ", " </answer>")


def test_probe_provider_without_a_scorer_names_the_missing_field():
    with pytest.raises(ConfigError, match=r"gold_probe.*'igpo'.*SignalContext\.scorer"):
        sig.build_providers("igpo", sig.SignalContext(method="igpo", tokenize=_tokenize))


def test_rule_prm_copies_the_judge_action_score():
    t = Trajectory(group_id="g", prompt_ids=[1], turns=[Turn(action_ids=[2], signals={"judge_action": -1.0}),
                                                        Turn(action_ids=[3])])
    sig.RulePRMProvider()([t])
    assert t.turns[0].signals["prm"] == -1.0 and math.isnan(t.turns[1].signals["prm"])


def fresh():
    """A new method function (`register_credit` sets attributes on the function it registers)."""

    def method(batch, cfg):
        return grpo(batch, cfg)

    return method


def test_unknown_declared_provider_lists_the_registered_ones(scratch):
    register_credit("test-needs-unknown", GRPOConfig, signals=("no_such_provider",))(fresh())
    scratch.append((CREDIT, "test-needs-unknown"))
    with pytest.raises(ConfigError, match=r"declares signal provider 'no_such_provider'.*Known: .*gold_probe"):
        sig.build_providers("test-needs-unknown", ctx("test-needs-unknown"))
    register_credit("test-needs-unknown-feature", GRPOConfig, token_features=("no_such_feature",))(fresh())
    scratch.append((CREDIT, "test-needs-unknown-feature"))
    with pytest.raises(ConfigError, match=r"declares token feature 'no_such_feature'"):
        sig.build_token_features("test-needs-unknown-feature", ctx("x"), batch=None)


def test_register_credit_without_declarations_needs_nothing(scratch):
    register_credit("test-needs-none", GRPOConfig)(fresh())
    scratch.append((CREDIT, "test-needs-none"))
    assert credit_needs("test-needs-none") == CreditNeeds()
    assert sig.build_providers("test-needs-none", sig.SignalContext()) == []
    assert sig.build_token_features("test-needs-none", sig.SignalContext(), batch=None) == {}


def test_a_bare_string_declaration_is_rejected():
    with pytest.raises(TypeError, match="tuple of names"):
        register_credit("test-needs-str", GRPOConfig, signals="gold_probe")
    assert "test-needs-str" not in CREDIT


def test_providers_are_built_in_declared_order(scratch):
    calls = []
    for name in ("test_second", "test_first"):
        @sig.register_signal_provider(name)
        def factory(c, name=name):
            calls.append((name, c.method))
            return sig.RulePRMProvider(signal=name)

        scratch.append((sig.SIGNAL_PROVIDERS, name))
    register_credit("test-needs-order", GRPOConfig, signals=("test_first", "test_second"))(fresh())
    scratch.append((CREDIT, "test-needs-order"))
    ps = sig.build_providers("test-needs-order", ctx("test-needs-order"))
    assert [p.signal for p in ps] == ["test_first", "test_second"]
    assert calls == [("test_first", "test-needs-order"), ("test_second", "test-needs-order")]
