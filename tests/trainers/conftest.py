"""Fixtures of the trainer tests: the warm-started tiny policy shared by the runs that need one that answers, and a
fresh tiny policy per module."""

from __future__ import annotations

import pytest
import torch

from tests.trainers.test_methods_train import ENV, WARM


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory) -> str:
    """The tiny policy built and warm-started once (`policy_setup.warm_start`), saved with ``save_pretrained``."""
    from turngym.trainers import policy_setup
    from turngym.trainers.config import TrainConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("warm")
    cfg = TrainConfig(env_id=ENV, model="tiny", model_size="1m", cache_dir=str(root / "cache"), torch_threads=1,
                      seed=0, **WARM)
    s = policy_setup.setup(cfg)
    policy_setup.warm_start(cfg, s, lambda *_: None)
    s.model.save_pretrained(root / "model")
    s.tokenizer.save_pretrained(root / "model")
    return str(root / "model")


@pytest.fixture(scope="module")
def tiny_hopqa(tmp_path_factory):
    """(model, tokenizer, renderer, cache_dir) of the 1m tiny HopQA policy, random init, built once per module."""
    from turngym.agents.render import Renderer, prompt_tool_schemas
    from turngym.agents.tiny import load_policy_model
    from turngym.envs import make

    torch.set_num_threads(1)
    cache = tmp_path_factory.getbasetemp() / "tiny-cache"
    model, tok = load_policy_model("tiny", env_id=ENV, cache_dir=str(cache), size="1m")
    env = make(ENV)
    renderer = Renderer(tok, prompt_tool_schemas(env))
    env.close()
    return model, tok, renderer, str(cache)
