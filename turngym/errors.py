"""One small exception hierarchy, named by the boundary where things go wrong.

Bad rollouts (malformed tool calls, timeouts, dead servers) are *data*, never exceptions. These
exceptions are for framework misuse and configuration errors: each message says what was expected,
what came, and how to fix it.
"""

from __future__ import annotations


class TurngymError(Exception):
    """Base class of every turngym exception."""


class ConfigError(TurngymError, ValueError):
    """A configuration value is unknown, out of range or inconsistent. Raised before any work starts."""


class RegistryError(TurngymError, KeyError):
    """An unknown name was looked up in a registry (env ids, credit methods, loss modes, ...)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class EnvError(TurngymError, RuntimeError):
    """An environment was used against its contract (e.g. ``step`` before ``reset``)."""


class ToolError(TurngymError):
    """A tool was defined wrongly (bad signature, missing docstring). Tool *calls* never raise."""


class SandboxError(TurngymError, RuntimeError):
    """A sandbox backend is unavailable or misconfigured."""


class RenderError(TurngymError, ValueError):
    """A chat template cannot be rendered incrementally (e.g. it is not prefix-preserving)."""


class CreditError(TurngymError, ValueError):
    """A credit method got inputs it cannot use (missing signals, wrong shapes)."""


class SignalError(TurngymError, RuntimeError):
    """A signal provider could not reach its model or service. Never replaced by silent zeros."""


class MissingExtraError(TurngymError, ImportError):
    """An optional backend is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package!r} is not installed; it is needed for this backend. "
            f"Install it with: pip install 'turngym[{extra}]'"
        )
