"""Data-parallel learner helpers on top of torch.distributed: process group, DDP / FSDP2 wrapping, global counts.

Run a learner on several processes with ``torchrun`` (one process per GPU, or per CPU slot with gloo)::

    torchrun --nproc_per_node 8 my_train.py              # one node
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 my_train.py

Inside the script::

    info = init_distributed()                        # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    model = wrap_model(model, "fsdp2", info)         # or "ddp" for small models, "none" on one process
    metrics = update(cfg, model, optimizer, local_batch, local_credit, dist=info)   # turngym.trainers.update
    ...
    destroy_distributed()                            # every rank: barrier, then leave the group
    exit_process(0)                                  # leave without finalizing the interpreter (gloo threads)

Each rank owns the rows of its own groups (``shard_groups``: whole groups, so group baselines need no
communication). The update is `turngym.trainers.update.update` with ``dist=info``: the loss of a minibatch is
normalised by the GLOBAL number of policy tokens (``token-mean``) or rows (``seq-mean-*``), the local counts being
all-reduced (``global_counts``) and passed to `turngym.trainers.losses.policy_loss` as ``global_tokens`` /
``global_seqs``, so the local losses *sum* over ranks to the loss one process computes on the whole minibatch.
DDP and FSDP2 *average* gradients over ranks, so each local loss is multiplied by the world size before
``backward``: the synchronised gradient is then exactly the single-process gradient
(`tests/scale/test_scale_distributed.py` checks both, gloo, 2 processes). This module holds the process group,
the wrapping and the collectives that update uses (``all_reduce``, ``global_counts``, ``no_grad_sync``,
``dummy_loss``).

Strategies (registry `STRATEGIES`): ``none`` (one process), ``ddp`` (`DistributedDataParallel`, replicated
weights; best for models that fit one device many times), ``fsdp2`` (``torch.distributed.fsdp.fully_shard``
on every decoder layer then the root; sharded weights, gradients and optimizer state). Both run on CPU with
gloo (torch 2.13) as well as on CUDA with NCCL.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from turngym.errors import ConfigError
from turngym.registry import Registry

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank (0 .. world_size - 1).
        world_size: Number of processes (1 when not launched by torchrun).
        local_rank: Rank on this node (picks the CUDA device).
        backend: ``"nccl"``, ``"gloo"`` or ``"none"`` (single process).
        device: The torch device this rank computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = _CPU

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that logs, evaluates and checkpoints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without those variables (a plain ``python`` run) returns a single-process `DistInfo` and starts nothing.

    Args:
        backend: ``"auto"`` (NCCL when CUDA is available, else gloo), ``"nccl"`` or ``"gloo"``.
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU) or a torch device string.

    Returns:
        This process's `DistInfo`.
    """
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dist.is_initialized():
        return DistInfo(device=dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"init_distributed: backend must be 'auto', 'nccl' or 'gloo'; got {backend!r}.")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=backend, device=dev)


def destroy_distributed(barrier: bool = True) -> None:
    """Leave the process group (no-op when none was started).

    Call it on every rank after the last collective, on the success path only (a rank that failed should just
    exit non-zero: torchrun then stops the others, whereas a barrier would wait for the failed rank).

    Args:
        barrier: First wait until every rank is here, so that no rank tears down its connections (or exits)
            while a peer is still inside a collective or has not yet drained it.

    With gloo, ``destroy_process_group`` does NOT stop the group's native threads (one ``gloo_tcp_loop`` I/O
    thread, two ``pt_gloo_runloop`` work threads): ProcessGroupGloo has no ``shutdown``, and the C++ object
    lives on while anything references it (DDP / FSDP2 wrappers, device meshes, work handles); in the test
    worker it is never destroyed before ``exit()``. A plain return from a worker therefore finalizes the
    interpreter and runs the C++ static destructors while those threads are alive and still connected to a
    peer that exits at its own pace: a teardown race that can end in ``std::terminate`` ("terminate called
    without an active exception", SIGABRT) after all the work is done (known path: a gloo thread that needs
    the GIL during finalization is ended by CPython with ``pthread_exit``, whose forced unwind through a
    ``noexcept`` C++ frame terminates). A torchrun worker script should end with `exit_process` after this
    function: it leaves without finalizing, so there is no teardown left to race.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # free what only cycles kept of the group (and its threads) while the interpreter is alive


def exit_process(code: int = 0) -> NoReturn:
    """End a torchrun worker NOW with exit status ``code``, skipping interpreter finalization.

    Flushes ``sys.stdout`` / ``sys.stderr`` then calls ``os._exit``: no atexit handlers, no module teardown, no
    C++ static destructors run while the gloo threads (see `destroy_distributed`) may still be alive, so
    nothing at exit races them. Write and close every output file and call `destroy_distributed` first.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced stream: nothing to flush
            pass
    os._exit(code)


# ----------------------------------------------------------------------------------------------- wrapping

#: Model wrapping strategies, ``fn(model, info) -> model``.
STRATEGIES: Registry[Callable[[Any, DistInfo], Any]] = Registry("data-parallel strategy")


@STRATEGIES.register("none")
def _wrap_none(model, info: DistInfo):
    if info.distributed:
        raise ConfigError(
            f"strategy='none' under {info.world_size} processes would train {info.world_size} diverging copies; "
            "use 'ddp' or 'fsdp2'."
        )
    return model


@STRATEGIES.register("ddp")
def _wrap_ddp(model, info: DistInfo):
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def _decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (``model.model.layers`` for Llama/Qwen/Mistral, ``transformer.h`` for GPT-2)."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "base_model.model.model.layers", "layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return list(obj)
    return []


@STRATEGIES.register("fsdp2")
def _wrap_fsdp2(model, info: DistInfo):
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # pragma: no cover - torch < 2.6
        raise ConfigError("strategy='fsdp2' needs torch >= 2.6 (torch.distributed.fsdp.fully_shard).") from None
    from torch.distributed.device_mesh import init_device_mesh

    if not info.distributed:
        return model
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap_model(model, strategy: str, info: DistInfo):
    """Wrap ``model`` for data-parallel training (`STRATEGIES`: ``none``, ``ddp``, ``fsdp2``).

    Every rank must hold the same initial weights (same seed or same checkpoint); `broadcast_weights` makes
    sure of it. Build the optimizer AFTER wrapping (FSDP2 replaces parameters by sharded DTensors).
    """
    model = model.to(info.device)
    if info.distributed:
        broadcast_weights(model)
    return STRATEGIES[strategy](model, info)


def unwrap(model):
    """The module under a DDP wrapper (FSDP2 modifies the module in place, nothing to unwrap)."""
    return getattr(model, "module", model)


@torch.no_grad()
def broadcast_weights(model, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (before wrapping)."""
    import torch.distributed as dist

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=src)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The full (unsharded) CPU state dict on every rank: what a sampler (vLLM, Ray workers) or a checkpoint needs.

    FSDP2 parameters are DTensors: each one is all-gathered (a collective: call it on every rank).
    """
    out = {}
    for k, v in unwrap(model).state_dict().items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        out[k] = v.detach().cpu()
    return out


@contextmanager
def no_grad_sync(model, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of the backward passes inside (gradient accumulation over chunks)."""
    if not enabled:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


# ----------------------------------------------------------------------------------------------- collectives


def all_reduce(values: Sequence[float], info: DistInfo, op: str = "sum") -> list[float]:
    """Sum (or max) a short vector of floats over ranks; identity on one process."""
    if not info.distributed:
        return [float(v) for v in values]
    import torch.distributed as dist

    dev = info.device if info.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().tolist()


def global_counts(action_mask: torch.Tensor, info: DistInfo) -> tuple[float, float]:
    """``(global_tokens, global_seqs)``: policy tokens and rows with ≥ 1 policy token, summed over ranks.

    Args:
        action_mask: This rank's minibatch mask ``[b, L]``.
        info: The process group.
    """
    local_tokens = float(action_mask.sum())
    local_seqs = float((action_mask.sum(-1) > 0).sum())
    tokens, seqs = all_reduce([local_tokens, local_seqs], info)
    return tokens, seqs


def shard_groups(items: Sequence[Any], group_of: Callable[[Any], str], info: DistInfo) -> list[Any]:
    """This rank's share of ``items``, whole groups only (group ``g`` goes to rank ``g_index % world_size``).

    Groups stay whole so group-relative baselines (GRPO) are computed locally without communication. Ranks may
    get unequal numbers of rows; `turngym.trainers.update.update` with ``dist`` handles it (global counts, a
    zero-loss forward for a rank that has run out of rows).
    """
    order = list(dict.fromkeys(group_of(x) for x in items))
    mine = {g for i, g in enumerate(order) if i % info.world_size == info.rank}
    return [x for x in items if group_of(x) in mine]


@torch.no_grad()
def max_weight_divergence(model, info: DistInfo) -> float:
    """Largest ``|w_rank - w_rank0|`` over all parameters and ranks (0.0 on one process); a collective."""
    if not info.distributed:
        return 0.0
    import torch.distributed as dist

    worst = 0.0
    for v in full_state_dict(model).values():
        ref = v.clone().float()
        dist.broadcast(ref, src=0)
        worst = max(worst, float((v.float() - ref).abs().max()) if v.numel() else 0.0)
    return all_reduce([worst], info, op="max")[0]


# ----------------------------------------------------------------------------------------------- dummy forward


def dummy_loss(model, pad_id: int, device) -> torch.Tensor:
    """A zero loss through a real forward pass of the (wrapped) ``model``: lets a rank that has run out of rows join
    the collectives of a data-parallel update (DDP's gradient all-reduce, FSDP2's all-gathers) with zero gradients."""
    x = torch.full((1, 1), int(pad_id), dtype=torch.long, device=device)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits.float().sum() * 0.0
