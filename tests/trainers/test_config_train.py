"""TrainConfig: field docs, cross-field checks, presets, generated docs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from turngym.config import ConfigError, field_docs, field_types, from_dict, load_yaml, parse_value
from turngym.trainers.config import (
    TrainConfig,
    load_preset,
    preset_names,
    presets_dir,
    resolve_train_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_every_field_has_a_one_line_docstring():
    docs = field_docs(TrainConfig)
    missing = [k for k, v in docs.items() if not v]
    assert not missing, f"fields without a docstring: {missing}"
    assert dataclasses.fields(TrainConfig)  # flat and frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_no_preset_is_the_embedded_default_over_the_dataclass_defaults():
    cfg = resolve_train_config(None, check_names=False)
    assert cfg.env_id == "search/HopQA-v0" and cfg.credit == "grpo" and cfg.algo == "grpo"
    assert cfg.model == "tiny" and cfg.eval_tasks == 200 and cfg.env_kwargs == {"topk": 1, "worlds": 64}
    assert cfg.pretrain_steps > 0 and cfg.sft_steps > 0 and cfg.eval_temperature == 1.0
    base = TrainConfig()  # the generic defaults every other preset starts from: no env-specific kwargs
    assert base.env_kwargs == {} and base.pretrain_steps == 0
    assert resolve_train_config("default", check_names=False) == cfg


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["group_size=1"], ["group_size=1", "algo='grpo'", "group_size=2"]),
        (["minibatch_size=7"], ["16 * 8 = 128", "minibatch_size=7", "minibatch_size=4 or 8"]),
        (["minibatch_size=16", "grad_accum=3"], ["grad_accum=3", "grad_accum=2 or 4"]),
        (["lr=-0.1"], ["lr=-0.1", "> 0"]),
        (["lr=0"], ["lr=0.0"]),
        (["lr_decay=cosine", "lr_min_ratio=1.5"], ["lr_min_ratio=1.5", "[0, 1]"]),
        (["temperature=0"], ["temperature=0.0", "eval_temperature"]),
        (["max_new_tokens=900"], ["max_new_tokens=900", "max_traj_tokens=768"]),
        (["dual_clip_c=0.5"], ["dual_clip_c=0.5", "> 1"]),
        (["eps_low=1.5"], ["eps_low=1.5"]),
        (["credit=gae"], ["credit='gae'", "algo=ppo"]),
        (["kl_in_reward=true"], ["kl_coef"]),
        (["resume=true"], ["resume=true needs run_dir"]),
        (["expert_noise=2"], ["expert_noise=2.0"]),
        (["top_p=0"], ["top_p=0.0"]),
        (["overlong_buffer=800"], ["overlong_buffer=800", "max_traj_tokens=768"]),
        (["steps=-1"], ["steps=-1"]),
        (["rollout_workers=4"], ["rollout_backend=ray"]),
        (["max_staleness=-1"], ["max_staleness=-1", "max_staleness=0"]),
        (["max_staleness=1", "dynamic_sampling=true"], ["max_staleness=1", "dynamic_sampling=false"]),
        (["max_staleness=2", "algo=multi"], ["max_staleness=2", "algo='multi'", "max_staleness=0"]),
    ],
)
def test_cross_field_checks_state_values_and_fix(overrides, needles):
    with pytest.raises(ConfigError) as ei:
        resolve_train_config(None, overrides, check_names=False)
    msg = str(ei.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_valid_combinations_pass():
    cfg = resolve_train_config(None, ["algo=ppo", "credit=gae", "group_size=1", "tasks_per_step=16",
                                      "minibatch_size=8", "grad_accum=4"], check_names=False)
    assert cfg.batch_size == 16 and cfg.minibatch_size % cfg.grad_accum == 0
    cfg = resolve_train_config("async", ["algo=ppo", "credit=gae", "rollout_backend=ray", "rollout_workers=2"],
                               check_names=False)
    assert cfg.max_staleness == 1


def test_validate_names_uses_registries():
    pytest.importorskip("turngym.credit")
    with pytest.raises(ConfigError, match=r"Unknown credit method 'a2tgp'.*Did you mean 'a2tgpo'"):
        resolve_train_config(None, ["credit=a2tgp"])
    with pytest.raises(ConfigError, match=r"Unknown env id 'search/HopQA-v9'.*search/HopQA-v0"):
        resolve_train_config(None, ["env_id=search/HopQA-v9"])
    pytest.importorskip("turngym.agents.tiny")
    with pytest.raises(ConfigError, match=r"tiny model size '2m'"):
        resolve_train_config(None, ["model_size=2m"])


def test_expected_presets_exist_and_are_packaged():
    names = set(preset_names())
    for required in ("default", "grpo", "matchtir", "siop", "slate", "gigpo", "ppo-bad", "tempo", "calc", "pytask",
                     "smollm2-135m"):
        assert required in names
    assert presets_dir() == REPO / "turngym" / "configs"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"configs/*.yaml"' in pyproject  # package-data, so wheels carry them


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_builds_a_valid_config(name):
    raw = load_yaml(presets_dir() / f"{name}.yaml")
    cfg = from_dict(TrainConfig, raw, source=name)
    types = field_types(TrainConfig)
    for key, value in raw.items():  # the preset's values are exactly what the config holds
        assert getattr(cfg, key) == parse_value(key, value, types[key])
    credit = pytest.importorskip("turngym.credit")
    assert cfg.credit in credit.CREDIT, f"preset {name}: credit {cfg.credit!r} is not registered"
    from turngym.envs import list_envs

    if cfg.env_id not in list_envs():
        pytest.skip(f"env {cfg.env_id} is not registered yet")
    cfg.validate_names()


def test_every_credit_method_has_a_preset():
    credit = pytest.importorskip("turngym.credit")
    covered = {load_preset(n).get("credit", TrainConfig().credit) for n in preset_names()}
    assert set(credit.CREDIT.names()) <= covered, set(credit.CREDIT.names()) - covered


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match=r"Unknown preset 'grp'.*Did you mean 'grpo'"):
        load_preset("grp")


def test_resume_reads_the_run_config(tmp_path):
    from turngym.config import dump_yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(resolve_train_config("grpo", ["steps=7"], check_names=False)))
    cfg = resolve_train_config(None, ["steps=9"], resume_dir=str(run), check_names=False)
    assert cfg.resume and cfg.run_dir == str(run) and cfg.steps == 9 and cfg.credit == "grpo"
    with pytest.raises(ConfigError, match="cannot be combined"):
        resolve_train_config("grpo", [], resume_dir=str(run), check_names=False)
    with pytest.raises(ConfigError, match="no config.yaml"):
        resolve_train_config(None, [], resume_dir=str(tmp_path / "nope"), check_names=False)


def test_generated_docs_are_up_to_date():
    from turngym.cli import render_config_doc
    from turngym.trainers.runlog import render_metrics_doc

    for name, text in (("config.md", render_config_doc()), ("metrics.md", render_metrics_doc())):
        path = REPO / "docs" / name
        assert path.is_file() and path.read_text() == text, f"docs/{name} is stale: run `turngym docs`"
