"""The Python training API: ``turngym.train(...)``, what ``turngym train`` runs, callable from a script.

    import turngym
    from my_env import UnitConvEnv

    summary = turngym.train("default", env=UnitConvEnv, steps=20, run_dir="runs/unitconv")
    print(summary["success_before"], "->", summary["success_after"], summary["run_dir"])

`prepare_config` is the step shared with the CLI: it makes ``path/to/file.py:Class`` env ids and ``--import`` files
absolute (so the saved ``config.yaml`` works from any directory, for ``--resume`` and ``turngym eval``), and, for an
env without a scripted expert, turns the SFT warm start off with one line saying so.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

NO_EXPERT_HINT = (
    "{env} has no scripted expert (_expert_next): no SFT warm start (sft_steps=0, pretrain_steps=0), so the "
    "tiny policy starts from random weights and rarely calls a tool; write an expert (docs/custom_env.md), or "
    "use a pretrained model that already calls your tools (model=<HF id or dir>; measured: model=smollm2-135m "
    "made no tool call on the example env, so RL had no reward to learn from)."
)


def env_target(env: Any) -> str:
    """The ``env_id`` string of an env class (``"module:Class"``, or ``"/abs/file.py:Class"`` for a class of a
    script or a file outside the import path); a string is returned as given.

    A class defined in a running script (``__main__``) is made available to this process under its file target,
    so the script is not imported again here; ``--resume`` and ``turngym eval`` of the run import the file (guard
    the script's own work with ``if __name__ == "__main__":``).
    """
    if isinstance(env, str):
        return env
    if not inspect.isclass(env):
        raise TypeError(f"env must be an env id string or an env class, got {type(env).__name__}.")
    from turngym.envs import registration

    module = sys.modules.get(env.__module__)
    file = getattr(module, "__file__", None)
    if env.__module__ != "__main__" and not env.__module__.startswith("turngym_user_"):
        return f"{env.__module__}:{env.__qualname__}"
    if file is None:
        raise ValueError(
            f"{env.__qualname__} is defined interactively (no file); save it in a .py file, or register it and pass "
            "its id."
        )
    target = f"{Path(file).resolve()}:{env.__qualname__}"
    registration._TARGETS.setdefault(target, registration.EnvSpec(id=target, entry_point=env))
    return target


def has_scripted_expert(env_id: str) -> bool | None:
    """Whether the env's class overrides ``Env._expert_next`` (None: not a `turngym.envs.Env`)."""
    from turngym.envs import Env, spec

    factory = spec(env_id).load()
    if not (inspect.isclass(factory) and issubclass(factory, Env)):
        return None
    return factory._expert_next is not Env._expert_next


def prepare_config(cfg: Any, *, say: Callable[[str], None] | None = None) -> Any:
    """Absolute env file paths; for an env without a scripted expert, SFT off with one line to ``say``."""
    from turngym.envs.registration import is_env_target, resolve_env_id

    imports = [str(Path(m).expanduser().resolve()) if str(m).endswith(".py") else str(m) for m in cfg.env_imports]
    changes: dict[str, Any] = {}
    if resolve_env_id(cfg.env_id) != cfg.env_id:
        changes["env_id"] = resolve_env_id(cfg.env_id)
    if imports != list(cfg.env_imports):
        changes["env_imports"] = imports
    if cfg.algo != "multi" and (cfg.sft_steps > 0 or cfg.pretrain_steps > 0) and not cfg.resume:
        expert = has_scripted_expert(changes.get("env_id", cfg.env_id))
        if expert is False:
            changes |= {"sft_steps": 0, "pretrain_steps": 0}
            name = cfg.env_id.rpartition(":")[2] if is_env_target(cfg.env_id) else cfg.env_id
            (say or _stderr)(NO_EXPERT_HINT.format(env=name))
    return cfg.replace(**changes) if changes else cfg


def _stderr(text: str) -> None:
    print(f"turngym train: note: {text}", file=sys.stderr, flush=True)


def train(
    config: Any = None,
    *,
    env: Any = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    imports: Sequence[str] = (),
    **fields: Any,
) -> dict[str, Any]:
    """Train a policy, as ``turngym train`` does, and return the run summary.

    Args:
        config: A preset name (``"default"``, ``"grpo"``, ...), a YAML path, a `TrainConfig`, a dict of fields, or
            None (the ``default`` preset).
        env: The env: an env class (a `turngym.envs.Env` subclass), a registered id, ``"module:Class"`` or
            ``"path/to/file.py:Class"``; None keeps the config's ``env_id``.
        overrides: ``key=value`` strings (as on the command line) or a dict of fields.
        imports: Modules (or .py files) whose `register` calls must run first (``--import``).
        **fields: More config fields (``steps=20``, ``run_dir="runs/x"``, ``env_kwargs={...}``).

    Returns:
        The trainer's summary: ``run_dir``, ``success_before``, ``success_after``, ``report``, ...

    Raises:
        ConfigError: A bad config value, unknown env, or ``env_kwargs`` the env does not take (nothing is written).
    """
    import dataclasses
    import importlib

    from turngym.config import merge, to_dict
    from turngym.envs.registration import import_modules
    from turngym.errors import ConfigError, RegistryError
    from turngym.trainers import TRAINERS
    from turngym.trainers.config import TrainConfig, check_run_dir, load_preset

    try:
        import_modules(imports)
    except RegistryError as err:
        raise ConfigError(str(err)) from None
    if isinstance(config, TrainConfig):
        base: dict[str, Any] = to_dict(config)
    elif isinstance(config, Mapping):
        base = merge(load_preset("default"), dict(config))
    else:
        base = load_preset(config or "default")
    extra = dict(overrides) if isinstance(overrides, Mapping) else {}
    extra |= fields
    if env is not None:
        extra["env_id"] = env_target(env)
    if imports:
        extra["env_imports"] = [*base.get("env_imports", []), *imports]
    if not isinstance(config, TrainConfig):
        from turngym.trainers.config import env_preset

        texts = [] if isinstance(overrides, Mapping) else list(overrides)
        new_env = extra.get("env_id") or next((t.partition("=")[2] for t in reversed(texts)
                                              if t.partition("=")[0].strip() == "env_id"), None)
        base = env_preset(base, new_env)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(extra) - names)
    if unknown:
        from turngym.registry import unknown_name_message

        raise ConfigError(unknown_name_message("config key", unknown[0], sorted(names)))
    from turngym.config import from_dict, parse_overrides

    texts = [] if isinstance(overrides, Mapping) else list(overrides)
    cfg = from_dict(TrainConfig, merge(base, extra, parse_overrides(TrainConfig, texts)))
    cfg.validate_names()
    from turngym.trainers.config import check_credit_options

    cfg = cfg.replace(credit_overrides=check_credit_options(cfg.credit, cfg.credit_overrides))  # typed values
    from turngym.agents.tiny import check_model_name

    check_model_name(cfg.model)
    cfg = prepare_config(cfg)
    from turngym.trainers.runlog import check_run_dir_free

    check_run_dir_free(cfg.run_dir, cfg.resume)
    check_run_dir(cfg)
    module, _, attr = TRAINERS[cfg.algo].partition(":")
    return getattr(importlib.import_module(module), attr)(cfg)
