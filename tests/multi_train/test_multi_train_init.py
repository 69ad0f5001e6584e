"""``multi_init``: a multi-agent run starts from another run's checkpoint (its warm start, step 0) instead of warming
up again: every learner, self-play's pool and start snapshot get the checkpoint's weights, the optimizers start
fresh, and a checkpoint of other learners, a missing folder or another algorithm is refused before any work."""

from __future__ import annotations

import pytest
import torch


def eval_line(run, step):
    import json

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return next(d for d in lines if d["kind"] == "eval" and d["step"] == step)


@pytest.mark.parametrize("mode", ["self_play", "separate"])
def test_a_run_started_from_a_warm_start_checkpoint_has_its_weights_and_no_warm_start(tmp_path, mode,
                                                                                    tiny_overrides):
    from turngym.trainers.checkpoint import load_checkpoint
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    extra = {"multi_mode": mode, "steps": 1, "eval_tasks": 4, "cache_dir": tmp_path / "cache"}
    warm, run = tmp_path / "warm", tmp_path / "run"
    train(resolve_train_config("multi-sealedbid", tiny_overrides(warm, **extra)))
    step0 = warm / "checkpoints" / "step-00000000"
    train(resolve_train_config("multi-sealedbid", tiny_overrides(run, **extra, multi_init=step0)))

    want, got = load_checkpoint(step0).model_state, load_checkpoint(run / "checkpoints" / "step-00000000").model_state
    assert got.keys() == want.keys()
    if mode == "self_play":
        assert any(k.startswith("pool.0.") for k in got) and any(k.startswith("start.0.") for k in got)
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert '"sft/episodes"' not in (run / "metrics.jsonl").read_text()  # the warm start was skipped
    assert eval_line(run, 0)["eval/reward"] == pytest.approx(eval_line(warm, 0)["eval/reward"])
    # the run trained from there: its final weights moved away from the warm start's
    final = load_checkpoint(run / "checkpoints" / "step-00000001").model_state
    assert any(not torch.equal(final[k], want[k]) for k in final if k.startswith("learners."))


def test_multi_init_is_refused_for_other_learners_a_missing_folder_and_other_algorithms(tmp_path, tiny_overrides):
    from turngym.errors import ConfigError
    from turngym.trainers.config import TrainConfig, resolve_train_config
    from turngym.trainers.multi import train

    warm = tmp_path / "warm"
    train(resolve_train_config("multi-sealedbid", tiny_overrides(warm, multi_mode="separate", steps=1,
                                                                  sft_steps=0, cache_dir=tmp_path / "cache")))
    other = resolve_train_config("multi-sealedbid", tiny_overrides(tmp_path / "sp", multi_mode="self_play",
                                                                    multi_init=warm, cache_dir=tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"holds learners \['bidder_0', 'bidder_1'\].*\['learner'\]"):
        train(other)
    assert not (tmp_path / "sp" / "checkpoints").exists()  # refused before any checkpoint was written
    missing = resolve_train_config("multi-sealedbid", tiny_overrides(tmp_path / "m", multi_init=tmp_path / "nope",
                                                                      cache_dir=tmp_path / "cache"))
    with pytest.raises(ConfigError, match="multi_init=.*nope"):
        train(missing)
    with pytest.raises(ConfigError, match="multi_init=.*algo=multi"):
        TrainConfig(algo="grpo", multi_init=str(warm))
