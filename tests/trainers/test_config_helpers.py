"""turngym.config: key=value parsing with type coercion, YAML load/dump, field docstrings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turngym.config import (
    ConfigError,
    build_config,
    config_help,
    config_markdown,
    dump_yaml,
    field_docs,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    to_dict,
)


@dataclass(frozen=True)
class DemoConfig:
    """A config with one field of every supported kind."""

    # --- numbers
    steps: int = 10
    """Training steps."""
    lr: float = 1e-3
    """Learning rate."""
    # --- switches
    lora: bool = False
    """Use LoRA."""
    name: str = "run"
    """Run name."""
    algo: Literal["grpo", "ppo"] = "grpo"
    """Algorithm."""
    clip: float | None = 3.0
    """Dual clip; none disables it."""
    # --- containers
    layers: tuple[int, ...] = (1, 2)
    """Layer ids."""
    pair: tuple[str, float] = ("a", 1.0)
    """A fixed pair."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Free-form keyword arguments."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps={self.steps} must be >= 0")


def test_parse_overrides_coerces_every_type():
    got = parse_overrides(
        DemoConfig,
        ["steps=7", "lr=1e-4", "lora=yes", "name= x y", "algo=ppo", "clip=none", "layers=3,4,5", "pair=[b, 2]",
         "kwargs={k: 1, s: two}"],
    )
    assert got == {
        "steps": 7, "lr": 1e-4, "lora": True, "name": " x y", "algo": "ppo", "clip": None,
        "layers": (3, 4, 5), "pair": ("b", 2.0), "kwargs": {"k": 1, "s": "two"},
    }
    assert isinstance(got["lr"], float) and isinstance(got["steps"], int)


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("1", True), ("off", False)])
def test_bool_spellings(text, expected):
    assert parse_overrides(DemoConfig, [f"lora={text}"])["lora"] is expected


def test_int_accepts_exact_scientific_but_not_fractions():
    assert parse_overrides(DemoConfig, ["steps=1e3"])["steps"] == 1000
    with pytest.raises(ConfigError, match=r"'steps'.*'2.5'.*expected int"):
        parse_overrides(DemoConfig, ["steps=2.5"])


def test_unknown_key_suggests_close_names():
    with pytest.raises(ConfigError) as ei:
        parse_overrides(DemoConfig, ["stepz=3"])
    msg = str(ei.value)
    assert "'stepz'" in msg and "Did you mean 'steps'" in msg


def test_bad_literal_lists_choices():
    with pytest.raises(ConfigError) as ei:
        parse_overrides(DemoConfig, ["algo=dpo"])
    msg = str(ei.value)
    assert "'algo'" in msg and "'dpo'" in msg and "'grpo', 'ppo'" in msg


@pytest.mark.parametrize("item", ["lr=fast", "lora=maybe", "pair=1,2,3", "kwargs=[1, 2]", "clip=big"])
def test_bad_values_name_key_and_value(item):
    key, _, value = item.partition("=")
    with pytest.raises(ConfigError) as ei:
        parse_overrides(DemoConfig, [item])
    assert repr(key) in str(ei.value) and value in str(ei.value)


def test_missing_equals_sign():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(DemoConfig, ["lr"])


def test_dotted_override_merges_into_dict_field():
    base = {"kwargs": {"a": 1, "b": {"c": 2}}}
    cfg = build_config(DemoConfig, base, ["kwargs.b.d=3", "kwargs.e=[1, 2]"])
    assert cfg.kwargs == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    with pytest.raises(ConfigError, match="not a dict"):
        parse_overrides(DemoConfig, ["lr.x=1"])


def test_later_override_wins_and_post_init_runs():
    assert build_config(DemoConfig, {"steps": 3}, ["steps=4", "steps=5"]).steps == 5
    with pytest.raises(ConfigError, match="steps=-1"):
        build_config(DemoConfig, {}, ["steps=-1"])


def test_from_dict_validates_yaml_values_and_names_source():
    cfg = from_dict(DemoConfig, {"lr": "3e-4", "layers": [5], "clip": None, "pair": ["z", 3]})
    assert cfg.lr == 3e-4 and cfg.layers == (5,) and cfg.clip is None and cfg.pair == ("z", 3.0)
    with pytest.raises(ConfigError, match=r"'lora'.*expected bool.*\(in my.yaml\)"):
        from_dict(DemoConfig, {"lora": 3}, source="my.yaml")
    with pytest.raises(ConfigError, match=r"Unknown config key 'nope'"):
        from_dict(DemoConfig, {"nope": 1})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(DemoConfig, {"steps": True})


def test_yaml_round_trip(tmp_path):
    cfg = build_config(DemoConfig, {}, ["lr=2e-5", "layers=7,8", "kwargs.x=1", "clip=none", "algo=ppo"])
    text = dump_yaml(cfg)
    assert "# Learning rate." in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert from_dict(DemoConfig, load_yaml(path)) == cfg
    assert to_dict(cfg)["layers"] == [7, 8]


def test_load_yaml_malformed_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 1e-4\nsteps: [1, 2\nname: x\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml(path)
    msg = str(ei.value)
    assert "Malformed YAML" in msg and "bad.yaml" in msg and "line 3" in msg


def test_load_yaml_rejects_non_mapping_and_missing(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_field_docs_are_read_from_source():
    docs = field_docs(DemoConfig)
    assert docs["lr"] == "Learning rate." and docs["clip"] == "Dual clip; none disables it."
    assert list(docs) == list(to_dict(DemoConfig()))


def test_help_and_markdown_list_every_field_with_sections():
    text = config_help(DemoConfig)
    md = config_markdown(DemoConfig)
    for name in to_dict(DemoConfig()):
        assert f"  {name}:" in text and f"| `{name}` |" in md
    assert "[numbers]" in text and "## containers" in md
    assert "algo: 'grpo' | 'ppo' = grpo" in text and "clip: float | None = 3.0" in text


def test_merge_keeps_plain_dict_replacement():
    assert merge({"kwargs": {"a": 1}}, {"kwargs": {"b": 2}}) == {"kwargs": {"b": 2}}


@given(st.integers(min_value=-10**12, max_value=10**12), st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip_through_text(i, f):
    got = parse_overrides(DemoConfig, [f"steps={i}", f"lr={f!r}"])
    assert got["steps"] == i and got["lr"] == f
