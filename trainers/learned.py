"""Learned signal components: stateful models the trainer trains beside the policy for a credit method.

Credit modules stay pure functions of tensors; what a method must *learn* across steps lives here, owned by the
trainer (wave-2 spec §1.4, §11): OPRL's implicit PRM (a second language model trained with a trajectory DPO loss)
and LaRe's reward decoder (a small network trained to decompose episode returns over turns).

A credit method declares the components it needs by name (``register_credit(..., learned=("implicit_prm",))``);
`LEARNED_SIGNALS` maps each name to a factory ``factory(ctx: LearnedContext) -> LearnedSignal``. The trainer
(`turngym.trainers.loop`) builds them once per run after the warm start (`build_learned`), restores their state
from a checkpoint on ``--resume`` and saves it in every checkpoint (``components.pt``). Each step, in this order:

1. rollout and signal providers, batch packed, behaviour log-probs;
2. ``component.before_credit(batch, step)`` for each component: writes ``batch.token_features`` /
   ``batch.turn_signals`` the credit method reads (e.g. ``"prm_logprobs"``, ``"lare_reward"``);
3. credit;
4. ``component.after_credit(batch, out, step)``: the component's own training step (the PRM's DPO update, the
   decoder's return-decomposition update);
5. the policy update.

Both hooks return metrics (logged under ``learned/<name>/...``). A factory may carry its options class as
``factory.config_cls``: the trainer's ``signals.<field>=value`` settings are checked against it
(`turngym.trainers.config.check_signal_options`) and handed over as ``ctx.options``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from turngym.errors import ConfigError
from turngym.registry import Registry, unknown_name_message

__all__ = [
    "LEARNED_SIGNALS",
    "LearnedContext",
    "LearnedSignal",
    "after_credit",
    "before_credit",
    "build_learned",
    "import_builtin",
    "learned_state",
    "load_learned_state",
    "register_learned",
]


class LearnedSignal(Protocol):
    """A trainer-owned component that learns across steps and writes signals into the batch."""

    name: str

    def before_credit(self, batch: Any, step: int) -> dict[str, float]:
        """Fill ``batch.token_features`` / ``batch.turn_signals`` for the credit method; return metrics."""

    def after_credit(self, batch: Any, out: Any, step: int) -> dict[str, float]:
        """Train on the step's batch (after credit, before the policy update); return metrics."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (weights, optimizer, buffers), loadable with ``torch.load(weights_only=True)``:
        tensors, numbers, strings, lists and dicts only."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output."""


@dataclass
class LearnedContext:
    """What the trainer hands to a `LEARNED_SIGNALS` factory.

    Attributes:
        method: The credit method being trained.
        options: The ``signals.<field>`` settings (``TrainConfig.signal_overrides``); build the component's options
            with `LearnedContext.options_for`.
        credit_options: The credit method's own options (``credit_overrides``), e.g. OPRL's ``beta``.
        model: The policy after the warm start (OPRL initialises its PRM from it).
        tokenizer: The policy's tokenizer.
        device: Where the policy lives.
        temperature: The rollout temperature (log-probs are of ``softmax(logits / T)``).
        chunk_size: Rows per forward pass of a component that runs a model.
        run_dir: The run directory (None in tests).
        seed: The run's seed (components seed their own generators from it).
        async_rollouts: The batches come from an async producer (``max_staleness > 0``): ``old_logprobs`` are the
            behaviour policy's and must not be recomputed with the learner.
    """

    method: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    credit_options: Mapping[str, Any] = field(default_factory=dict)
    model: Any = None
    tokenizer: Any = None
    device: Any = "cpu"
    temperature: float = 1.0
    chunk_size: int = 8
    run_dir: Any = None
    seed: int = 0
    async_rollouts: bool = False

    def options_for(self, config_cls: type) -> Any:
        """``config_cls`` (a dataclass) built from the entries of ``options`` that name its fields."""
        names = {f.name for f in dataclasses.fields(config_cls)}
        return config_cls(**{k: v for k, v in self.options.items() if k in names})


LearnedFactory = Callable[[LearnedContext], LearnedSignal]
LEARNED_SIGNALS: Registry[LearnedFactory] = Registry("learned signal component")
"""name -> ``factory(ctx: LearnedContext) -> LearnedSignal``; names are what credit methods declare in
``register_credit(..., learned=...)``."""


def register_learned(name: str, config_cls: type | None = None, *, overwrite: bool = False):
    """Decorator: register ``factory(ctx) -> LearnedSignal`` under ``name``, with its options class (if any)."""

    def deco(factory: LearnedFactory) -> LearnedFactory:
        factory.config_cls = config_cls  # type: ignore[attr-defined]
        LEARNED_SIGNALS.add(name, factory, overwrite=overwrite)
        return factory

    return deco


def import_builtin() -> None:
    """Import the trainer-side modules that register built-in learned components and the signal providers that need
    the trainer's packages (LaRe's sandboxed reward code): they need torch models or tools, so they live with the
    trainers, not in `turngym.credit`."""
    import importlib
    import importlib.util

    for mod in ("turngym.trainers.implicit_prm", "turngym.trainers.lare_decoder", "turngym.trainers.lare_code"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


def build_learned(method: str, ctx: LearnedContext) -> list[LearnedSignal]:
    """The learned components credit method ``method`` declares, built from ``ctx`` in the declared order.

    Raises:
        ConfigError: A declared name is not registered (the message lists the registered ones).
    """
    from turngym.credit import credit_needs

    names = credit_needs(method).learned
    if not names:
        return []
    import_builtin()
    for n in names:
        if n not in LEARNED_SIGNALS:
            raise ConfigError(f"credit method {method!r} declares learned component {n!r}, which is not registered: "
                              + unknown_name_message(LEARNED_SIGNALS.kind, n, LEARNED_SIGNALS.names()))
    return [LEARNED_SIGNALS[n](ctx) for n in names]


def before_credit(components: list[LearnedSignal], batch: Any, step: int) -> dict[str, float]:
    """Run every component's `LearnedSignal.before_credit`; metrics prefixed ``learned/<name>/``."""
    out: dict[str, float] = {}
    for c in components:
        out |= {f"learned/{c.name}/{k}": float(v) for k, v in c.before_credit(batch, step).items()}
    return out


def after_credit(components: list[LearnedSignal], batch: Any, credit_out: Any, step: int) -> dict[str, float]:
    """Run every component's `LearnedSignal.after_credit` (its training step); metrics prefixed likewise."""
    out: dict[str, float] = {}
    for c in components:
        out |= {f"learned/{c.name}/{k}": float(v) for k, v in c.after_credit(batch, credit_out, step).items()}
    return out


def learned_state(components: list[LearnedSignal]) -> dict[str, Any]:
    """``{name: state_dict}`` of every component, for the checkpoint's ``components.pt``."""
    return {c.name: c.state_dict() for c in components}


def load_learned_state(components: list[LearnedSignal], state: Mapping[str, Any] | None, where: str = "") -> None:
    """Restore components from a checkpoint's ``components.pt``; a component the checkpoint lacks is an error
    (resuming would silently restart its learning)."""
    from turngym.trainers.checkpoint import CheckpointError

    if not components:
        return
    state = state or {}
    missing = [c.name for c in components if c.name not in state]
    if missing:
        raise CheckpointError(f"checkpoint {where} holds no state for the learned component(s) {missing}: was it "
                              "saved by a run with another credit method?")
    for c in components:
        c.load_state_dict(state[c.name])
