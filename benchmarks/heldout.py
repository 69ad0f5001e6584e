"""How many evaluation tasks are tasks the training seeds also draw, per env and split.

    python benchmarks/heldout.py                               # the envs and draw counts of the studies
    python benchmarks/heldout.py --env search/HopQA-v0 --kwargs '{"topk": 1}' --train 800 --eval 200

Training draws seeds ``0..train-1``, evaluation ``1,000,000..`` (turngym's ``eval_seed``); a task is the same
task when its prompt, gold answer and first observation are (for TextWorld, also the walkthrough). For each env the
table gives the distinct tasks among the training draws, the evaluation tasks among them, and the distinct
evaluation tasks, with the env's default split (``"auto"``: held-out tasks from seed 1,000,000) and with
``split="all"`` (every seed from one task set, as before the split; TextWorld's ``"train"`` is its old pool).
"""

from __future__ import annotations

import argparse
import json

from turngym.config import accepted_kwargs
from turngym.envs import make, spec

# (env id, kwargs, training draws, evaluation draws): the main job, the studies' TextWorld presets, PyTask
DEFAULT = [
    ("search/HopQA-v0", {"topk": 1}, 800, 200),  # the main job: 50 steps x 16 tasks, 200 evaluation tasks
    ("text/TextWorld-v0", {}, 120, 100),  # its study: 15 steps x 8 tasks, 100 evaluation tasks
    ("text/TextWorld-Long-v0", {}, 40, 50),  # its study: 10 steps x 4 tasks, 50 evaluation tasks
    ("code/PyTask-v0", {"sandbox": "subprocess"}, 800, 200),
    ("tool/Calc-v0", {}, 800, 200),
]


def overlap(env_id: str, kwargs: dict, n_train: int, n_eval: int) -> dict:
    env = make(env_id, **kwargs)
    try:
        def key(seed: int) -> tuple:
            obs, _ = env.reset(seed=seed)
            task = env.unwrapped.task
            return task.prompt, str(task.gold_answer), str(task.meta.get("walkthrough", "")), str(obs)[:2000]

        train = {key(s) for s in range(n_train)}
        ev = [key(1_000_000 + s) for s in range(n_eval)]
    finally:
        env.close()
    return {"train_distinct": len(train), "eval_seen": sum(k in train for k in ev), "eval_distinct": len(set(ev))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default=None, help="one env id (default: the table's envs)")
    ap.add_argument("--kwargs", default="{}", help="env kwargs as JSON (with --env)")
    ap.add_argument("--train", type=int, default=800, help="training draws (with --env)")
    ap.add_argument("--eval", type=int, default=200, help="evaluation draws (with --env)")
    a = ap.parse_args()
    rows = [(a.env, json.loads(a.kwargs), a.train, a.eval)] if a.env else DEFAULT
    print("| env | kwargs | split | training draws -> distinct tasks | evaluation tasks seen in training | "
          "distinct evaluation tasks |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for env_id, kwargs, n_train, n_eval in rows:
        old = "train" if env_id.startswith("text/TextWorld") else "all"
        has_split = "split" in (accepted_kwargs(spec(env_id).load()) or ())
        for split in ("auto", old) if has_split else ("(none)",):
            r = overlap(env_id, {**kwargs, "split": split} if split not in ("auto", "(none)") else kwargs, n_train, n_eval)
            print(f"| `{env_id}` | `{json.dumps(kwargs)}` | {split} | {n_train} -> {r['train_distinct']} | "
                  f"{r['eval_seen']} of {n_eval} | {r['eval_distinct']} |", flush=True)


if __name__ == "__main__":
    main()
