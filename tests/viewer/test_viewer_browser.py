"""The viewer page in a real headless Chromium (Debian `chromium` + `chromium-driver`, driven by Selenium).

The page must load without console errors (from disk and from `turngym view --serve`), a trajectory must expand on
click, every action token's computed background colour must match its advantage in trajectories.jsonl, observation
tokens must stay uncoloured, the filters must hide what they exclude; a screenshot is saved in the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import threading

import pytest
from viewer_helpers import METHOD, read_run_trajectories

CHROMIUM = os.environ.get("TURNGYM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TURNGYM_CHROMEDRIVER", "/usr/bin/chromedriver")
POS, NEG, MAX_ALPHA = (22, 163, 74), (220, 38, 38), 0.85  # the colour rule documented in docs/viewer.md


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium chromium-driver` (.ci/setup-system.sh)"
    if not (os.path.isfile(CHROMEDRIVER) or shutil.which(CHROMEDRIVER)):
        return f"chromedriver not found at {CHROMEDRIVER}: `apt-get install -y chromium-driver`"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `pip install selenium` (turngym[dev])"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1600"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_file(run_dir, tmp_path_factory):
    from turngym.viewer import write_page

    return write_page([run_dir], tmp_path_factory.mktemp("page") / "view.html")


def console_problems(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def parse_rgba(text: str) -> tuple[int, int, int, float]:
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", text)
    assert m is not None, f"not a CSS colour: {text!r}"
    return int(m[1]), int(m[2]), int(m[3]), float(m[4]) if m[4] is not None else 1.0


def test_console_capture_works(browser):
    """The console check below can fail: an error logged by a page is seen."""
    browser.get("data:text/html,<script>console.error('probe-error')</script>")
    assert any("probe-error" in e["message"] for e in console_problems(browser))


def test_page_loads_expands_and_colours_tokens_by_advantage(browser, page_file, run_dir, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(page_file.as_uri())
    assert console_problems(browser) == []
    heads = browser.find_elements(By.CSS_SELECTOR, ".traj-head")
    rows = read_run_trajectories(run_dir)
    assert len(heads) == len(rows) == 12
    groups = browser.find_elements(By.CSS_SELECTOR, "section.group")
    assert len(groups) == len({r["group_id"] for r in rows})

    # expand on click, collapse on a second click
    body = browser.find_element(By.CSS_SELECTOR, '.traj[data-id="0"] .traj-body')
    assert not body.is_displayed()
    heads[0].click()
    assert body.is_displayed() and heads[0].get_attribute("aria-expanded") == "true"
    assert body.find_elements(By.CSS_SELECTOR, "table.signals tr")  # per-turn signals table
    heads[0].click()
    assert not body.is_displayed()

    # expand everything, then read every token's computed style in one script call
    for h in heads:
        h.click()
    got = browser.execute_script("""
        return Array.from(document.querySelectorAll('.traj')).map(function (c) {
          return Array.from(c.querySelectorAll('.turn')).map(function (t) {
            return Array.from(t.querySelectorAll('.tok')).map(function (s) {
              const cs = getComputedStyle(s);
              return [s.textContent, cs.backgroundColor, cs.color, s.classList.contains('m1') ? 1 : 0];
            });
          });
        });""")
    scale = max(abs(a) for r in rows for a, m in zip(r["meta"]["viewer"]["advantages"],
                                                    r["meta"]["viewer"]["action_mask"]) if m)
    signs = set()
    checked = 0
    for r, card in zip(rows, got):
        v = r["meta"]["viewer"]
        flat = [tok for turn in card for tok in turn]
        assert [x[0] for x in flat] == v["tokens"], "token order on the page differs from the data"
        for (text, bg, fg, m1), adv, mask in zip(flat, v["advantages"], v["action_mask"]):
            assert m1 == mask
            r_, g_, b_, alpha = parse_rgba(bg)
            if not mask:  # observation tokens: greyed, never coloured
                assert alpha == 0, f"observation token {text!r} is coloured: {bg}"
                assert parse_rgba(fg)[:3] == (156, 163, 175)
                continue
            want = min(1.0, abs(adv) / scale) * MAX_ALPHA
            if want < 1e-3:
                assert alpha == 0
            else:
                assert (r_, g_, b_) == (POS if adv >= 0 else NEG), f"token {text!r} adv {adv}: {bg}"
                assert alpha == pytest.approx(want, abs=0.01), f"token {text!r} adv {adv}: {bg}"
                signs.add(adv > 0)
            checked += 1
    assert checked > 100 and signs == {True, False}  # real data with both signs was compared

    # filters: outcome = success keeps exactly the successful trajectories; method lists the run's method
    from selenium.webdriver.support.ui import Select

    assert METHOD in [o.text for o in Select(browser.find_element(By.ID, "f-method")).options]
    Select(browser.find_element(By.ID, "f-success")).select_by_value("success")
    shown = [e for e in browser.find_elements(By.CSS_SELECTOR, ".traj") if e.is_displayed()]
    assert len(shown) == sum(bool(r["meta"]["rollout"]["success"]) for r in rows) > 0
    assert all(e.find_element(By.CSS_SELECTOR, ".badge").text.startswith("success") for e in shown)
    Select(browser.find_element(By.ID, "f-success")).select_by_value("all")

    shot = tmp_path / "viewer.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert console_problems(browser) == []


def test_served_page_loads_without_errors(browser, run_dir):
    from selenium.webdriver.common.by import By

    from turngym.viewer import make_server

    server = make_server([run_dir], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".traj-head")) == 12
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")
        assert console_problems(browser) == []
    finally:
        server.shutdown()
        server.server_close()


def test_masked_tokens_are_never_coloured_even_with_an_advantage(browser, tmp_path):
    """A method that (wrongly) leaves advantage on observation tokens: the page still shows them uncoloured."""
    from selenium.webdriver.common.by import By

    from turngym.types import Trajectory, Turn, write_jsonl
    from turngym.viewer import write_page

    t = Trajectory(group_id="hand:0", turns=[Turn(action_ids=[1, 2], action_text="ab", obs_ids=[3, 4])],
                   meta={"viewer": {"tokens": ["a", "b", "O", "P"], "advantages": [0.5, -1.0, 2.0, -2.0],
                                    "action_mask": [1, 1, 0, 0], "turn_advantages": [0.5], "method": "hand"}})
    write_jsonl(tmp_path / "hand.jsonl", [t])
    browser.get(write_page(tmp_path / "hand.jsonl", tmp_path / "hand.html").as_uri())
    browser.find_element(By.CSS_SELECTOR, ".traj-head").click()
    bg = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tok')).filter(function (s) { return !s.closest('.legend'); })"
        ".map(function (s) { return [s.textContent, getComputedStyle(s).backgroundColor]; });")
    colours = {text: parse_rgba(c) for text, c in bg}
    assert colours["a"] == pytest.approx((*POS, 0.425), abs=0.01)  # scale = 1.0 (masked tokens do not count)
    assert colours["b"] == pytest.approx((*NEG, 0.85), abs=0.01)
    assert colours["O"][3] == 0 and colours["P"][3] == 0
    assert console_problems(browser) == []
