"""Credit-method options a user can find: ``credit.<option>=value``, YAML, checks and ``--help-config credit=NAME``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from turngym import cli
from turngym.config import field_types
from turngym.credit import CREDIT
from turngym.errors import ConfigError
from turngym.trainers.config import check_credit_options, credit_help, resolve_train_config


def test_dotted_credit_option_reaches_the_method_config():
    cfg = resolve_train_config("a2tgpo", ["credit.alpha=0.5", "credit.ig_type=prob_diff"])
    assert cfg.credit == "a2tgpo"  # credit stays a string
    assert cfg.credit_overrides == {"alpha": 0.5, "ig_type": "prob_diff"}
    built = cfg.credit_config()
    assert type(built) is CREDIT["a2tgpo"].config_cls
    assert (built.alpha, built.ig_type, built.beta) == (0.5, "prob_diff", 0.3)  # beta keeps its default


def test_values_are_coerced_to_the_field_types():
    cfg = resolve_train_config("ppo", ["credit.lam=1e-3", "credit.turn_reward_signals=a,b", "credit.gamma=1"])
    assert cfg.credit_overrides == {"lam": 0.001, "turn_reward_signals": ("a", "b"), "gamma": 1.0}
    assert type(cfg.credit_overrides["gamma"]) is float


def test_credit_overrides_form_still_works_and_is_checked_the_same_way():
    cfg = resolve_train_config("a2tgpo", ["credit_overrides.beta=0.2", "credit.alpha=0.1"])
    assert cfg.credit_overrides == {"beta": 0.2, "alpha": 0.1}
    with pytest.raises(ConfigError, match="Did you mean 'beta'"):
        resolve_train_config("a2tgpo", ["credit_overrides.betta=0.2"])


def test_later_override_wins_between_the_two_forms():
    cfg = resolve_train_config("a2tgpo", ["credit_overrides.alpha=0.1", "credit.alpha=0.2"])
    assert cfg.credit_overrides == {"alpha": 0.2}


def test_yaml_dotted_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("credit: gae\nalgo: ppo\ncredit_overrides: {lam: 0.9, gamma: 0.5}\ncredit.lam: 0.5\n",
                    encoding="utf-8")
    cfg = resolve_train_config(str(path))
    assert cfg.credit == "gae" and cfg.credit_overrides == {"lam": 0.5, "gamma": 0.5}  # the dotted key wins
    cfg = resolve_train_config(str(path), ["credit.gamma=0.25"])  # the command line wins over the file
    assert cfg.credit_overrides == {"lam": 0.5, "gamma": 0.25}


def test_every_preset_still_resolves():
    from turngym.trainers.config import preset_names

    for name in preset_names():
        cfg = resolve_train_config(name)
        assert isinstance(cfg.credit, str) and cfg.credit in CREDIT


def test_misspelled_option_names_the_field():
    with pytest.raises(ConfigError) as err:
        check_credit_options("a2tgpo", {"alpah": 1.0})
    msg = str(err.value)
    assert "Did you mean 'alpha'?" in msg
    assert all(name in msg for name in field_types(CREDIT["a2tgpo"].config_cls))


def test_misspelled_option_exits_2_with_did_you_mean(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "a2tgpo", "credit.alpah=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'alpha'?" in err
    assert list(tmp_path.iterdir()) == []


def test_wrong_type_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "a2tgpo", "credit.alpha=abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Bad value for 'credit.alpha': got 'abc', expected float" in err
    assert cli.main(["train", "a2tgpo", "credit.dynamic_turn_clip=maybe"]) == 2
    assert "expected bool" in capsys.readouterr().err


def test_nan_and_method_checks(capsys):
    with pytest.raises(ConfigError, match=r"credit.alpha=nan is not a finite number"):
        check_credit_options("a2tgpo", {"alpha": float("nan")})
    with pytest.raises(ConfigError, match=r"credit=gae: gamma and lam must be in \[0, 1\]"):
        check_credit_options("gae", {"gamma": 2})


def test_method_without_options():
    assert check_credit_options("zero", {}) == {}
    with pytest.raises(ConfigError, match="Known: \\(none\\)"):
        check_credit_options("zero", {"x": 1})


def test_help_config_credit_lists_the_method_fields(capsys):
    assert cli.main(["train", "--help-config", "credit=a2tgpo"]) == 0
    out = capsys.readouterr().out
    cls = CREDIT["a2tgpo"].config_cls
    for name in field_types(cls):
        assert f"\n  credit.{name}: " in out
    assert "credit.alpha: float = 0.3" in out
    assert "Weight of the variance-rescaled IG term." in out  # the field's docstring
    assert out == credit_help("a2tgpo")


def test_help_config_unknown_credit_is_usage_error(capsys):
    assert cli.main(["train", "--help-config", "credit=a2tgp"]) == 2
    assert "Did you mean 'a2tgpo'?" in capsys.readouterr().err


def test_help_config_points_to_credit_options(capsys):
    assert cli.main(["train", "--help-config"]) == 0
    assert "--help-config credit=NAME" in capsys.readouterr().out


def test_misspelled_option_as_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "turngym.cli", "train", "gigpo", "credit.anchor_sorce=info"],
                          check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Did you mean 'anchor_source'" in proc.stderr and "Traceback" not in proc.stderr
