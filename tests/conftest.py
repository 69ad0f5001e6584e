"""Suite-wide settings.

Hypothesis runs derandomized (a fixed example sequence per test) when ``CI`` is set, so a CI run is
reproducible; locally it explores new examples each run.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def sigkill_training():
    """``kill(args, run, after_step, train_lines, *, cwd, env)``: start ``python -m turngym.cli *args``, wait until
    ``train_lines(run)`` holds a train line of step ``>= after_step``, then SIGKILL the process at a random moment
    within the next second (inside the next step or its checkpoint). Fails the test if training exits first or
    does not get there within ``timeout`` seconds."""

    def kill(args: list[str], run: Path, after_step: int, train_lines, *, cwd: Path, env: dict,
             timeout: float = 900.0) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "turngym.cli", *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"training exited (rc {proc.returncode}) before step {after_step}:\n"
                                f"{proc.stdout.read()}")
                try:  # the trainer may be mid-way through writing a line: read again on the next poll
                    lines = train_lines(run) if (Path(run) / "metrics.jsonl").exists() else []
                except json.JSONDecodeError:
                    lines = []
                if any(d["step"] >= after_step for d in lines):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("training did not reach the kill step in time")
            time.sleep(random.Random().uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    return kill


@pytest.fixture
def nested_probes():
    """``make(rng, vocab, n_traj, lengths)``: probe inputs shaped like a trajectory's turns: ``n_traj`` random token
    sequences (lengths drawn from ``lengths = (lo, hi)``), each cut after three of its prefixes and probed with its
    own random gold continuation of 2-5 tokens, plus a repeated context with another continuation. Returns
    ``(contexts, continuations)``."""

    def make(rng, vocab: int, n_traj: int, lengths: tuple[int, int]) -> tuple[list[list[int]], list[list[int]]]:
        contexts, conts = [], []
        for _ in range(n_traj):
            seq = rng.integers(7, vocab, size=int(rng.integers(*lengths))).tolist()
            gold = rng.integers(7, vocab, size=int(rng.integers(2, 6))).tolist()
            for cut in sorted(rng.choice(range(5, len(seq) + 1), size=3, replace=False)):
                contexts.append(seq[:cut])
                conts.append(gold)
        contexts.append(contexts[0])  # a repeated context with another continuation
        conts.append([11, 12, 13])
        return contexts, conts

    return make


@pytest.fixture
def check_train_lines():
    """``check(run_dir, steps, label="")``: the run logged one train line per step, each with a finite loss, no
    skipped (non-finite) step, at least one optimizer step and finite advantages, and some advantage was not 0.
    Returns the lines."""
    from turngym.trainers.runlog import read_metrics

    def check(run_dir: Path, steps: int, label: str = "") -> list[dict]:
        lines = read_metrics(run_dir, kind="train")
        assert [d["step"] for d in lines] == list(range(1, steps + 1))
        for d in lines:
            loss = d.get("train/loss")
            assert loss is not None and math.isfinite(loss), f"{label}: step {d['step']} loss {loss}"
            assert d.get("nonfinite/skipped", 0) == 0, f"{label}: step {d['step']} was skipped as non-finite"
            assert d["train/optimizer_steps"] >= 1
            assert math.isfinite(d["credit/adv_absmax"])
        if "zero" not in str(label):  # the zero control gives every advantage 0 by design
            assert max(d["credit/adv_absmax"] for d in lines) > 0, f"{label}: every advantage was 0"
        return lines

    return check


@pytest.fixture
def scratch():
    """``(registry, name)`` pairs a test registered (e.g. a throwaway credit method), removed from each registry
    after the test."""
    added: list[tuple] = []
    yield added
    for registry, name in added:
        registry.remove(name)


class _CannedJudgePolicy:
    """A `Policy` whose completion of a prompt is ``respond(prompt_text)``: the model behind a loopback judge
    server in tests (the server, its HTTP and the client are the project's real ones)."""

    def __init__(self, tokenizer, respond):
        self.tokenizer, self.respond, self.prompts = tokenizer, respond, []

    def generate(self, contexts, params, *, envs=None):
        from turngym.agents.policy import Sample

        out = []
        for ids in contexts:
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            reply = str(self.respond(text))
            rid = list(self.tokenizer.encode(reply, add_special_tokens=False))
            out.append(Sample(ids=rid, logprobs=[0.0] * len(rid), text=reply, finish_reason="stop"))
        return out


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A small byte-level BPE tokenizer (exact text round trip), built once per session."""
    from turngym.agents.tiny import build_tokenizer

    return build_tokenizer(["judge the steps of an agent; reply with JSON [0, 1] {\"a\": true}"] * 4, vocab_size=300)


@pytest.fixture
def judge_server(byte_tokenizer):
    """``start(respond) -> (url, policy)``: the project's OpenAI-compatible completions server on loopback, serving a
    judge whose completion of each prompt is ``respond(prompt_text)`` (``policy.prompts`` records what it was
    asked). Servers stop after the test."""
    from turngym.agents.openai_server import CompletionServer

    servers = []

    def start(respond):
        policy = _CannedJudgePolicy(byte_tokenizer, respond)
        srv = CompletionServer(policy, byte_tokenizer, model_name="canned-judge").start()
        servers.append(srv)
        return srv.url + "/v1", policy

    yield start
    for s in servers:
        s.stop()
