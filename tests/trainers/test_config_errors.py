"""Bad configs: exit 2, one line on stderr, no traceback, before any work (the table of docs/config_errors.md).

Each row of ``CASES`` is one row of the table in ``docs/config_errors.md`` (a test keeps them equal) and runs the
real CLI entry, ``turngym.cli.main``, in process; a few also run as a subprocess (``python -m turngym.cli``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turngym import cli
from turngym.config import ConfigError, check_number, field_types, load_yaml, parse_overrides
from turngym.trainers.config import INT_RANGES, TrainConfig, resolve_train_config

REPO = Path(__file__).resolve().parents[2]

BOMB = b"""\
env_kwargs:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@dataclasses.dataclass(frozen=True)
class Case:
    input: str
    """The input as the docs table shows it."""
    argv: tuple[str, ...]
    """Arguments of `turngym`; ``{d}`` is a scratch directory holding ``files``."""
    message: str
    """A phrase of the one-line error."""
    files: tuple[tuple[str, bytes], ...] = ()
    """``(path under {d}, content)`` written before the run."""


CASES = [
    Case("`lr=inf`", ("train", "lr=inf", "run_dir={d}/run"), "lr=inf is not a finite number"),
    Case("`temperature=inf`", ("train", "temperature=inf", "run_dir={d}/run"),
         "temperature=inf is not a finite number"),
    Case("`weight_decay=nan`", ("train", "weight_decay=nan", "run_dir={d}/run"),
         "weight_decay=nan is not a finite number"),
    Case("`max_grad_norm=nan`", ("train", "max_grad_norm=nan", "run_dir={d}/run"),
         "max_grad_norm=nan is not a finite number"),
    Case("`kl_coef=nan`", ("train", "kl_coef=nan", "run_dir={d}/run"), "kl_coef=nan is not a finite number"),
    Case("`lr: .inf` in a YAML file", ("train", "{d}/inf.yaml", "run_dir={d}/run"), "lr=inf is not a finite number",
         (("inf.yaml", b"lr: .inf\n"),)),
    Case("`seed=-1`", ("train", "seed=-1", "run_dir={d}/run"), "seed=-1 is out of range: it must be in [0, 4294967295]"),
    Case("`seed=2**80` (`seed=1208925819614629174706176`)", ("train", f"seed={2**80}", "run_dir={d}/run"),
         f"seed={2**80} is out of range"),
    Case("`group_size=0`", ("train", "group_size=0", "run_dir={d}/run"), "group_size=0 is out of range"),
    Case("`env_kwargs.bogus=1`", ("train", "env_kwargs.bogus=1", "run_dir={d}/run"),
         "Unknown keyword argument 'bogus' for env 'search/HopQA-v0'"),
    Case("`run_dir=/proc/x`", ("train", "run_dir=/proc/x"), "run_dir='/proc/x' cannot be created or written"),
    Case("`run_dir=FILE/run` (FILE is a file)", ("train", "run_dir={d}/file.txt/run"), "is a file, not a directory",
         (("file.txt", b"x\n"),)),
    Case("a YAML file with a key twice (`lr:` on lines 1 and 3)", ("train", "{d}/dup.yaml", "run_dir={d}/run"),
         "line 3, column 1: duplicate key 'lr' (first at line 1)",
         (("dup.yaml", b"lr: 1.0e-4\nsteps: 3\nlr: 2.0e-4\n"),)),
    Case("a duplicate key in a YAML override (`env_kwargs={a: 1, a: 2}`)",
         ("train", "env_kwargs={a: 1, a: 2}", "run_dir={d}/run"), "duplicate key 'a'"),
    Case("a non-UTF-8 YAML file (Latin-1 `\\xe9`)", ("train", "{d}/latin1.yaml", "run_dir={d}/run"),
         "is not UTF-8 text (byte 0xe9 at offset 18)", (("latin1.yaml", b"wandb_project: caf\xe9\n"),)),
    Case("a binary YAML file (NUL bytes)", ("train", "{d}/binary.yaml", "run_dir={d}/run"),
         "is binary (NUL byte at offset 4)", (("binary.yaml", b"lr: \x00\x01\x02\xff"),)),
    Case("a 20,000-deep YAML file (`[[[...]]]`)", ("train", "{d}/deep.yaml", "run_dir={d}/run"),
         "nesting deeper than 32 levels", (("deep.yaml", b"env_kwargs: {x: " + b"[" * 20000 + b"]" * 20000 + b"}\n"),)),
    Case("a 20,000-deep YAML override (`env_kwargs.x=[[[...]]]`)",
         ("train", "env_kwargs.x=" + "[" * 20000 + "]" * 20000, "run_dir={d}/run"), "nesting deeper than 32 levels"),
    Case("an alias bomb (9 levels of 9 aliases) under `--print-config`", ("train", "--print-config", "{d}/bomb.yaml"),
         "anchor &a is not allowed", (("bomb.yaml", BOMB),)),
    Case("an anchor or alias in a YAML override (`env_kwargs={a: &x 1, b: *x}`)",
         ("train", "env_kwargs={a: &x 1, b: *x}", "run_dir={d}/run"), "anchor &x is not allowed"),
    Case("`--resume RUN` whose saved config.yaml is not UTF-8", ("train", "--resume", "{d}/saved"),
         "is not UTF-8 text (byte 0xff at offset 10)", (("saved/config.yaml", b"steps: 10\n\xff\xfe\n"),)),
    Case("`--resume RUN` whose saved config.yaml uses an anchor and alias", ("train", "--resume", "{d}/saved"),
         "anchor &s is not allowed", (("saved/config.yaml", b"steps: &s 10\nsft_steps: *s\n"),)),
]


def _setup(case: Case, tmp_path: Path) -> tuple[list[str], Path]:
    d = tmp_path / "d"
    d.mkdir()
    for name, content in case.files:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content)
    work = tmp_path / "work"
    work.mkdir()
    return [a.replace("{d}", str(d)) for a in case.argv], work


def _assert_one_clean_line(err: str, case: Case) -> None:
    assert case.message in err, err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("case", CASES, ids=[c.input for c in CASES])
def test_bad_config_exits_2_with_one_line_before_any_work(case, tmp_path, capsys, monkeypatch):
    argv, work = _setup(case, tmp_path)
    monkeypatch.chdir(work)
    # importing a trainer is the first step of any work
    monkeypatch.setattr(cli, "TRAINERS", dict.fromkeys(cli.TRAINERS, "no_trainer_should_be_imported:train"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    t0 = time.perf_counter()
    rc = cli.main(argv)
    elapsed = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert rc == 2, err
    _assert_one_clean_line(err, case)
    assert out == ""
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "a failed config wrote files"
    assert "no_trainer_should_be_imported" not in sys.modules


SUBPROCESS_CASES = [c for c in CASES if c.input.startswith(("an alias bomb", "a 20,000-deep YAML file", "`seed=-1`",
                                                              "`run_dir=/proc/x`"))]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.input for c in SUBPROCESS_CASES])
def test_bad_config_exits_2_as_a_subprocess(case, tmp_path):
    argv, work = _setup(case, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "turngym.cli", *argv], cwd=work, capture_output=True, text=True,
                       timeout=120, env=env, check=False)
    assert r.returncode == 2, r.stderr
    _assert_one_clean_line(r.stderr, case)
    assert not any(work.iterdir()) and not (tmp_path / "d" / "run").exists()


def test_docs_table_is_the_case_list():
    text = (REPO / "docs" / "config_errors.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| input", "| ---"))]
    want = [f"| {c.input} | 2 | `{c.message}` |" for c in CASES]
    assert rows == want, "docs/config_errors.md is out of step with CASES:\n" + "\n".join(want)


# --------------------------------------------------------------------------- the class, not the instances


@pytest.mark.parametrize("name", [k for k, t in field_types(TrainConfig).items() if t in (float, float | None)])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e999"])
def test_every_float_field_rejects_nan_and_inf(name, bad):
    with pytest.raises(ConfigError, match=rf"^{name}=(nan|-?inf) is not a finite number"):
        resolve_train_config(None, [f"{name}={bad}"], check_names=False)
    with pytest.raises(ConfigError, match="not a finite number"):  # built directly, too
        TrainConfig(**{name: float(bad)})


def test_every_int_field_has_a_range():
    ints = {k for k, t in field_types(TrainConfig).items() if t in (int, int | None)}
    assert ints == set(INT_RANGES)
    for name, (lo, hi, *_) in INT_RANGES.items():
        for bad in (lo - 1, hi + 1):
            with pytest.raises(ConfigError, match=rf"^{name}={bad} is out of range"):
                TrainConfig(**{name: bad})


def test_every_field_is_type_checked_when_built_directly():
    with pytest.raises(ConfigError, match=r"^lr='1e-4' is a str, expected float"):
        TrainConfig(lr="1e-4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^steps=True is a bool, expected int"):
        TrainConfig(steps=True)
    with pytest.raises(ConfigError, match=r"^algo='dpo' is a str, expected one of"):
        TrainConfig(algo="dpo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^env_kwargs=\[1\] is a list"):
        TrainConfig(env_kwargs=[1])  # type: ignore[arg-type]
    assert TrainConfig(max_grad_norm=2).max_grad_norm == 2  # an int is a fine float


def test_check_number_is_the_one_numeric_validator():
    assert check_number("x", 1.0) == "" and check_number("x", None) == "" and check_number("x", True) == ""
    assert "not a finite number" in check_number("x", math.nan)
    assert check_number("x", 5, 0, 3) == "x=5 is out of range: it must be in [0, 3]. Fix: x=3."
    assert check_number("x", -1, 0, 3, note="0, 1, 2 or 3") == "x=-1 is out of range: it must be 0, 1, 2 or 3. Fix: x=0."


def test_strict_yaml_keeps_what_configs_need(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("\ufefflr: 1.0e-4\nenv_kwargs: {hops: [1, 2], topk: 1}\nwandb_project: café\n", encoding="utf-8")
    assert load_yaml(path) == {"lr": 1e-4, "env_kwargs": {"hops": [1, 2], "topk": 1}, "wandb_project": "café"}
    assert parse_overrides(TrainConfig, ["env_kwargs={a: [1, {b: 2}]}"])["env_kwargs"] == {"a": [1, {"b": 2}]}
    with pytest.raises(ConfigError, match="merge key"):
        parse_overrides(TrainConfig, ["env_kwargs={<<: {a: 1}}"])
    with pytest.raises(ConfigError, match="nested 40 levels"):
        parse_overrides(TrainConfig, ["env_kwargs." + ".".join("k" * 40) + "=1"])


def test_dump_yaml_never_writes_aliases(tmp_path):
    from turngym.config import dump_yaml

    shared = [1, 2]
    cfg = TrainConfig(env_kwargs={"hops": shared}, credit_overrides={"a": shared, "b": shared})
    text = dump_yaml(cfg)
    assert "&id" not in text and "*id" not in text
    (tmp_path / "c.yaml").write_text(text)
    assert TrainConfig(**load_yaml(tmp_path / "c.yaml")) == cfg


def test_check_command_checks_env_kwargs_before_building(capsys):
    assert cli.main(["check", "search/HopQA-v0", "hopz=2"]) == 2
    err = capsys.readouterr().err
    assert "Unknown keyword argument 'hopz'" in err and "Did you mean 'hops'" in err and len(err.splitlines()) == 1


def test_probe_leaves_valid_run_dirs_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--print-config", f"run_dir={tmp_path}/a/b/c", f"cache_dir={tmp_path}/cache"]) == 0
    assert "run_dir:" in capsys.readouterr().out
    assert sorted(tmp_path.iterdir()) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(alphabet="[]{}&*:,-!|>'\"\n #ab1.<", max_size=300).map(str.encode))
def test_any_bytes_load_or_give_a_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("y") / "c.yaml"
    path.write_bytes(raw)
    try:
        data = load_yaml(path)
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(data, dict)
