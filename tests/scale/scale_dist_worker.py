"""Run under ``torchrun --standalone --nproc_per_node 2 scale_dist_worker.py OUT.json`` (gloo, CPU).

Builds a tiny random Llama and a synthetic multi-turn batch of 3 GRPO groups x 2 trajectories whose behaviour and
reference log-probs are the model's own plus a fixed per-token offset (ratios near 1: some tokens inside the clip
range, some clipped, some dual-clipped). Every loss term is on: entropy bonus, KL to the reference, a per-token
clip scale (A²TGPO style, 0.5 on turn 0 and 1 on turn 1) with a non-default clip range and dual clip. The
reference is `turngym.trainers.update.update` on ONE process over the whole batch (one minibatch, SGD). Then, for
each case (strategy, loss aggregation, rows per forward, gradient clipping), every rank trains on its own whole
groups (rank 0: 4 rows, rank 1: 2 rows) with ``update(..., dist=info)``, and rank 0 writes: the distributed and
reference metrics, the largest weight difference to the reference, the largest weight difference between ranks,
and what a LOCAL token mean would have given. With one row per forward the ranks run 4 and 2 chunks: rank 1 pads
with zero-loss forwards (FSDP2 all-gathers on every forward).

Teardown: every rank meets at a barrier and destroys the group (`destroy_distributed`), then leaves with
`exit_process` (``os._exit``): the gloo threads outlive ``destroy_process_group``, and letting the interpreter
finalize around them aborted rank 1 once on a loaded machine ("terminate called without an active exception").
A failing rank prints its traceback and exits 1 without the barrier (torchrun then stops the other rank).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import traceback

import torch


def synthetic_trajectories(vocab: int, seed: int = 0):
    from turngym.types import Trajectory, Turn

    g = torch.Generator().manual_seed(seed)
    trajs = []
    for group in range(3):
        prompt = torch.randint(3, vocab, (4 + group,), generator=g).tolist()
        for member in range(2):
            turns = []
            for k in range(2):
                n = int(torch.randint(2, 7, (1,), generator=g))
                ids = torch.randint(3, vocab, (n,), generator=g).tolist()
                lps = (-torch.rand(n, generator=g) * 3).tolist()  # replaced in batch_and_credit
                obs = torch.randint(3, vocab, (3,), generator=g).tolist() if k == 0 else []
                turns.append(Turn(action_ids=ids, logprobs=lps, obs_ids=obs))
            trajs.append(Trajectory(group_id=f"g{group}", agent_id="agent", prompt_ids=prompt, turns=turns,
                                    outcome=float((group + member) % 2), seed=group))
    return trajs


def batch_and_credit(trajs, base):
    """The batch with behaviour / reference log-probs near ``base``'s own, and GRPO credit with a clip scale.

    Every per-token value is a function of the row's own tokens, so a rank's rows get the same values as in the
    whole batch.
    """
    from turngym.credit import GroupBatch, assign_credit
    from turngym.trainers.forward import chunk_logprobs, iter_chunks

    batch = GroupBatch.from_trajectories(trajs, pad_id=0)
    B, L = batch.response_ids.shape
    logp = torch.zeros(B, L)
    with torch.no_grad():
        for chunk in iter_chunks(batch, torch.arange(B), 1):  # one row per forward: no padding
            logp[chunk.rows, :chunk.length] = chunk_logprobs(base, chunk)[0]
    ids, pos, mask = batch.response_ids.float(), torch.arange(L).float(), batch.action_mask
    batch.old_logprobs = torch.where(mask, logp + 0.3 * torch.sin(3.7 * ids + 1.1 * pos), 0.0)  # ratio 0.74..1.35
    batch.ref_logprobs = torch.where(mask, logp + 0.2 * torch.cos(2.3 * ids + 0.7 * pos), 0.0)
    out = assign_credit("grpo", batch)
    out.clip_scale = torch.where(mask, 0.5 + 0.5 * batch.turn_id.clamp(min=0).float(), 1.0)  # [B, L]
    return batch, out


def main() -> None:
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    from turngym.trainers.config import TrainConfig
    from turngym.trainers.distributed import (
        destroy_distributed,
        full_state_dict,
        init_distributed,
        max_weight_divergence,
        shard_groups,
        wrap_model,
    )
    from turngym.trainers.update import update

    info = init_distributed()
    assert info.world_size == 2, info
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    trajs = synthetic_trajectories(48)
    full_b, full_o = batch_and_credit(trajs, base)
    local = shard_groups(trajs, lambda t: t.group_id, info)
    loc_b, loc_o = batch_and_credit(local, base)
    results = {}
    # (strategy, loss aggregation, rows per forward, clip the gradient norm)
    for strategy, agg, rows, clip in [("ddp", "token-mean", None, False), ("ddp", "seq-mean-token-mean", 1, True),
                                      ("fsdp2", "token-mean", 1, False)]:
        cfg = TrainConfig(tasks_per_step=3, group_size=4, minibatch_size=12, ppo_epochs=1, max_grad_norm=1e9,
                          loss_agg=agg, seed=0, grad_accum=1, update_chunk_rows=rows, eps_low=0.1, eps_high=0.15,
                          dual_clip_c=1.2, entropy_coef=0.05, kl_coef=0.1, kl_type="k3")
        if clip:  # half the gradient norm: the clipping changes the step, on the global gradient
            probe = copy.deepcopy(base)
            gn = update(cfg, probe, torch.optim.SGD(probe.parameters(), lr=0.5), full_b, full_o)["train/grad_norm"]
            cfg = dataclasses.replace(cfg, max_grad_norm=gn / 2)
        # reference: one process, the whole batch as one minibatch
        ref = copy.deepcopy(base)
        ref_m = update(cfg, ref, torch.optim.SGD(ref.parameters(), lr=0.5), full_b, full_o)
        ref_sd = ref.state_dict()
        # what a per-rank LOCAL mean would give (the bug global counts prevent): mean of the two local losses
        naive = copy.deepcopy(base)
        naive_m = update(cfg, naive, torch.optim.SGD(naive.parameters(), lr=0.5), loc_b, loc_o)
        # distributed
        model = wrap_model(copy.deepcopy(base), strategy, info)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        m = update(cfg, model, opt, loc_b, loc_o, dist=info)
        sd = full_state_dict(model)
        diff = max(float((sd[k] - ref_sd[k]).abs().max()) for k in ref_sd)
        moved = max(float((ref_sd[k] - base.state_dict()[k]).abs().max()) for k in ref_sd)
        div = max_weight_divergence(model, info)
        naive_t = torch.tensor([naive_m["train/loss"]])
        torch.distributed.all_reduce(naive_t)
        results[f"{strategy}/{agg}/rows={rows}/clip={clip}"] = {
            "metrics": m, "ref_metrics": ref_m, "max_diff_vs_ref": diff, "max_grad_norm": cfg.max_grad_norm,
            "weights_moved": moved, "rank_divergence": div, "naive_local_mean_loss": float(naive_t) / 2,
            "local_rows": loc_b.batch_size,
        }
    if info.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
    destroy_distributed()  # every rank: barrier, then leave the group


if __name__ == "__main__":
    from turngym.trainers.distributed import exit_process

    try:
        main()
    except Exception:  # noqa: BLE001 - report, then leave without teardown: torchrun stops the other rank
        traceback.print_exc()
        exit_process(1)
    exit_process(0)
