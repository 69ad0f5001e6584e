"""One policy update over a `GroupBatch` with its `CreditOutput`: epochs x minibatches of clipped PG.

Rows are split into minibatches of ``cfg.minibatch_size``; each minibatch is run in length-sorted chunks of
``cfg.update_chunk_rows`` rows (`turngym.trainers.forward.iter_chunks`; 8 on CPU) whose losses are aggregated
against the minibatch's own token and row counts, so chunking changes memory and padding, never the loss.
``cfg.grad_accum`` minibatches make one optimizer step. A minibatch whose loss is not finite is skipped (no
optimizer step) and reported.

Data parallel (``dist``, a `turngym.trainers.distributed.DistInfo` of several processes under torchrun): ``batch``
holds this rank's whole groups (`shard_groups`) and ``cfg.minibatch_size`` is the GLOBAL minibatch, each rank
taking ``minibatch_size // world_size`` local rows. For every minibatch the policy-token and row counts are
all-reduced (`global_counts`) and every chunk's loss is normalised by them, so the local losses *sum* over ranks
to the loss one process computes on the whole minibatch; DDP / FSDP2 *average* gradients, so each local loss is
multiplied by the world size before ``backward``, and the synchronised gradient is the single-process gradient
(`tests/scale/test_scale_distributed.py`). Only a minibatch's last chunk synchronises gradients
(`no_grad_sync`). Every rank runs the same number of minibatches and of chunks per minibatch (the largest over
ranks); a rank that has run out does a zero-loss forward (`dummy_loss`), so uneven shards never leave a
collective (DDP's all-reduce, FSDP2's all-gathers) waiting. A non-finite loss on any rank skips the minibatch on
every rank, and the metrics are summed over ranks (identical on every rank).

Credit-method switches (`CreditOutput`): ``out.loss_mask`` (R³L's pivotal credit; None = ``action_mask``) replaces
the action mask for every loss term and count: tokens outside it are not forwarded through the LM head, and leave
the policy, KL, entropy and value terms and every token / row denominator (the global counts included).
``out.loss_type="reinforce"`` trains ``−A·log π·out.loss_scale`` without ratio or clipping
(`turngym.trainers.losses.policy_loss`).
"""

from __future__ import annotations

import math

import torch

from turngym.credit.base import CreditOutput, GroupBatch
from turngym.errors import ConfigError
from turngym.trainers.config import TrainConfig
from turngym.trainers.distributed import DistInfo, all_reduce, dummy_loss, global_counts, no_grad_sync
from turngym.trainers.forward import chunk_logprobs, chunk_rows, iter_chunks
from turngym.trainers.losses import policy_loss, value_loss
from turngym.trainers.memory import update_token_budget
from turngym.trainers.schedule import set_lr

#: Per-minibatch metric sums, in this order (all-reduced as one vector under data parallelism). ``_SUMMED`` terms
#: are already normalised by the minibatch's (global) counts, so a minibatch's value is the sum over its chunks;
#: the others are means over a chunk's own policy tokens, weighted by the chunk's share of the minibatch's tokens.
_KEYS = ("loss", "pg_loss", "clipfrac", "ratio_mean", "approx_kl", "entropy", "kl",
         "value/vf_loss", "value/vpred_mean", "value/vf_explained_var")
_SUMMED = {"loss", "pg_loss", "entropy", "value/vf_loss"}


def resolve_ratio_level(cfg: TrainConfig, out: CreditOutput) -> str:
    """``cfg.ratio_level`` unless "auto", in which case the credit method's own level."""
    return out.ratio_level if cfg.ratio_level == "auto" else cfg.ratio_level


def update(cfg: TrainConfig, model, optimizer, batch: GroupBatch, out: CreditOutput, *, critic=None,
           chunk_size: int | None = None, dist: DistInfo | None = None, pad_id: int = 0) -> dict[str, float]:
    """Run ``cfg.ppo_epochs`` passes of minibatch updates; returns ``train/*`` metrics.

    Args:
        cfg: Loss settings (clip range, aggregation, KL, entropy, value loss).
        model: The policy (``model(input_ids, attention_mask, position_ids)``); under ``dist``, the wrapped policy
            (`turngym.trainers.distributed.wrap_model`).
        optimizer: Steps the policy's (and the critic's, for PPO) parameters; under ``dist``, built over the wrapped
            model's parameters.
        batch: The step's batch with ``old_logprobs`` (and ``ref_logprobs`` / ``values`` when used); under
            ``dist``, this rank's rows.
        out: The credit method's output (advantages, clip scale, ratio level, returns) for ``batch``.
        critic: For PPO: a callable ``critic(chunk) -> values [b, l]`` trained on ``out.returns`` (one process).
        chunk_size: Rows per forward pass (default: `chunk_rows` of ``cfg.update_chunk_rows`` and the local
            minibatch size).
        dist: The process group for data-parallel training (see the module docstring); None or a one-process
            `DistInfo`: the single-process update.
        pad_id: Token id of the zero-loss forward of a rank without rows (data parallel only).

    Returns:
        ``train/*`` metrics: means over the update's minibatches (over every rank's rows under ``dist``).

    Raises:
        ConfigError: A ``critic`` with ``dist`` of several processes (its gradients would not be synchronised).
    """
    world = dist.world_size if dist is not None else 1
    sync = world > 1  # gradients and counts cross processes
    if sync and critic is not None:
        raise ConfigError(
            f"update(dist=...) over {world} processes does not synchronise a critic's gradients; "
            "train PPO's critic on one process, or use a critic-free algorithm (GRPO) data parallel."
        )
    info = dist if dist is not None else DistInfo()
    level = resolve_ratio_level(cfg, out)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = batch.response_ids.device
    local_mb = max(1, cfg.minibatch_size // world)  # rows of this rank per minibatch
    chunk_size = chunk_size or chunk_rows(cfg.update_chunk_rows, local_mb, device)
    max_tokens = update_token_budget(model, device)  # CPU: bounds a forward's saved activations (RSS)
    gen = torch.Generator().manual_seed(cfg.seed + info.rank)
    n_mb = math.ceil(batch.batch_size / local_mb)
    if sync:
        n_mb = int(all_reduce([n_mb], info, op="max")[0])  # every rank runs as many minibatches as the largest
    use_ref = batch.ref_logprobs is not None and not cfg.kl_in_reward
    train_mask = batch.action_mask if out.loss_mask is None else out.loss_mask  # [B, L] the tokens trained
    want_hidden = getattr(critic, "uses_policy_hidden", False)  # value head on the policy's trunk
    sums = dict.fromkeys(_KEYS, 0.0)
    counts = steps = skipped = 0
    grad_norms: list[float] = []
    model.train()
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(batch.batch_size, generator=gen).to(device)
        optimizer.zero_grad(set_to_none=True)
        for mb in range(n_mb):
            rows = order[mb * local_mb:(mb + 1) * local_mb]
            mask = train_mask[rows]  # [b, L]
            n_tokens, n_seqs = global_counts(mask, info)
            if n_tokens == 0:
                continue  # same decision on every rank: the counts are global
            chunks = list(iter_chunks(batch, rows, chunk_size, max_tokens)) if bool(mask.any()) else []
            n_chunks = int(all_reduce([len(chunks)], info, op="max")[0]) if sync else len(chunks)
            local = dict.fromkeys(_KEYS, 0.0)
            bad = False
            for ci in range(n_chunks):
                with no_grad_sync(model, enabled=sync and ci < n_chunks - 1):  # the last chunk syncs gradients
                    if ci >= len(chunks):  # this rank has run out of rows: join the collectives with a zero loss
                        loss = dummy_loss(model, pad_id, device)
                    else:
                        chunk = chunks[ci]
                        r, sl = chunk.rows, slice(0, chunk.length)
                        cmask = train_mask[r, sl]  # [b, l]
                        logp, entropy, hidden = chunk_logprobs(model, chunk, with_entropy=True,
                                                               with_hidden=want_hidden,
                                                               entropy_grad=cfg.entropy_coef != 0,
                                                               temperature=cfg.temperature,
                                                               mask=cmask)  # [b, l], 0 off policy
                        loss, m = policy_loss(
                            logp, batch.old_logprobs[r, sl], out.advantages[r, sl], cmask,
                            batch.turn_id[r, sl], eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                            clip_scale=None if out.clip_scale is None else out.clip_scale[r, sl],
                            dual_clip_c=cfg.dual_clip_c, ratio_level=level, agg=cfg.loss_agg,
                            agg_norm_len=float(cfg.max_traj_tokens), global_tokens=n_tokens, global_seqs=n_seqs,
                            ref_logp=batch.ref_logprobs[r, sl] if use_ref else None,
                            kl_coef=0.0 if cfg.kl_in_reward else cfg.kl_coef, kl_type=cfg.kl_type,
                            entropy=entropy, entropy_coef=cfg.entropy_coef,
                            loss_type=out.loss_type, reinforce_scale=out.loss_scale,
                        )
                        if critic is not None:
                            values = critic(chunk, hidden) if want_hidden else critic(chunk)  # [b, l]
                            vloss, vm = value_loss(values, batch.values[r, sl], out.returns[r, sl], cmask,
                                                   clip_eps=cfg.value_clip, global_tokens=n_tokens,
                                                   global_seqs=n_seqs)
                            loss = loss + cfg.value_coef * vloss
                            m = {**m, **{f"value/{k}": v for k, v in vm.items()}}
                        if not torch.isfinite(loss):
                            bad = True
                            if not sync:
                                break
                            # data parallel: still run this backward (same collectives on every rank); the
                            # minibatch's gradients are dropped below on every rank
                        else:
                            m["loss"] = float(loss.detach())  # with the value term
                            # action entropy: the token mean whatever cfg.loss_agg, for logging
                            m["entropy"] = float(entropy.detach()[cmask].sum()) / n_tokens
                            w = float(cmask.sum()) / n_tokens  # this chunk's share of the minibatch's tokens
                            for k in _KEYS:
                                v = m.get(k)
                                if isinstance(v, (int, float)) and math.isfinite(v):
                                    local[k] += v if k in _SUMMED else w * v
                    (loss * world / cfg.grad_accum).backward()
            vec = [float(bad)] + [local[k] for k in _KEYS]
            if sync:
                vec = all_reduce(vec, info)  # one collective: any rank bad, and the metric sums over ranks
            if vec[0] > 0:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            for k, v in zip(_KEYS, vec[1:]):
                sums[k] += v
            counts += 1
            if (mb + 1) % cfg.grad_accum == 0 or mb + 1 == n_mb:
                gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)  # 0: no clipping
                gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # FSDP2: a DTensor
                if torch.isfinite(gn):
                    set_lr(cfg, optimizer)
                    optimizer.step()
                    steps += 1
                    grad_norms.append(float(gn))
                else:
                    skipped += 1
                optimizer.zero_grad(set_to_none=True)
    model.eval()
    n = max(counts, 1)
    nan_if_none = math.nan if counts == 0 else 0.0  # every minibatch empty or non-finite: the NaN guard sees it
    metrics = {
        "train/loss": sums["loss"] / n + nan_if_none,
        "train/pg_loss": sums["pg_loss"] / n + nan_if_none,
        "train/clip_frac": sums["clipfrac"] / n,
        "train/ratio_mean": sums["ratio_mean"] / n if counts else 1.0,
        "train/approx_kl": sums["approx_kl"] / n,
        "train/entropy": sums["entropy"] / n + nan_if_none,
        "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
        "train/optimizer_steps": float(steps),
    }
    if use_ref and counts:
        metrics["train/kl"] = sums["kl"] / n
    if critic is not None:
        metrics["train/value_loss"] = sums["value/vf_loss"] / n + nan_if_none
        metrics["train/value_mean"] = sums["value/vpred_mean"] / n + nan_if_none
        metrics["train/explained_var"] = sums["value/vf_explained_var"] / n + nan_if_none
    return metrics
