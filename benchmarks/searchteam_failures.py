"""Where SearchTeam episodes fail: evaluate a multi-agent checkpoint on the held-out tasks and sort every episode
by the first thing that went wrong.

    python benchmarks/searchteam_failures.py RUN/checkpoints/step-00000000 [RUN2/checkpoints/step-00000040 ...]

Each checkpoint is loaded into the ``multi-searchteam`` preset (``multi_init``; ``--set key=value`` changes the
preset, e.g. ``multi_mode=shared`` for a shared-policy run) and plays ``--tasks`` held-out episodes as the trainer's
evaluation does (the same seeds, ``eval_temperature``). Categories (`classify`), in the order an episode meets them:

* ``no notes``: the searcher never handed notes over (turn budget or malformed actions);
* ``no search``: notes without any search, and they lack the answer;
* ``result had it, notes wrong``: a search result held the answer but the notes do not (copying from the result);
* ``no result had it``: no search result held the answer (wrong query or entity), nor do the notes;
* ``notes right, answer wrong``: the notes hold the answer and the answerer did not give it;
* ``success``: the notes held the answer and the answerer gave it;
* ``success, not from the notes``: the answerer gave the answer although the notes did not hold it (every task is
  asked about the same world, so a policy can answer from what its weights remember of it).

Prints a markdown table (one column per checkpoint) and one example episode per category.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATEGORIES = ("no notes", "no search", "result had it, notes wrong", "no result had it", "notes right, answer wrong",
              "success", "success, not from the notes")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def notes_of(searcher) -> str | None:
    """The notes the searcher handed over: the text of its last ``<answer>`` tag, or None."""
    found = [m.group(1).strip() for u in searcher.turns if (m := _ANSWER.search(u.action_text))]
    return found[-1] if found else None


def classify(searcher, answerer) -> str:
    """The first thing that went wrong in one episode (its searcher's and answerer's trajectories)."""
    gold = str(searcher.meta.get("gold_answer", "")).lower()
    notes = notes_of(searcher)
    won = answerer is not None and answerer.outcome >= 1.0
    if won:
        return "success" if notes is not None and gold in notes.lower() else "success, not from the notes"
    if notes is None:
        return "no notes"
    if gold not in notes.lower():
        searched = [u for u in searcher.turns if u.tool_calls]
        if not searched:
            return "no search"
        seen = " ".join(str(r.output) for u in searcher.turns for r in u.tool_results).lower()
        return "result had it, notes wrong" if gold in seen else "no result had it"
    return "notes right, answer wrong"


def evaluate(checkpoint: str, tasks: int, overrides: list[str]) -> tuple[dict[str, int], dict[str, Any], float]:
    """``(counts per category, an example episode per category, eval/success)`` of one checkpoint."""
    import torch

    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.multi import Multi

    torch.set_num_threads(1)
    cfg = resolve_train_config("multi-searchteam", [*overrides, f"multi_init={checkpoint}", f"eval_tasks={tasks}",
                                                    "progress=false", "report=false", "tensorboard=false"])
    algo = Multi()
    s = algo.setup(cfg, None)
    algo.build(cfg, s)
    metrics, trajs = algo.evaluate(cfg, s)
    episodes: dict[Any, dict[str, Any]] = collections.defaultdict(dict)
    for t in trajs:
        episodes[t.meta["episode"]][t.agent_id] = t
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, Any] = {}
    for roles in episodes.values():
        searcher, answerer = roles["searcher_0"], roles.get("answerer_0")
        c = classify(searcher, answerer)
        counts[c] += 1
        examples.setdefault(c, {"question": searcher.meta.get("question"), "gold": searcher.meta.get("gold_answer"),
                                "searcher": [u.action_text for u in searcher.turns],
                                "results": [str(r.output) for u in searcher.turns for r in u.tool_results],
                                "answer": answerer.final_answer if answerer is not None else None})
    return dict(counts), examples, float(metrics["eval/success"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="multi-agent checkpoint folders (or run directories)")
    ap.add_argument("--tasks", type=int, default=200, help="held-out episodes per checkpoint")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the preset")
    args = ap.parse_args(argv)
    results = [evaluate(c, args.tasks, args.set) for c in args.checkpoints]
    print("| category | " + " | ".join(args.checkpoints) + " |")
    print("| --- |" + " ---: |" * len(results))
    for cat in CATEGORIES:
        print(f"| {cat} | " + " | ".join(f"{r[0].get(cat, 0) / max(sum(r[0].values()), 1):.3f}" for r in results)
              + " |")
    print("| eval/success | " + " | ".join(f"{r[2]:.3f}" for r in results) + " |\n")
    for cat, ex in results[0][1].items():
        print(f"- {cat}: {ex}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
