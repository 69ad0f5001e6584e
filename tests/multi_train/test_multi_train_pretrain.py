"""`algo=multi` warm start with ``pretrain_steps``: one model learns every token of every role's scripted episodes
(`sft_train(tokens="all")`), every learner starts from its weights, then each learner SFTs on its own roles' action
tokens; progress is logged per step."""

from __future__ import annotations

import json
import math


def test_pretraining_on_every_role_then_each_learner_sfts_on_its_own(tmp_path, tiny_overrides, monkeypatch):
    import torch

    from turngym.trainers import sft
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import train

    calls = []
    real = sft.sft_train

    def spy(model, trajectories, **kw):
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        calls.append((id(model), kw.get("tokens", "actions"), kw["steps"], {t.agent_id for t in trajectories},
                      weights))
        return real(model, trajectories, **kw)

    monkeypatch.setattr(sft, "sft_train", spy)
    run = tmp_path / "run"
    train(resolve_train_config("multi-sealedbid", tiny_overrides(
        run, steps=0, multi_mode="separate", pretrain_steps=4, sft_steps=2, cache_dir=tmp_path / "cache")))

    # 4 LM steps on every token of both bidders' episodes, then 2 SFT steps per learner on its own bidder's
    assert [c[1:4] for c in calls] == [("all", 4, {"bidder_0", "bidder_1"}), ("actions", 2, {"bidder_0"}),
                                       ("actions", 2, {"bidder_1"})]
    assert calls[0][0] == calls[1][0] != calls[2][0]
    # both learners start their SFT from the pretrained weights
    pretrained, second = calls[1][4], calls[2][4]
    assert any(not torch.equal(calls[0][4][k], pretrained[k]) for k in pretrained)
    assert all(torch.equal(pretrained[k], second[k]) for k in pretrained)

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sft_lines = [d for d in lines if d["kind"] == "sft"]
    progress = [("pretrain", d["pretrain/step"]) if "pretrain/step" in d else ("sft", d["sft/step"])
                for d in sft_lines if "pretrain/step" in d or "sft/step" in d]
    assert progress == [("pretrain", s) for s in (1, 2, 3, 4)] + [("sft", 1), ("sft", 2)] * 2
    assert all(math.isfinite(d["pretrain/loss"]) for d in sft_lines if "pretrain/step" in d)
    summary = sft_lines[-1]
    assert math.isfinite(summary["sft/pretrain_loss"]) and math.isfinite(summary["sft/loss"])
