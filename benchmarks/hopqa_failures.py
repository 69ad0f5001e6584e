"""Where HopQA episodes fail: sort every episode of saved rollouts by the first thing that went wrong.

    turngym rollout --model RUN search/HopQA-v0 split=test --n 200 --seed-start 1000000 --temperature 0 \\
        --max-new-tokens 64 --max-traj-tokens 768 --out test.jsonl
    python benchmarks/hopqa_failures.py test.jsonl [train.jsonl ...]

Categories (`classify`), per episode, with ``progress`` the number of hops whose fact a search result showed, in
order (the env's measure of progress, `HopQAEnv.turn_value`, read from the saved search results):

* ``success``: every hop's fact was shown and the answer is right;
* ``success, last hop not searched``: the answer is right although the last hop's fact was never shown (the policy
  answered from facts its weights remember of the world);
* ``answered before the last hop``: the last hop's fact was never shown (the policy stopped searching or searched
  for the wrong thing) and the answer is wrong;
* ``every hop shown, wrong entity of the results``: the answer is another name the results showed (a wrong slot);
* ``every hop shown, a name not in the results``: the answer appears in no result (a remembered or made-up name);
* ``no answer``: the episode ended without an answer (turn budget, malformed actions).

Prints a markdown table (one column per file, split by hop count) with the mean number of searches per episode.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

from turngym.envs.builtin.world import fact_sentence

CATEGORIES = ("success", "success, last hop not searched", "answered before the last hop",
              "every hop shown, wrong entity of the results", "every hop shown, a name not in the results",
              "no answer")


def classify(traj: dict[str, Any]) -> str:
    """The category of one saved trajectory (a line of `turngym rollout --out`)."""
    meta = traj["meta"]
    hops, won = int(meta["hops"]), traj["outcome"] >= 1.0
    answer = (traj.get("final_answer") or "").strip()
    shown = " ".join(str(r.get("output", "")) for t in traj["turns"] for r in (t.get("tool_results") or []))
    progress = 0
    for hop in meta["chain"]:
        if fact_sentence(hop["relation"], hop["src"], hop["dst"]) not in shown:
            break
        progress += 1
    if won:
        return "success" if progress >= hops else "success, last hop not searched"
    if not answer:
        return "no answer"
    if progress < hops:
        return "answered before the last hop"
    return "every hop shown, wrong entity of the results" if answer in shown else \
        "every hop shown, a name not in the results"


def searches(traj: dict[str, Any]) -> int:
    return sum(len(t.get("tool_calls") or []) for t in traj["turns"])


def table(files: list[Path]) -> str:
    cols, counts, n, calls = [], {}, {}, {}
    for f in files:
        trajs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for hops in sorted({int(t["meta"]["hops"]) for t in trajs}):
            col = f"{f.stem}, {hops}-hop"
            group = [t for t in trajs if int(t["meta"]["hops"]) == hops]
            cols.append(col)
            counts[col] = collections.Counter(classify(t) for t in group)
            n[col] = len(group)
            calls[col] = sum(searches(t) for t in group) / len(group)
    lines = ["| category | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for cat in CATEGORIES:
        lines.append(f"| {cat} | " + " | ".join(f"{counts[c][cat] / n[c]:.2f}" for c in cols) + " |")
    lines.append("| searches per episode | " + " | ".join(f"{calls[c]:.2f}" for c in cols) + " |")
    lines.append("| episodes | " + " | ".join(str(n[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="trajectory files of `turngym rollout --out` (HopQA)")
    args = ap.parse_args(argv)
    print(table(args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
