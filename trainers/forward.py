"""Packed forward passes over a `GroupBatch`: response log-probs, entropies, values.

The packed row is ``prompt_ids`` (left-padded) followed by ``response_ids`` (right-padded); positions are
``cumsum(attention) - 1`` so a padded row computes exactly what the unpadded sequence computes (the same
convention the HF sampler uses). The logit at packed position ``P + j - 1`` scores response token ``j``.

Rows are processed in length-sorted chunks: each chunk is cut to its own longest prompt and response, so
short trajectories never pay for the batch's longest one (no wasted padding).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from turngym.credit.base import GroupBatch
from turngym.trainers.losses import entropy_from_logits, token_logprobs


@dataclass
class Chunk:
    """A slice of rows of a batch, cut to the chunk's real prompt and response extent."""

    rows: Tensor  # [b] row indices into the batch
    input_ids: Tensor  # [b, p + l]
    attention_mask: Tensor  # [b, p + l]
    position_ids: Tensor  # [b, p + l]
    p: int  # prompt width kept (rightmost p prompt columns)
    length: int  # response width kept (leftmost l response columns)


def iter_chunks(batch: GroupBatch, rows: Tensor, chunk_size: int) -> Iterator[Chunk]:
    """Yield length-sorted chunks of ``rows`` with padding trimmed to each chunk."""
    prompt_len = batch.prompt_mask.sum(1)  # [B]
    resp_len = batch.attention_mask.sum(1)  # [B]
    order = rows[torch.argsort(prompt_len[rows] + resp_len[rows], descending=True)]
    big_p = batch.prompt_ids.shape[1]
    for start in range(0, len(order), chunk_size):
        idx = order[start:start + chunk_size]
        p = int(prompt_len[idx].max())
        length = max(int(resp_len[idx].max()), 1)
        ids = torch.cat([batch.prompt_ids[idx, big_p - p:], batch.response_ids[idx, :length]], dim=1)
        mask = torch.cat([batch.prompt_mask[idx, big_p - p:], batch.attention_mask[idx, :length]], dim=1)
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
        yield Chunk(idx, ids, mask.long(), pos, p, length)


def chunk_rows(setting: int | None, minibatch: int, device: torch.device) -> int:
    """Rows per forward pass of an update: ``setting`` when given, else 8 on CPU (where padding costs as much as
    real tokens: chunks of 8 instead of 32 halve the padded tokens of a HopQA batch) and ``minibatch`` on GPU."""
    if setting is not None:
        return setting
    return min(8, minibatch) if torch.device(device).type == "cpu" else minibatch


def chunk_logprobs(model, chunk: Chunk, *, with_entropy: bool = False, with_hidden: bool = False,
                   entropy_grad: bool = True, temperature: float = 1.0):
    """Log-probs (and optionally entropies / last hidden states) of a chunk's response tokens.

    ``entropy_grad=False`` computes the entropy for logging only (no autograd graph over the vocabulary).
    ``temperature`` scores the tempered policy ``softmax(logits / temperature)``, the distribution the rollouts
    sampled from (as verl and TRL do); 1.0 is the raw model.

    Returns:
        ``logp`` ``[b, l]``, ``entropy`` ``[b, l]`` or None, ``hidden`` ``[b, l, H]`` or None.
    """
    out = model(
        input_ids=chunk.input_ids,
        attention_mask=chunk.attention_mask,
        position_ids=chunk.position_ids,
        use_cache=False,
        output_hidden_states=with_hidden,
        logits_to_keep=chunk.length + 1,  # no LM head over the prompt columns
    )
    # the kept logits are positions p-1 .. p+l-1; the first l predict response tokens 0 .. l-1
    logits = out.logits[:, : chunk.length].float()  # [b, l, V]
    if temperature != 1.0:
        logits = logits / temperature
    targets = chunk.input_ids[:, chunk.p: chunk.p + chunk.length]  # [b, l]
    logp = token_logprobs(logits, targets)
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = entropy_from_logits(logits if entropy_grad else logits.detach())
    hidden = out.hidden_states[-1][:, chunk.p - 1: chunk.p - 1 + chunk.length] if with_hidden else None
    return logp, ent, hidden


@torch.no_grad()
def batch_logprobs(model, batch: GroupBatch, chunk_size: int = 16, temperature: float = 1.0) -> Tensor:
    """``[B, L]`` log-probs of every response token under ``model`` at ``temperature`` (no grad), 0 past each
    row's end."""
    device = batch.response_ids.device
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=device)
    rows = torch.arange(batch.batch_size, device=device)
    for chunk in iter_chunks(batch, rows, chunk_size):
        logp, _, _ = chunk_logprobs(model, chunk, temperature=temperature)
        out[chunk.rows, : chunk.length] = logp
    return out
