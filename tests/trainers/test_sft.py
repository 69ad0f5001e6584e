"""SFT and language-model pretraining on expert demonstrations (`turngym.trainers.sft`)."""

from __future__ import annotations

import pytest
import torch

from turngym.agents.render import Renderer, prompt_tool_schemas
from turngym.agents.tiny import load_policy_model
from turngym.credit.base import GroupBatch
from turngym.envs import make
from turngym.trainers.forward import iter_chunks
from turngym.trainers.sft import collect_demonstrations, length_buckets, lm_loss, sft_train

ENV = "search/HopQA-v0"


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    torch.set_num_threads(1)
    model, tok = load_policy_model("tiny", env_id=ENV, cache_dir=str(tmp_path_factory.mktemp("cache")))
    env = make(ENV)
    renderer = Renderer(tok, prompt_tool_schemas(env))
    env.close()
    trajs = collect_demonstrations(ENV, tok, renderer, range(24), noise=0.3, seed=0, max_new_tokens=48)
    return model, tok, trajs


def test_length_buckets_cover_every_row_once_in_length_order(demos):
    _, tok, trajs = demos
    batch = GroupBatch.from_trajectories(trajs, pad_id=tok.pad_token_id)
    buckets = length_buckets(batch, 5)
    rows = torch.cat(buckets).tolist()
    assert sorted(rows) == list(range(len(trajs))) and [len(b) for b in buckets[:-1]] == [5] * (len(buckets) - 1)
    lengths = [len(trajs[i].token_ids()) for i in rows]
    assert lengths == sorted(lengths)  # each bucket holds neighbours in length, so a step pads little


def test_lm_loss_of_a_padded_chunk_equals_the_unpadded_sequences(demos):
    model, tok, trajs = demos
    batch = GroupBatch.from_trajectories(trajs[:6], pad_id=tok.pad_token_id)
    (chunk,) = list(iter_chunks(batch, torch.arange(6), chunk_size=6))
    with torch.no_grad():
        padded = float(lm_loss(model, chunk))
        nll, n = 0.0, 0
        for t in trajs[:6]:  # one sequence at a time, no padding at all
            ids = torch.tensor([t.token_ids()])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
    assert padded == pytest.approx(nll / n, rel=1e-4)


@pytest.mark.parametrize("tokens", ["actions", "all"])
def test_sft_and_pretraining_lower_their_loss(demos, tokens):
    model, tok, trajs = demos
    model = type(model)(model.config)
    model.load_state_dict(demos[0].state_dict())
    losses = sft_train(model, trajs, steps=12, lr=3e-3, batch_size=8, pad_id=tok.pad_token_id, tokens=tokens)
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_sft_rejects_an_unknown_token_selection(demos):
    model, tok, trajs = demos
    with pytest.raises(ValueError, match="tokens must be"):
        sft_train(model, trajs, steps=1, lr=1e-3, batch_size=4, pad_id=tok.pad_token_id, tokens="prompt")
