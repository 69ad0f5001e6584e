"""`TrainConfig.SECTIONS`: the flat fields grouped into sections (env, model, algorithm, critic, multi, dapo,
sampling, scale, sft, eval, run) that are also prefixes on the command line and in YAML; the flat names keep working
and every preset resolves exactly as before."""

from __future__ import annotations

import dataclasses

import pytest

from turngym.config import dump_yaml, from_dict
from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig, preset_names, resolve_train_config


def test_every_field_is_in_exactly_one_section_in_class_order():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    grouped = [f for _, fields in TrainConfig.SECTIONS.values() for f in fields]
    assert grouped == names  # one section per field, the class's own order (docs read top to bottom)
    assert set(TrainConfig.SECTIONS) == {"env", "model", "algorithm", "critic", "multi", "dapo", "sampling", "scale",
                                         "sft", "eval", "run"}


@pytest.mark.parametrize(("nested", "flat"), [
    ("sampling.temperature=0.7", "temperature=0.7"),
    ("sft.steps=3", "sft_steps=3"),
    ("sft.sft_lr=1e-3", "sft_lr=1e-3"),
    ("eval.tasks=5", "eval_tasks=5"),
    ("model.size=3m", "model_size=3m"),
    ("model.name=tiny", "model=tiny"),
    ("env.env_kwargs.hops=3", "env_kwargs.hops=3"),
    ("scale.rollout_worker_cpus=2", "rollout_worker_cpus=2"),
    ("run.report=false", "report=false"),
])
def test_section_keys_set_the_same_field_as_the_flat_key(nested, flat):
    assert resolve_train_config("grpo", [nested]) == resolve_train_config("grpo", [flat])


def test_yaml_sections_and_dotted_section_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("credit: grpo\nsampling:\n  temperature: 0.5\n  max_new_tokens: 32\nsft: {steps: 0}\n"
                    "model: tiny\neval.tasks: 7\n")
    cfg = resolve_train_config(str(path), [])
    assert (cfg.temperature, cfg.max_new_tokens, cfg.sft_steps, cfg.model, cfg.eval_tasks) == (0.5, 32, 0, "tiny", 7)
    assert cfg.section("sampling")["temperature"] == 0.5
    # the dump stays flat, and reads back the same
    dumped = load_yaml_text(dump_yaml(cfg))
    assert "sampling" not in dumped and from_dict(TrainConfig, dumped) == cfg


def load_yaml_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def test_misspelled_or_doubled_section_keys_are_refused():
    with pytest.raises(ConfigError, match=r"Did you mean sampling\.temperature"):
        resolve_train_config(None, ["sampling.temprature=1"])
    with pytest.raises(ConfigError, match="section 'sft'"):
        resolve_train_config(None, ["sft.temperature=1"])
    with pytest.raises(ConfigError, match="already sets"):
        from_dict(TrainConfig, {"temperature": 1.0, "sampling": {"temperature": 0.5}})
    with pytest.raises(ConfigError, match="config section"):
        TrainConfig().section("samplng")
    # dict aliases are not sections: credit.<option> still fills credit_overrides
    assert resolve_train_config(None, ["credit=a2tgpo", "credit.alpha=0.5"]).credit_overrides == {"alpha": 0.5}


@pytest.mark.parametrize("preset", preset_names())
def test_presets_resolve_as_flat_dumps(preset):
    cfg = resolve_train_config(preset, [], check_names=False)
    again = from_dict(TrainConfig, load_yaml_text(dump_yaml(cfg)))
    assert again == cfg


def test_sampler_options_are_checked_against_the_sampler_and_reach_it(monkeypatch):
    cfg = resolve_train_config("r3l", ["sampler.reflection=policy", "sampler.sft_trigger=release"])
    assert cfg.sampler == "reflect_retry" and cfg.sampler_options == {"reflection": "policy", "sft_trigger": "release"}
    with pytest.raises(ConfigError, match=r"Did you mean 'reflection'"):
        resolve_train_config("r3l", ["sampler.reflecton=policy"])
    with pytest.raises(ConfigError, match="takes no options"):
        resolve_train_config("grpo", ["sampler.reflection=policy"])
    with pytest.raises(ConfigError, match="max_staleness=0 dynamic_sampling=false"):
        resolve_train_config("r3l", ["max_staleness=1"])

    from turngym.agents import rollout as rollout_mod
    from turngym.trainers import policy_setup, sampling

    seen = {}

    def fake_collect(*args, sampler, sampler_kwargs=None, **kw):
        seen[sampler] = sampler_kwargs
        return [], None

    monkeypatch.setattr(rollout_mod, "collect_rollouts", fake_collect)
    setup = policy_setup.Setup(model=None, tokenizer=None, renderer=None, policy=object(), device=None, pad_id=0)
    sampling.rollout(cfg, setup, [1], 2)
    sampling.rollout(cfg, setup, [1], 1, sampler="group")  # evaluation plays plain episodes: no sampler options
    assert seen == {"reflect_retry": {"reflection": "policy", "sft_trigger": "release"}, "group": None}


def test_help_config_lists_the_signal_options_a_method_declares():
    from turngym.trainers.config import credit_help

    text = credit_help("oprl")
    assert "credit.alpha" in text and "signals.lr" in text and "signals.rescore_old" in text
    assert "signals." not in credit_help("grpo")
