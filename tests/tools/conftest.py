"""Fixtures for the tools tests and the hostile-suite table printed at the end of the run."""

from __future__ import annotations

import os

import pytest
from tools_sandbox_helpers import HOSTILE_OUTCOMES


@pytest.fixture(scope="module")
def sandbox_uid() -> int | None:
    """A uid reserved for the sandboxes under test (so leftover processes can be counted), when root."""
    if os.geteuid() != 0:
        return None
    return 61000 + (os.getpid() % 2000) * 2


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not HOSTILE_OUTCOMES:
        return
    from turngym.tools.sandbox.hostile import format_table

    terminalreporter.write_sep("=", "hostile-code suite (contained / total per sandbox backend)")
    terminalreporter.write_line(format_table(HOSTILE_OUTCOMES))
