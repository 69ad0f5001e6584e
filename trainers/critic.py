"""PPO critics: token values ``V[b, l]`` for the response tokens of a packed chunk.

Two kinds, in the `CRITICS` registry (config ``critic=``):

* ``"head"``: a linear value head on the policy's final hidden state (shared trunk, as in the PPO paper's
  shared-parameter actor-critic and TRL's ``ValueHead``). It reads the hidden states of the policy forward pass
  that `turngym.trainers.update.update` already runs, so the critic costs one ``H -> 1`` matmul; the value loss
  also trains the trunk (scaled by ``value_coef``).
* ``"separate"``: its own copy of the policy's network (initialised from the policy at PPO start, as verl
  initialises its critic from the actor) plus a value head; nothing is shared with the policy.

Positions: the value of response token ``j`` is read at packed position ``P + j - 1``, the same state whose
logits score token ``j``, i.e. ``V(s_j)`` is the value of the context *before* token ``j`` is sampled (verl's
``values[:, -L-1:-1]``). Values are only meaningful on policy tokens; GAE never reads the others.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from turngym.credit.base import GroupBatch
from turngym.registry import Registry
from turngym.trainers.forward import Chunk, chunk_logprobs, iter_chunks

__all__ = ["CRITICS", "Critic", "HeadCritic", "SeparateCritic", "build_critic", "hidden_size"]


def hidden_size(model: nn.Module) -> int:
    """Width ``H`` of a HF causal LM's final hidden state (``config.hidden_size``)."""
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not size:
        raise ValueError(
            f"cannot find the hidden size of {type(model).__name__}: expected config.hidden_size (or n_embd). "
            "Fix: pass a transformers causal LM, or build the critic with an explicit value head."
        )
    return int(size)


class Critic(nn.Module):
    """Base class: ``critic(chunk, hidden) -> values [b, l]`` plus `batch_values` over a whole batch.

    Attributes:
        uses_policy_hidden: True when the critic reads the policy's hidden states (the policy forward pass must
            return them); False when it runs its own network on the chunk.
    """

    uses_policy_hidden: bool = False

    def __init__(self, h: int):
        super().__init__()
        self.value_head = nn.Linear(h, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at start: the first advantages are the raw returns
        nn.init.zeros_(self.value_head.bias)

    def head(self, hidden: Tensor) -> Tensor:
        """``[b, l, H] -> [b, l]`` in float32 (the head runs in fp32 even for a bf16 trunk)."""
        return self.value_head(hidden.float()).squeeze(-1)

    def forward(self, chunk: Chunk, hidden: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def batch_values(self, policy: nn.Module, batch: GroupBatch, chunk_size: int = 16) -> Tensor:
        """``[B, L]`` values of every response token (0 off ``action_mask``), no gradient, eval mode."""
        was_training, policy_training = self.training, policy.training
        self.eval()
        policy.eval()
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=batch.response_ids.device)
        rows = torch.arange(batch.batch_size, device=batch.response_ids.device)
        for chunk in iter_chunks(batch, rows, chunk_size):
            hidden = None
            if self.uses_policy_hidden:
                _, _, hidden = chunk_logprobs(policy, chunk, with_hidden=True)
            out[chunk.rows, : chunk.length] = self(chunk, hidden).float()
        self.train(was_training)
        policy.train(policy_training)
        return torch.where(batch.action_mask, out, torch.zeros_like(out))


class HeadCritic(Critic):
    """Linear value head on the policy's final hidden state (``critic="head"``)."""

    uses_policy_hidden = True

    def __init__(self, policy: nn.Module):
        super().__init__(hidden_size(policy))
        p = next(policy.parameters())
        self.to(device=p.device)

    def forward(self, chunk: Chunk, hidden: Tensor | None = None) -> Tensor:
        """Values ``[b, l]`` from the policy's hidden states ``[b, l, H]`` of the same chunk."""
        if hidden is None:
            raise ValueError(
                "HeadCritic needs the policy's hidden states [b, l, H] of the chunk (chunk_logprobs(..., "
                "with_hidden=True)); got None."
            )
        if hidden.shape[:2] != (len(chunk.rows), chunk.length):
            raise ValueError(
                f"hidden states {tuple(hidden.shape)} do not match the chunk ({len(chunk.rows)} rows, "
                f"{chunk.length} response tokens)."
            )
        return self.head(hidden)


class SeparateCritic(Critic):
    """A separate network of the policy's architecture plus a value head (``critic="separate"``)."""

    uses_policy_hidden = False

    def __init__(self, policy: nn.Module):
        super().__init__(hidden_size(policy))
        self.trunk = copy.deepcopy(policy)  # starts from the (warm-started) policy's weights
        self.trunk.train(policy.training)
        self.to(device=next(policy.parameters()).device)

    def forward(self, chunk: Chunk, hidden: Tensor | None = None) -> Tensor:
        """Values ``[b, l]``: the critic's own forward pass over the chunk (``hidden`` is ignored)."""
        out = self.trunk(
            input_ids=chunk.input_ids, attention_mask=chunk.attention_mask, position_ids=chunk.position_ids,
            use_cache=False, output_hidden_states=True,
        )
        h = out.hidden_states[-1][:, chunk.p - 1: chunk.p - 1 + chunk.length]  # [b, l, H]
        return self.head(h)


#: critic kind -> builder ``(policy) -> Critic``.
CRITICS: Registry[Callable[[nn.Module], Critic]] = Registry("critic")
CRITICS.add("head", HeadCritic)
CRITICS.add("separate", SeparateCritic)


def build_critic(kind: str, policy: nn.Module) -> Critic:
    """The critic ``kind`` (a `CRITICS` key) for ``policy``, on the policy's device, trainable."""
    return CRITICS[kind](policy)
