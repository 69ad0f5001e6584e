"""Suite-wide settings.

Hypothesis runs derandomized (a fixed example sequence per test) when ``CI`` is set, so a CI run is
reproducible; locally it explores new examples each run.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
