"""`TRAINERS`: algo -> its trainer, lazily imported; unknown algos get the registry's did-you-mean error."""

from __future__ import annotations

import importlib
import subprocess
import sys
import typing

import pytest

from turngym.errors import RegistryError
from turngym.trainers import TRAINERS
from turngym.trainers.config import Algo


def test_every_configurable_algo_has_a_trainer_and_nothing_else():
    assert sorted(TRAINERS) == sorted(typing.get_args(Algo))


@pytest.mark.parametrize("algo", ["grpo", "ppo", "multi"])
def test_each_entry_imports_to_a_train_function(algo):
    module, _, attr = TRAINERS[algo].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_unknown_algo_suggests_the_closest():
    with pytest.raises(RegistryError, match=r"Unknown algo 'grpoo'\. Did you mean 'grpo'.*Known: grpo, multi, ppo"):
        TRAINERS["grpoo"]


def test_the_registry_imports_no_trainer():
    code = ("import sys; from turngym.trainers import TRAINERS; import turngym.cli; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('turngym.trainers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "grpo" not in out and "ppo" not in out, out


def test_cli_and_api_dispatch_through_the_registry(tmp_path, monkeypatch):
    import turngym.trainers
    from turngym import api, cli
    from turngym.registry import Registry

    assert cli.TRAINERS is TRAINERS
    (tmp_path / "fake_ppo_trainer.py").write_text("def train(cfg):\n    return {'algo': cfg.algo, 'steps': cfg.steps}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = Registry("algo")
    fake.add("ppo", "fake_ppo_trainer:train")
    monkeypatch.setattr(turngym.trainers, "TRAINERS", fake)
    summary = api.train("ppo", steps=3, sft_steps=0, pretrain_steps=0, run_dir=str(tmp_path / "run"))
    assert summary == {"algo": "ppo", "steps": 3}
