"""Helpers shared by the sandbox tests (a uniquely named module, so it never clashes with other areas)."""

from __future__ import annotations

import pytest

HOSTILE_OUTCOMES: dict[str, list] = {}


def backend_skip_reason(kind: str) -> str | None:
    """Why a sandbox backend cannot run here (None when it can)."""
    if kind == "subprocess":
        return None
    if kind == "bwrap":
        from turngym.tools.sandbox import bwrap_unavailable_reason

        return bwrap_unavailable_reason()
    if kind == "docker":
        from turngym.tools.sandbox import docker_unavailable_reason

        return docker_unavailable_reason()
    return f"unknown backend {kind}"


def backend_param(kind: str):
    marks = [pytest.mark.docker] if kind == "docker" else []
    return pytest.param(kind, marks=marks, id=kind)


BACKENDS = [backend_param(k) for k in ("subprocess", "bwrap", "docker")]
