"""LaRe's latent-reward decoder: a learned signal component trained by return decomposition (wave-2 spec §6.1c, §6.2).

``f_ψ: R^D → R`` maps the latent factors of a turn (``turn_signals["lare_z0" … "lare_z{D−1}"]``, written by the
``lare_latent`` provider of `turngym.trainers.lare_code`) to a proxy reward ``r̂_{i,k} = f_ψ(z_{i,k})``. Each step:

1. `LatentRewardDecoder.before_credit` **predicts** ``turn_signals["lare_reward"]`` for the batch (NaN on invalid
   turns) with the current ``ψ``; before ``warmup_steps`` steps, and while ``ψ`` has never been trained (empty
   buffer), it writes nothing and the credit falls back to the outcome (`turngym.credit.lare`).
2. `LatentRewardDecoder.after_credit` adds the batch's ``(z sequence, R)`` pairs to a bounded replay buffer (rows
   with no final answer or a NaN outcome have no target and are left out), then takes ``updates_per_step`` Adam
   steps on the whole buffer with one of the losses (``T_i`` turns, return ``R_i``):

   * ``"rd"``, ``rd_form="sum"`` (framework): ``mean_i (Σ_k r̂_{i,k} − R_i)²``; ``"mean"`` (release ``RD.py``):
     ``mean_i (Σ_k r̂_{i,k}/T_i − R_i/T_i)²``.
   * ``"rrd"`` / ``"rrd_unbiased"`` (release ``rrd.py``): ``K = rrd_k`` turns ``I_i`` sampled per row (with
     replacement iff ``K > T_i``): ``mean_i (mean_{k∈I_i} r̂_{i,k} − R_i/T_i)²``, minus
     ``mean_i ((1 − K/T_i)/K)·var_u{r̂_{i,k}}_{k∈I_i}`` for the unbiased form.

The decoder is an MLP (``layers`` linear layers, ``hidden`` units, ReLU) or a linear map, built when the first batch
shows ``D``, initialised from the run's seed (``torch.random.fork_rng``: the global RNG is untouched). Its weights,
Adam state, replay buffer, sampling generator and counters are its `state_dict` (tensors, numbers and lists only:
``torch.load(weights_only=True)``), saved in every checkpoint's ``components.pt``.

Direct mode (``signals.direct=true``): the provider writes ``lare_reward`` itself (an LLM-designed reward) and no
``lare_z*``; the decoder then leaves the batch alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from turngym.errors import ConfigError, CreditError, SignalError
from turngym.trainers.learned import LearnedContext, register_learned

__all__ = [
    "LaReDecoderConfig",
    "LatentRewardDecoder",
    "build_decoder",
    "latent_names",
    "rd_loss",
    "rrd_indices",
    "rrd_loss",
]

LATENT_PREFIX = "lare_z"
REWARD_SIGNAL = "lare_reward"


@dataclass(frozen=True)
class LaReDecoderConfig:
    """The return-decomposition decoder of LaRe (spec §6.3); set with ``signals.<field>=value``."""

    arch: Literal["mlp", "linear"] = "mlp"
    """MLP (release) or a linear map of the factors."""
    hidden: int = 256
    """Hidden units of the MLP (MuJoCo 256, MPE 64)."""
    layers: int = 3
    """Linear layers of the MLP (MuJoCo 3, MPE 5)."""
    lr: float = 3e-4
    """Adam learning rate (MuJoCo 3e-4, MPE 5e-4)."""
    loss: Literal["rd", "rrd", "rrd_unbiased"] = "rd"
    """Return decomposition over all turns (rd) or randomized over rrd_k sampled turns (rrd, rrd_unbiased)."""
    rd_form: Literal["sum", "mean"] = "sum"
    """rd target: Σ r̂ vs R (framework) or both divided by T (release)."""
    rrd_k: int = 64
    """Turns sampled per trajectory by rrd (MuJoCo 64, MPE 10); with replacement when larger than T."""
    updates_per_step: int = 1
    """Adam steps on the replay buffer per training step."""
    buffer_trajectories: int = 4096
    """Replay buffer size in trajectories (oldest dropped first)."""
    warmup_steps: int = 0
    """Steps before lare_reward is written (the credit uses the outcome meanwhile, fallback_to_outcome)."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "rrd_k", "buffer_trajectories"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"signals.{name}={getattr(self, name)} must be >= 1.")
        if self.updates_per_step < 0 or self.warmup_steps < 0:
            raise ConfigError(f"signals.updates_per_step={self.updates_per_step} and signals.warmup_steps="
                              f"{self.warmup_steps} must be >= 0.")
        if not self.lr > 0:
            raise ConfigError(f"signals.lr={self.lr} must be > 0.")
        for name, allowed in (("arch", ("mlp", "linear")), ("loss", ("rd", "rrd", "rrd_unbiased")),
                              ("rd_form", ("sum", "mean"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"signals.{name}={getattr(self, name)!r} must be one of {allowed}.")


# ------------------------------------------------------------------------------------------------ pure functions


def latent_names(turn_signals: Mapping[str, Any]) -> list[str]:
    """``["lare_z0", …, "lare_z{D−1}"]``: the consecutive latent factors present (empty when ``lare_z0`` is not)."""
    out: list[str] = []
    while f"{LATENT_PREFIX}{len(out)}" in turn_signals:
        out.append(f"{LATENT_PREFIX}{len(out)}")
    return out


def build_decoder(arch: str, n_factors: int, hidden: int = 256, layers: int = 3) -> nn.Module:
    """``f_ψ: [..., D] → [..., 1]``: ``layers`` Linear layers with ReLU between them (``"mlp"``), or one Linear."""
    if arch == "linear" or layers == 1:
        return nn.Linear(n_factors, 1)
    mods: list[nn.Module] = []
    width = n_factors
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


def _check(r_hat: Tensor, mask: Tensor, ret: Tensor) -> None:
    if r_hat.dim() != 2 or mask.shape != r_hat.shape or ret.shape != r_hat.shape[:1]:
        raise ValueError(f"decoder losses expect r_hat[N,T], mask[N,T], ret[N]; got {tuple(r_hat.shape)}, "
                         f"{tuple(mask.shape)}, {tuple(ret.shape)}.")


def rd_loss(r_hat: Tensor, mask: Tensor, ret: Tensor, form: Literal["sum", "mean"] = "sum") -> Tensor:
    """Return-decomposition loss (spec §6.2): ``mean_i (Σ_k r̂_{i,k} − R_i)²`` (``"sum"``) or
    ``mean_i ((Σ_k r̂_{i,k} − R_i)/T_i)²`` (``"mean"``, release).

    Args:
        r_hat: ``[N, T]`` predicted turn rewards.
        mask: ``[N, T]`` bool, the ``T_i`` valid turns of each row.
        ret: ``[N]`` returns ``R_i``.
        form: ``"sum"`` or ``"mean"``.
    """
    _check(r_hat, mask, ret)
    err = torch.where(mask, r_hat, torch.zeros_like(r_hat)).sum(1) - ret
    if form == "mean":
        err = err / mask.sum(1).clamp(min=1).to(err.dtype)
    elif form != "sum":
        raise ValueError(f"rd_loss: form must be 'sum' or 'mean', got {form!r}.")
    return (err * err).mean()


def rrd_indices(lengths: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``[N, k]`` sampled turn indices per row: without replacement when ``k ≤ T_i``, with replacement when
    ``k > T_i`` (release ``rrd.py``). Rows need ``T_i ≥ 1``."""
    n = int(lengths.shape[0])
    t_max = int(lengths.max()) if n else 0
    lengths = lengths.long()
    keys = torch.rand((n, max(t_max, 1)), generator=generator)
    pos = torch.arange(max(t_max, 1))[None, :]
    keys = torch.where(pos < lengths[:, None], keys, torch.full_like(keys, 2.0))
    perm = keys.argsort(dim=1)
    if perm.shape[1] < k:
        perm = torch.cat([perm, perm.new_zeros((n, k - perm.shape[1]))], dim=1)
    without = perm[:, :k]
    with_rep = (torch.rand((n, k), generator=generator) * lengths[:, None]).long().clamp(max=max(t_max - 1, 0))
    return torch.where((lengths < k)[:, None], with_rep, without)


def rrd_loss(r_hat: Tensor, mask: Tensor, ret: Tensor, idx: Tensor, *, unbiased: bool = False) -> Tensor:
    """Randomized return decomposition (spec §6.2) on sampled turns ``idx`` ``[N, K]`` (`rrd_indices`):
    ``mean_i (mean_{k∈I_i} r̂_{i,k} − R_i/T_i)²`` minus, when ``unbiased``,
    ``mean_i ((1 − K/T_i)/K)·var_u{r̂_{i,k}}_{k∈I_i}`` (0 for ``K = 1``)."""
    _check(r_hat, mask, ret)
    t = mask.sum(1).clamp(min=1).to(r_hat.dtype)
    sel = torch.gather(r_hat, 1, idx)  # [N, K]
    k = idx.shape[1]
    err = sel.mean(1) - ret / t
    loss = (err * err).mean()
    if unbiased and k > 1:
        var = sel.var(dim=1, unbiased=True)
        loss = loss - ((1.0 - k / t) / k * var).mean()
    return loss


# ------------------------------------------------------------------------------------------------ the component


class LatentRewardDecoder:
    """The trainer-owned decoder of LaRe (`turngym.trainers.learned.LearnedSignal`); see the module docstring.

    Args:
        cfg: `LaReDecoderConfig`.
        seed: Seeds the initial weights and the rrd sampler.
        device: Where the decoder runs.
    """

    name = "lare_decoder"

    def __init__(self, cfg: LaReDecoderConfig | None = None, *, seed: int = 0, device: Any = "cpu"):
        self.cfg = cfg or LaReDecoderConfig()
        self.seed, self.device = int(seed), torch.device(device)
        self.net: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.n_factors = 0
        self.updates = 0
        self.buffer_z: list[Tensor] = []  # [T_i, D] float32 on the CPU
        self.buffer_r: list[float] = []
        self._gen = torch.Generator().manual_seed(self.seed + 1)
        self._padded: tuple[Tensor, Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ model
    def _build(self, n_factors: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = build_decoder(self.cfg.arch, n_factors, self.cfg.hidden, self.cfg.layers)
        self.net = net.to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        self.n_factors = n_factors

    def _latents(self, batch: Any) -> Tensor | None:
        """``[B, K, D]`` latent factors of the batch (0 where missing or non-finite), or None in direct mode."""
        names = latent_names(batch.turn_signals)
        if not names:
            if REWARD_SIGNAL in batch.turn_signals:
                return None  # direct mode: the provider wrote the reward itself
            raise CreditError("lare_decoder needs the latent factors turn_signals['lare_z0'…] written by the signal "
                              "provider 'lare_latent' (turngym.trainers.lare_code); none are in the batch.")
        if self.net is not None and len(names) != self.n_factors:
            raise SignalError(f"lare_decoder was built for {self.n_factors} latent factors but the batch has "
                              f"{len(names)}: the latent-reward function changed during the run.")
        return torch.stack([batch.turn_signals[n].float() for n in names], dim=-1)

    def predict(self, z: Tensor) -> Tensor:
        """``f_ψ(z)``: ``[..., D] → [...]`` (no grad)."""
        if self.net is None:
            self._build(int(z.shape[-1]))
        with torch.no_grad():
            return self.net(z.to(self.device).float()).squeeze(-1)

    # ------------------------------------------------------------------ hooks
    def before_credit(self, batch: Any, step: int) -> dict[str, float]:
        """Write ``turn_signals["lare_reward"]`` ``[B, K]`` = ``f_ψ(z)`` (NaN on invalid turns) unless in warm-up."""
        t0 = time.perf_counter()
        z = self._latents(batch)
        if z is None:
            return {"direct": 1.0}
        if self.net is None:
            self._build(int(z.shape[-1]))
        if step < self.cfg.warmup_steps or self.updates == 0:
            return {"warmup": 1.0}
        m = batch.turn_mask.bool()
        bad_z = m & ~torch.isfinite(z).all(-1)
        r = self.predict(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)).to(m.device)  # [B, K]
        bad_r = m & ~torch.isfinite(r)
        r = torch.where(bad_r, torch.zeros_like(r), r)
        batch.turn_signals[REWARD_SIGNAL] = torch.where(m, r, torch.full_like(r, float("nan")))
        return {"warmup": 0.0, "reward_mean": float(r[m].mean()) if bool(m.any()) else 0.0,
                "nonfinite": float(int(bad_z.sum()) + int(bad_r.sum())), "predict_s": time.perf_counter() - t0}

    def after_credit(self, batch: Any, out: Any, step: int) -> dict[str, float]:
        """Add the batch to the replay buffer and take ``updates_per_step`` steps of the decoder loss on it."""
        t0 = time.perf_counter()
        z = self._latents(batch)
        if z is None:
            return {}
        added = self.add(z, batch.turn_mask, batch.outcome, batch.scored)
        loss = self.train_steps(self.cfg.updates_per_step)
        m = {"buffer": float(len(self.buffer_r)), "added": float(added), "updates": float(self.updates),
             "update_s": time.perf_counter() - t0}
        return m | ({} if math.isnan(loss) else {"loss": loss})  # no loss while the buffer is empty

    # ------------------------------------------------------------------ buffer and training
    def add(self, z: Tensor, turn_mask: Tensor, outcome: Tensor, scored: Tensor | None = None) -> int:
        """Append rows ``(z[i, :T_i], R_i)`` with a target (finite outcome, ``scored``: an answer or an episode its
        env ended, `GroupBatch.scored`; ≥ 1 turn); returns how many."""
        if self.net is None:
            self._build(int(z.shape[-1]))
        z = torch.nan_to_num(z.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
        m = turn_mask.bool().cpu()
        ret = outcome.detach().double().cpu()
        ok = torch.isfinite(ret) & m.any(1)
        if scored is not None:
            ok &= scored.bool().cpu()
        n = 0
        for i in torch.nonzero(ok).flatten().tolist():
            self.buffer_z.append(z[i][m[i]].clone())
            self.buffer_r.append(float(ret[i]))
            n += 1
        extra = len(self.buffer_r) - self.cfg.buffer_trajectories
        if extra > 0:
            del self.buffer_z[:extra], self.buffer_r[:extra]
        self._padded = None
        return n

    def _pad(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._padded is None:
            lens = torch.tensor([len(x) for x in self.buffer_z], dtype=torch.long)
            zp = nn.utils.rnn.pad_sequence(self.buffer_z, batch_first=True)  # [N, T, D]
            mask = torch.arange(zp.shape[1])[None, :] < lens[:, None]
            ret = torch.tensor(self.buffer_r, dtype=torch.float32)
            self._padded = (zp.to(self.device), mask.to(self.device), ret.to(self.device))
        return self._padded

    def loss(self, z: Tensor, mask: Tensor, ret: Tensor) -> Tensor:
        """The configured loss of ``f_ψ`` on padded ``z`` ``[N, T, D]``, ``mask`` ``[N, T]``, ``ret`` ``[N]``."""
        r_hat = self.net(z).squeeze(-1)  # [N, T]
        r_hat = torch.where(mask, r_hat, torch.zeros_like(r_hat))
        if self.cfg.loss == "rd":
            return rd_loss(r_hat, mask, ret, self.cfg.rd_form)
        idx = rrd_indices(mask.sum(1).cpu(), self.cfg.rrd_k, self._gen).to(r_hat.device)
        return rrd_loss(r_hat, mask, ret, idx, unbiased=self.cfg.loss == "rrd_unbiased")

    def train_steps(self, n: int) -> float:
        """``n`` Adam steps on the whole buffer; returns the last loss (NaN when the buffer is empty)."""
        if not self.buffer_r or n <= 0 or self.net is None:
            return float("nan")
        z, mask, ret = self._pad()
        last = float("nan")
        self.net.train()
        for _ in range(n):
            loss = self.loss(z, mask, ret)
            if not torch.isfinite(loss):
                raise SignalError(f"lare_decoder: non-finite {self.cfg.loss} loss {float(loss)} (lr={self.cfg.lr}).")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.updates += 1
            last = float(loss.detach())
        return last

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Weights, Adam state, replay buffer, rrd generator state and counters (``weights_only``-loadable)."""
        return {
            "n_factors": self.n_factors,
            "updates": self.updates,
            "weights": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()} if self.net else {},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "buffer_z": [x.clone() for x in self.buffer_z],
            "buffer_r": torch.tensor(self.buffer_r, dtype=torch.float64),
            "generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output (the decoder is rebuilt for the saved number of factors)."""
        self.n_factors = int(state["n_factors"])
        self.net = self.optimizer = None
        if self.n_factors > 0:
            self._build(self.n_factors)
            self.net.load_state_dict(state["weights"])
            if state.get("optimizer"):
                self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state.get("updates", 0))
        self.buffer_z = [torch.as_tensor(x).float().clone() for x in state.get("buffer_z", [])]
        self.buffer_r = [float(v) for v in torch.as_tensor(state.get("buffer_r", [])).tolist()]
        if "generator" in state:
            self._gen.set_state(state["generator"])
        self._padded = None


@register_learned("lare_decoder", LaReDecoderConfig)
def make_lare_decoder(ctx: LearnedContext) -> LatentRewardDecoder:
    """The ``lare_decoder`` component of credit method ``lare``: options from ``signals.<field>``, seeded by the run."""
    return LatentRewardDecoder(ctx.options_for(LaReDecoderConfig), seed=ctx.seed, device=ctx.device)
