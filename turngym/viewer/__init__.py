"""The trajectory and credit viewer: `turngym view RUN_DIR_OR_JSONL` writes one self-contained HTML page.

* `annotate` stores per-token strings, advantages, the loss mask and the method's turn advantages in
  ``Trajectory.meta["viewer"]`` (the trainer calls it before logging trajectories).
* `build_page` / `write_page` render run directories and trajectory files (curves from metrics.jsonl as inline
  SVG, trajectories grouped by task, tokens coloured by advantage); `make_server` serves the page on loopback.

See docs/viewer.md.
"""

from __future__ import annotations

from turngym.viewer.annotate import VIEWER_KEY, annotate, decode_tokens, response_length
from turngym.viewer.page import (
    COLOR,
    Source,
    advantage_rgba,
    build_page,
    build_payload,
    load_source,
    make_server,
    svg_curves,
    write_page,
)

__all__ = [
    "COLOR",
    "VIEWER_KEY",
    "Source",
    "advantage_rgba",
    "annotate",
    "build_page",
    "build_payload",
    "decode_tokens",
    "load_source",
    "make_server",
    "response_length",
    "svg_curves",
    "write_page",
]
