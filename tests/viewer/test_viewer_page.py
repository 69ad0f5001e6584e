"""The viewer without a browser: annotations line up with the credit tensors, the page is self-contained and holds
the data, inputs of every kind load, the CLI and the loopback server work."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest
from viewer_helpers import METHOD, credited_rollouts, read_run_trajectories

from turngym.cli import main
from turngym.errors import ConfigError
from turngym.types import Trajectory, Turn, write_jsonl
from turngym.viewer import (
    VIEWER_KEY,
    annotate,
    build_page,
    build_payload,
    decode_tokens,
    load_source,
    make_server,
    response_length,
    svg_curves,
)


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="tg-data">(.*?)</script>', page, re.DOTALL)
    assert m is not None, "the page has no embedded data"
    return json.loads(m.group(1))


def test_annotate_matches_the_credit_tensors(tok):
    trajs, _, out = credited_rollouts(tok, [4], noise=0.5, seed=7)
    assert len(trajs) == 3
    for r, t in enumerate(trajs):
        rec = t.meta[VIEWER_KEY]
        n = response_length(t)
        ids = [i for u in t.turns for i in (*u.action_ids, *u.obs_ids)]
        assert len(rec["tokens"]) == len(rec["advantages"]) == len(rec["action_mask"]) == n
        assert "".join(rec["tokens"]) == tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert rec["advantages"] == pytest.approx(out.advantages[r, :n].tolist(), abs=1e-6)
        assert rec["action_mask"] == t.action_mask()[len(t.prompt_ids):]
        assert rec["method"] == METHOD and rec["ratio_level"] == out.ratio_level
        assert rec["turn_advantages"] == pytest.approx(out.turn_advantages[r, : len(t.turns)].tolist(), abs=1e-6)
        assert all(a == 0 for a, m in zip(rec["advantages"], rec["action_mask"]) if not m)
        json.dumps(t.meta, allow_nan=False)  # JSON-safe (NaN turn advantages become None)


def test_annotate_refuses_misaligned_rows(tok):
    trajs, batch, out = credited_rollouts(tok, [5, 6], noise=0.0, seed=3)  # two different tasks, 3 rows each
    assert trajs[0].turns[0].action_ids != trajs[-1].turns[0].action_ids
    with pytest.raises(ValueError, match="does not hold"):
        annotate(list(reversed(trajs)), batch, out, tok, METHOD)
    with pytest.raises(ValueError, match="B trajectories"):
        annotate(trajs[:2], batch, out, tok, METHOD)
    for t in trajs:
        t.meta.pop(VIEWER_KEY, None)
    annotate(trajs, batch, out, None, METHOD, limit=1)  # no tokenizer: advantages only; limit: first row only
    assert trajs[0].meta[VIEWER_KEY]["tokens"] is None and VIEWER_KEY not in trajs[1].meta


def test_decode_tokens_keeps_multibyte_characters_whole(tok):
    text = "Zürich — 東京 🚀 <answer>ok</answer>"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = decode_tokens(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_page_is_self_contained_and_holds_the_run(run_dir):
    page = build_page([run_dir])
    # nothing is fetched: no external script/style/img/link, no url(), no @import
    assert not re.search(r"<(script|img|iframe)[^>]*\bsrc=", page)
    assert re.findall(r"<link[^>]*>", page) == ['<link rel="icon" href="data:,">']
    assert "url(" not in page and "@import" not in page
    assert len(re.findall(r"<script\b", page)) == 2  # the data block and the inline script
    data = page_data(page)
    rows = read_run_trajectories(run_dir)
    assert len(data["trajectories"]) == len(rows) == 12
    for rec, raw in zip(data["trajectories"], rows):
        assert rec["group"] == raw["group_id"] and rec["method"] == METHOD
        v = raw["meta"][VIEWER_KEY]
        flat = [tk for u in rec["turns"] for seg in ("act", "obs") for tk in u["tokens"][seg]]
        assert [tk[0] for tk in flat] == v["tokens"]
        assert [tk[1] for tk in flat] == pytest.approx(v["advantages"])
        assert [tk[2] for tk in flat] == v["action_mask"]
        assert [u["tadv"] for u in rec["turns"]] == pytest.approx(v["turn_advantages"])
        assert [u["signals"].get("match_r") for u in rec["turns"]] == [u["signals"]["match_r"] for u in raw["turns"]]
        assert rec["success"] == raw["meta"]["rollout"]["success"]
    scale = max(abs(a) for raw in rows for a, m in zip(raw["meta"][VIEWER_KEY]["advantages"],
                                                      raw["meta"][VIEWER_KEY]["action_mask"]) if m)
    assert data["color"]["scale"] == pytest.approx(scale) and scale > 0
    # the curves: success (train + eval), reward (train + eval), loss, advantage std, turns
    svg = svg_curves([load_source(run_dir)])
    titles = re.findall(r'class="ct">([^<]+)<', svg)
    assert titles == ["success rate", "reward (outcome)", "loss", "advantage std", "turns per trajectory"]
    assert svg.count("<polyline") == 7


def test_hostile_text_stays_text(tmp_path):
    evil = '</script><script>window.PWNED = 1</script><!-- & "quotes" \u2028'
    t = Trajectory(group_id="g<1>", prompt_messages=[{"role": "user", "content": evil}],
                   turns=[Turn(action_ids=[1, 2], action_text=evil, obs_ids=[3],
                               obs_messages=[{"role": "tool", "name": "search", "content": evil}],
                               signals={"ig": float("nan")})],
                   final_answer=evil, meta={"viewer": {"tokens": [evil, "b", "c"], "advantages": [1.0, -2.0, 0.0],
                                                       "action_mask": [1, 1, 0], "turn_advantages": [None],
                                                       "method": "m"}})
    path = tmp_path / "evil.jsonl"
    write_jsonl(path, [t])
    page = build_page(path, title="</title><b>")
    assert page.count("</script>") == 2 and "PWNED = 1</script>" not in page
    assert "<title>&lt;/title&gt;&lt;b&gt;</title>" in page
    rec = page_data(page)["trajectories"][0]
    assert rec["task"] == evil and rec["turns"][0]["tokens"]["act"][0][0] == evil
    assert rec["turns"][0]["signals"]["ig"] is None  # NaN -> null, the JSON stays strict
    assert page_data(page)["color"]["scale"] == 2.0


def test_plain_jsonl_without_annotations_and_tokenizer_fallback(tmp_path, run_dir, tok):
    trajs = [Trajectory.from_dict(d) for d in read_run_trajectories(run_dir)[:3]]
    for t in trajs:
        t.meta.pop(VIEWER_KEY)
    path = tmp_path / "plain.jsonl"
    write_jsonl(path, trajs)
    data = build_payload([load_source(path)])
    assert [r["has_tokens"] for r in data["trajectories"]] == [False] * 3
    assert data["trajectories"][0]["turns"][0]["action"] == trajs[0].turns[0].action_text
    assert data["color"]["scale"] == 0
    decoded = build_payload([load_source(path)], tokenizer=tok)["trajectories"][0]
    act = decoded["turns"][0]["tokens"]["act"]
    assert "".join(tk[0] for tk in act) == tok.decode(trajs[0].turns[0].action_ids, skip_special_tokens=False)
    assert all(tk[1] is None and tk[2] == 1 for tk in act)  # no advantages: nothing to colour


def test_truncated_lines_become_warnings_and_bad_inputs_raise(tmp_path, run_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with open(run / "trajectories.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "kind": "train", "traj')  # a killed run's partial last line
    data = build_payload([load_source(run)])
    assert len(data["trajectories"]) == 12
    assert any("trajectories.jsonl:13" in w for w in data["warnings"])
    with pytest.raises(ConfigError, match="does not exist"):
        build_page(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without trajectories.jsonl"):
        build_page(tmp_path / "empty")
    data = build_payload([load_source(run)], max_trajectories=5)
    assert [r["group"] for r in data["trajectories"]] == [t["group_id"] for t in read_run_trajectories(run_dir)[-5:]]


def test_cli_writes_the_page_and_reports_bad_paths(tmp_path, run_dir, capsys):
    out = tmp_path / "page.html"
    assert main(["view", str(run_dir), "--out", str(out)]) == 0
    assert len(page_data(out.read_text(encoding="utf-8"))["trajectories"]) == 12
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["view", str(run_dir), "--text", "-n", "1"]) == 0  # the terminal summary is still there


def test_server_serves_the_page_on_loopback_only(run_dir):
    with pytest.raises(ConfigError, match="loopback"):
        make_server([run_dir], host="0.0.0.0")
    server = make_server([run_dir], port=0)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
            assert len(page_data(r.read().decode())["trajectories"]) == 12
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/etc/passwd", timeout=10)
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
