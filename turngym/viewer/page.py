"""Build the self-contained HTML page of `turngym view`: load runs / trajectory files, draw curves, serve.

Inputs (each path given to `build_page`):

* a run directory written by `turngym.trainers.runlog.RunLog`: ``trajectories.jsonl`` (lines
  ``{"step", "kind", "trajectory": {...}}``), ``metrics.jsonl`` (learning curves), ``config.yaml`` (method name);
* a plain Trajectory JSONL file (`turngym.types.write_jsonl`, ``turngym rollout --out``), or a trajectories file
  in the run format.

The page holds everything inline (CSS, JS, the data as JSON, the curves as SVG): it opens from disk with no
network. Token colours use the per-token advantages of ``Trajectory.meta["viewer"]`` (see
`turngym.viewer.annotate`); the colour scale is the largest absolute advantage over all loss-mask tokens on the
page (``payload["color"]``, the exact rule is `advantage_rgba`).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from turngym.errors import ConfigError
from turngym.viewer.annotate import VIEWER_KEY, decode_tokens

__all__ = [
    "COLOR",
    "Source",
    "advantage_rgba",
    "build_page",
    "build_payload",
    "load_source",
    "make_server",
    "svg_curves",
    "write_page",
]

#: Token colour rule: positive advantages in ``pos``, negative in ``neg``, alpha ``max_alpha * min(1, |a|/scale)``.
COLOR: dict[str, Any] = {"pos": [22, 163, 74], "neg": [220, 38, 38], "max_alpha": 0.85}

#: Curves drawn from metrics.jsonl: (panel title, [(line kind, metric key), ...]); panels without data are skipped.
CURVES: list[tuple[str, list[tuple[str, str]]]] = [
    ("success rate", [("train", "rollout/success"), ("eval", "eval/success")]),
    ("reward (outcome)", [("train", "rollout/reward"), ("eval", "eval/reward")]),
    ("loss", [("train", "train/loss")]),
    ("KL to reference", [("train", "train/kl")]),
    ("entropy", [("train", "train/entropy")]),
    ("advantage std", [("train", "credit/adv_std")]),
    ("turns per trajectory", [("train", "rollout/turns")]),
    ("SFT loss", [("sft", "sft/loss")]),
]
_SERIES_COLORS = ["#2563eb", "#d97706", "#7c3aed", "#059669", "#db2777", "#0891b2", "#65a30d", "#9333ea"]


@dataclass
class Source:
    """One input: a run directory or a trajectory file.

    Attributes:
        label: Short name shown on the page (the directory or file name).
        path: Where it was read from.
        method: Credit method from the run's ``config.yaml`` (``credit``), "" when unknown.
        rows: ``{"step", "kind", "trajectory"}`` dicts, file order.
        metrics: metrics.jsonl lines (empty for a trajectory file).
        warnings: Lines that could not be read, and similar notes shown on the page.
    """

    label: str
    path: Path
    method: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _read_jsonl(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:  # a killed run can leave a partial last line: data, not a crash
                warnings.append(f"{path.name}:{lineno}: skipped an unreadable line ({e})")
                continue
            if isinstance(obj, dict):
                out.append(obj)
            else:
                warnings.append(f"{path.name}:{lineno}: skipped a line that is not a JSON object")
    return out


def load_source(path: str | os.PathLike[str]) -> Source:
    """Read a run directory or a trajectory JSONL file.

    Raises:
        ConfigError: The path does not exist, or is a directory with neither trajectories.jsonl nor metrics.jsonl.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"turngym view: {p} does not exist. Pass a run directory (with trajectories.jsonl / "
                          "metrics.jsonl) or a trajectory .jsonl file.")
    if p.is_dir():
        src = Source(label=p.resolve().name, path=p)
        traj_file, metrics_file = p / "trajectories.jsonl", p / "metrics.jsonl"
        if not traj_file.is_file() and not metrics_file.is_file():
            raise ConfigError(f"turngym view: {p} is a directory without trajectories.jsonl or metrics.jsonl; "
                              "expected a run directory written by `turngym train` (or pass a .jsonl file).")
        if (p / "config.yaml").is_file():
            import yaml

            try:
                src.config = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                src.warnings.append(f"config.yaml unreadable: {e}")
            src.method = str(src.config.get("credit") or "")
        if metrics_file.is_file():
            src.metrics = _read_jsonl(metrics_file, src.warnings)
        lines = _read_jsonl(traj_file, src.warnings) if traj_file.is_file() else []
    else:
        src = Source(label=p.name, path=p)
        lines = _read_jsonl(p, src.warnings)
    for obj in lines:
        if isinstance(obj.get("trajectory"), dict):
            src.rows.append({"step": obj.get("step"), "kind": obj.get("kind", ""), "trajectory": obj["trajectory"]})
        elif "turns" in obj or "group_id" in obj:
            src.rows.append({"step": None, "kind": "", "trajectory": obj})
        else:
            src.warnings.append("skipped a line that is neither a Trajectory nor {'step', 'kind', 'trajectory'}")
    return src


# ------------------------------------------------------------------------------------------------- payload


def _clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, unknown objects their str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return str(x)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _task_text(prompt_messages: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    for m in prompt_messages:
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return str(meta.get("question") or meta.get("prompt") or "")


def _success(t: dict[str, Any]) -> bool:
    roll = (t.get("meta") or {}).get("rollout") or {}
    if isinstance(roll, dict) and "success" in roll:
        return bool(roll["success"])
    return (_num(t.get("outcome")) or 0.0) >= 1.0


def _split_tokens(t: dict[str, Any], rec: dict[str, Any], tokenizer: Any) -> tuple[list[dict[str, Any]] | None, str]:
    """Per-turn token segments ``[{"act": [[text, adv, mask], ...], "obs": [...]}]`` from ``meta["viewer"]``."""
    turns = t.get("turns") or []
    ids = [i for u in turns for i in (*(u.get("action_ids") or []), *(u.get("obs_ids") or []))]
    n = len(ids)
    adv = rec.get("advantages")
    mask = rec.get("action_mask")
    toks = rec.get("tokens")
    if adv is None and toks is None and tokenizer is None:
        return None, ""
    if mask is None:  # the mask follows from the turn structure
        mask = [m for u in turns for m in ([1] * len(u.get("action_ids") or []) + [0] * len(u.get("obs_ids") or []))]
    if toks is None and tokenizer is not None:
        toks = decode_tokens(tokenizer, ids)
    if toks is None:
        return None, ""
    if adv is None:
        adv = [None] * n
    if not (len(toks) == len(adv) == len(mask) == n):
        return None, (f"meta['viewer'] does not line up with the turns: {len(toks)} tokens, {len(adv)} advantages, "
                      f"{len(mask)} mask entries for {n} response tokens; showing texts only.")
    out, pos = [], 0
    for u in turns:
        seg = {}
        for name, key in (("act", "action_ids"), ("obs", "obs_ids")):
            m = len(u.get(key) or [])
            seg[name] = [[toks[i], _num(adv[i]), int(mask[i])] for i in range(pos, pos + m)]
            pos += m
        out.append(seg)
    return out, ""


def _traj_record(i: int, src: Source, row: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    t = row["trajectory"]
    meta = t.get("meta") or {}
    rec = meta.get(VIEWER_KEY) or {}
    kind = row.get("kind") or ""
    method = str(rec.get("method") or (src.method if kind != "eval" else "") or "")
    segs, warn = _split_tokens(t, rec, tokenizer)
    tadv = rec.get("turn_advantages") or []
    trew = rec.get("turn_rewards") or []
    decisive = set(meta.get("decisive_turns") or [])
    turns = []
    for k, u in enumerate(t.get("turns") or []):
        info = u.get("info") or {}
        turns.append({
            "action": u.get("action_text", ""),
            "calls": _clean(u.get("tool_calls") or []),
            "results": _clean(u.get("tool_results") or []),
            "obs": _clean(u.get("obs_messages") or []),
            "reward": _num(u.get("reward")),
            "signals": _clean(u.get("signals") or {}),
            "value": _num(info.get("value")),
            "value_delta": _num(info.get("value_delta")),
            "parse_errors": _clean(info.get("parse_errors") or []),
            "tadv": _num(tadv[k]) if k < len(tadv) else None,
            "trew": _num(trew[k]) if k < len(trew) else None,
            "decisive": k in decisive,
            "n_act": len(u.get("action_ids") or []),
            "n_obs": len(u.get("obs_ids") or []),
            "tokens": segs[k] if segs is not None else None,
        })
    prompt = t.get("prompt_messages") or []
    return {
        "id": i,
        "src": src.label,
        "step": row.get("step"),
        "kind": kind,
        "group": t.get("group_id", ""),
        "agent": t.get("agent_id", "agent"),
        "env": t.get("env_id", ""),
        "seed": t.get("seed"),
        "outcome": _num(t.get("outcome")),
        "success": _success(t),
        "stop": t.get("stop_reason", ""),
        "answer": t.get("final_answer"),
        "gold": _clean(meta.get("gold_answer")),
        "method": method,
        "ratio_level": rec.get("ratio_level", ""),
        "task": _task_text(prompt, meta),
        "prompt": _clean(prompt),
        "n_prompt": len(t.get("prompt_ids") or []),
        "n_response": sum(u["n_act"] + u["n_obs"] for u in turns),
        "annotated": bool(rec),
        "has_tokens": segs is not None,
        "warn": warn,
        "turns": turns,
    }


def build_payload(sources: Sequence[Source], *, tokenizer: Any = None, max_trajectories: int = 400
                  ) -> dict[str, Any]:
    """The JSON the page's script renders: trajectories (latest ``max_trajectories`` per source), colour scale.

    Args:
        sources: Loaded inputs.
        tokenizer: Optional tokenizer to decode token strings of trajectories without ``meta["viewer"]["tokens"]``.
        max_trajectories: Keep at most this many trajectories per source (the last ones in the file).

    Returns:
        ``{"trajectories": [...], "color": {"scale", "pos", "neg", "max_alpha"}, "sources": [...],
        "warnings": [...]}``.
    """
    trajs: list[dict[str, Any]] = []
    warnings: list[str] = []
    for src in sources:
        rows = src.rows[-max_trajectories:] if max_trajectories else src.rows
        if len(rows) < len(src.rows):
            warnings.append(f"{src.label}: showing the last {len(rows)} of {len(src.rows)} trajectories "
                            "(--max-trajectories)")
        for row in rows:
            trajs.append(_traj_record(len(trajs), src, row, tokenizer))
        warnings += [f"{src.label}: {w}" for w in src.warnings]
    scale = 0.0
    for t in trajs:
        for u in t["turns"]:
            for tok in (u["tokens"] or {}).get("act", []) + (u["tokens"] or {}).get("obs", []):
                if tok[2] and tok[1] is not None:
                    scale = max(scale, abs(tok[1]))
    return {
        "trajectories": trajs,
        "color": {**COLOR, "scale": scale},
        "sources": [{"label": s.label, "path": str(s.path), "method": s.method, "n": len(s.rows)} for s in sources],
        "warnings": warnings,
    }


def advantage_rgba(adv: float | None, mask: int, color: dict[str, Any]) -> tuple[int, int, int, float] | None:
    """The background colour the page gives a token (the same rule as ``advColor`` in the page script).

    Returns:
        ``(r, g, b, alpha)`` for a loss-mask token with a known advantage, None otherwise (no colour: observation
        tokens are never coloured).
    """
    if not mask or adv is None:
        return None
    scale = float(color["scale"])
    x = min(1.0, abs(adv) / scale) if scale > 0 else 0.0
    r, g, b = color["pos"] if adv >= 0 else color["neg"]
    return (r, g, b, round(float(color["max_alpha"]) * x, 3))


# ------------------------------------------------------------------------------------------------- curves


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e4 else f"{v:.2e}"


def _panel_svg(title: str, lines: list[tuple[str, str, bool, list[tuple[float, float]]]]) -> str:
    w, h, ml, mr, mt, mb = 360, 200, 46, 10, 22, 34
    pts = [p for _, _, _, s in lines for p in s]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * (w - ml - mr)

    def sy(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * (h - mt - mb)

    parts = [(f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
              f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">'),
             f'<text x="{ml}" y="14" class="ct">{html.escape(title)}</text>',
             f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" class="cf"/>']
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        parts.append(f'<line x1="{ml}" x2="{w - mr}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" class="cg"/>'
                     f'<text x="{ml - 4}" y="{sy(yv) + 4:.1f}" class="cy">{_fmt(yv)}</text>')
    parts.append(f'<text x="{ml}" y="{h - mb + 14}" class="cx">{_fmt(x0)}</text>'
                 f'<text x="{w - mr}" y="{h - mb + 14}" class="cx" text-anchor="end">{_fmt(x1)}</text>'
                 f'<text x="{(ml + w - mr) / 2:.0f}" y="{h - mb + 14}" class="cx" text-anchor="middle">step</text>')
    legend_y = h - 6
    legend_x = ml
    for label, colour, dashed, series in lines:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        if len(series) > 1:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        for x, y in series:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{colour}">'
                         f'<title>{html.escape(label)} step {_fmt(x)}: {_fmt(y)}</title></circle>')
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 14}" y1="{legend_y - 4}" y2="{legend_y - 4}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/>'
                     f'<text x="{legend_x + 17}" y="{legend_y}" class="cl">{html.escape(label)}</text>')
        legend_x += 24 + 6 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def svg_curves(sources: Sequence[Source]) -> str:
    """Inline SVG learning curves (one panel per metric family in `CURVES`, one line per source and kind).

    Returns:
        HTML (SVG elements), "" when no source has metrics.
    """
    panels = []
    for title, keys in CURVES:
        lines = []
        for si, src in enumerate(sources):
            colour = _SERIES_COLORS[si % len(_SERIES_COLORS)]
            for kind, key in keys:
                xkey = "sft/step" if kind == "sft" else "step"
                series = [(float(m[xkey]), float(m[key])) for m in src.metrics
                          if m.get("kind") == kind and _num(m.get(key)) is not None and _num(m.get(xkey)) is not None]
                if series:
                    name = src.method or src.label
                    label = f"{name} {kind}" if len(keys) > 1 else name
                    lines.append((label if len(sources) > 1 or len(keys) > 1 else name, colour, kind == "eval",
                                  sorted(series)))
        if lines:
            panels.append(_panel_svg(title, lines))
    return "".join(panels)


# ------------------------------------------------------------------------------------------------- page


def _template() -> str:
    return resources.files("turngym.viewer").joinpath("template.html").read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``, no HTML comments)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def build_page(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, tokenizer: Any = None,
               max_trajectories: int = 400, title: str | None = None) -> str:
    """The viewer page for one or more runs / trajectory files, as one HTML string.

    Args:
        paths: Run directories and/or trajectory JSONL files.
        tokenizer: Optional tokenizer (a HF tokenizer object) to decode token strings when the trajectories carry
            no ``meta["viewer"]["tokens"]``.
        max_trajectories: Per source, keep the last this many trajectories.
        title: Page title (default: the source names).

    Returns:
        A self-contained HTML document (inline CSS, JS, data and SVG; no external requests).

    Raises:
        ConfigError: A path is missing or is not a run directory / trajectory file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ConfigError("turngym view: no input given; pass a run directory or a trajectory .jsonl file.")
    sources = [load_source(p) for p in paths]
    payload = build_payload(sources, tokenizer=tokenizer, max_trajectories=max_trajectories)
    title = title or "turngym view: " + ", ".join(s.label for s in sources)
    curves = svg_curves(sources)
    fills = {"__TG_TITLE__": html.escape(title),
             "__TG_CURVES__": curves or '<p class="muted">no metrics.jsonl in the inputs</p>',
             "__TG_DATA__": _script_json(payload)}
    return re.sub("__TG_[A-Z]+__", lambda m: fills[m.group(0)], _template())  # one pass: data never re-scanned


def write_page(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], out: str | os.PathLike[str],
               **kwargs: Any) -> Path:
    """Write `build_page` to `out` (atomically); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(build_page(paths, **kwargs), encoding="utf-8")
    os.replace(tmp, out)
    return out


_LOOPBACK = ("127.", "localhost", "::1")


def make_server(paths: Iterable[str | os.PathLike[str]], *, host: str = "127.0.0.1", port: int = 0,
                **kwargs: Any) -> ThreadingHTTPServer:
    """An HTTP server on loopback that rebuilds the page on every request of ``/`` (a live run refreshes).

    Args:
        paths: As for `build_page`.
        host: Loopback address to bind (anything else is refused: the page shows task data).
        port: TCP port; 0 picks a free one (read it from ``server.server_address[1]``).
        **kwargs: Passed to `build_page`.

    Returns:
        The server, not yet serving: call ``serve_forever()`` (in a thread for tests) and ``shutdown()``.
    """
    if not host.startswith(_LOOPBACK):
        raise ConfigError(f"turngym view --serve binds loopback only; got host={host!r}. Use 127.0.0.1.")
    paths = list(paths)
    build_page(paths, **kwargs)  # fail now, with the usual message, if an input is bad
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] in ("/", "/index.html"):
                with lock:
                    try:
                        body, status = build_page(paths, **kwargs).encode("utf-8"), 200
                    except ConfigError as e:
                        body, status = html.escape(str(e)).encode("utf-8"), 500
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)

