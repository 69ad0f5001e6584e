"""The ``python`` tool: run a snippet in a sandbox and show its output to the model.

>>> from turngym.tools.sandbox import make_sandbox
>>> py = make_python_tool(make_sandbox("auto"), timeout_s=5.0)
>>> ToolSet([py]).execute([ToolCall("python", {"code": "print(6*7)"})])[0].output
'42\\n'

A run that fails (non-zero exit, timeout, memory, output flood) comes back as ``ok=False`` with an
error that says what happened plus the tail of stderr; ``meta`` holds ``exit_code``, ``timed_out``,
``killed_reason``, ``duration_s`` and the sandbox kind. Successful runs show stdout (and stderr, when
there is any, after a ``[stderr]`` line).
"""

from __future__ import annotations

from turngym.errors import ToolError
from turngym.tools.base import Tool
from turngym.tools.sandbox.base import Sandbox
from turngym.types import ToolResult

__all__ = ["make_python_tool"]


def make_python_tool(sandbox: Sandbox, *, timeout_s: float = 5.0, name: str = "python") -> Tool:
    """Build the ``python`` tool over a sandbox.

    Args:
        sandbox: Any `Sandbox` (``make_sandbox("auto")``, ``"subprocess"``, ``"bwrap"``, ``"docker"``).
            The caller owns it and closes it.
        timeout_s: Wall-clock limit of one run inside the sandbox.
        name: Tool name.

    Returns:
        A `Tool` taking one argument ``code: str``; the ToolSet-level timeout of the tool is
        ``timeout_s + 10`` so the sandbox's own, cleaner timeout fires first.
    """
    if not isinstance(sandbox, Sandbox):
        raise ToolError(
            f"make_python_tool needs a Sandbox (from turngym.tools.sandbox.make_sandbox), got {type(sandbox).__name__}."
        )

    def python(code: str) -> ToolResult:
        """Run Python 3 code in an isolated sandbox and return what it prints.

        Args:
            code: A complete Python program; use print() to show results. No network, no persistent files.
        """
        r = sandbox.run(code, timeout_s=timeout_s)
        meta = {
            "exit_code": r.exit_code,
            "timed_out": r.timed_out,
            "killed_reason": r.killed_reason,
            "duration_s": r.duration_s,
            "sandbox": sandbox.kind,
        }
        if r.ok:
            out = r.stdout if not r.stderr.strip() else f"{r.stdout}\n[stderr]\n{r.stderr}"
            return ToolResult(name=name, ok=True, output=out, meta=meta)
        error = r.error_message(timeout_s) or "the code failed"
        if r.stdout.strip():
            error += f"\n[stdout before the failure]\n{r.stdout[-2000:]}"
        return ToolResult(name=name, ok=False, output=r.stdout, error=error, meta=meta)

    return Tool.from_function(python, name=name, timeout_s=timeout_s + 10.0)
