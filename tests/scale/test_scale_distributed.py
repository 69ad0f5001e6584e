"""Distributed learner on CPU: gloo, 2 processes under the real ``torchrun``, DDP and FSDP2.

`turngym.trainers.update.update` with ``dist=info``: both ranks must end with identical weights, equal to ONE
process's update on the whole batch (SGD, so the weights carry the gradient's scale), and the all-reduced metrics
must equal the single-process ones, with ranks holding unequal numbers of rows (4 and 2), where a per-rank local
mean would give a different loss. Every loss term is on (entropy bonus, KL, per-token clip scale, clip range and
dual clip away from their defaults, clipping active), and the cases cover several chunks per rank (unequal chunk
counts: zero-loss padding forwards) and gradient-norm clipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turngym.trainers.distributed import DistInfo, all_reduce, global_counts, init_distributed, shard_groups

HERE = Path(__file__).resolve().parent
TOL = 1e-5


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed()
    assert info == DistInfo(device=torch.device("cpu")) and info.is_main and not info.distributed
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert global_counts(mask, info) == (3.0, 2.0)
    assert all_reduce([1.5, 2.0], info) == [1.5, 2.0]
    items = [("a", 0), ("a", 1), ("b", 2), ("c", 3)]
    assert shard_groups(items, lambda x: x[0], info) == items
    two = [DistInfo(rank=r, world_size=2) for r in range(2)]
    shards = [shard_groups(items, lambda x: x[0], i) for i in two]
    assert shards == [[("a", 0), ("a", 1), ("c", 3)], [("b", 2)]]  # whole groups, round robin


def test_exit_process_flushes_and_skips_finalization():
    """Workers leave with `exit_process` (os._exit) so nothing at interpreter teardown races the gloo threads."""
    code = (
        "import atexit, sys\n"
        "from turngym.trainers.distributed import destroy_distributed, exit_process\n"
        "destroy_distributed()\n"  # no group: a no-op
        "atexit.register(lambda: print('atexit ran'))\n"
        "print('out', end=''); sys.stderr.write('err')\n"
        "exit_process(3)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "out" and proc.stderr.endswith("err")  # flushed, and no atexit handler ran


@pytest.mark.slow
def test_gloo_two_ranks_match_single_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the python running the tests"
    out = tmp_path / "dist.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "scale_dist_worker.py"), str(out)],
        check=False, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(results) == {"ddp/token-mean/rows=None/clip=False", "ddp/seq-mean-token-mean/rows=1/clip=True",
                            "fsdp2/token-mean/rows=1/clip=False"}
    for name, r in results.items():
        m, ref = r["metrics"], r["ref_metrics"]
        assert r["local_rows"] == 4, name  # rank 0 holds 2 groups, rank 1 one group
        assert r["weights_moved"] > 1e-3, name  # the update did something the comparison can see
        assert r["rank_divergence"] == 0.0, name
        assert r["max_diff_vs_ref"] < TOL, (name, r)
        for k in ("train/loss", "train/pg_loss", "train/entropy", "train/kl", "train/clip_frac", "train/ratio_mean",
                  "train/approx_kl", "train/optimizer_steps"):
            assert abs(m[k] - ref[k]) < TOL, (name, k, m[k], ref[k])
        assert abs(m["train/grad_norm"] - ref["train/grad_norm"]) < TOL * max(1.0, ref["train/grad_norm"]), name
        # every term is live: clipping active on some tokens, and entropy / KL change the loss
        assert 0.05 < ref["train/clip_frac"] < 0.95, (name, ref["train/clip_frac"])
        assert abs(ref["train/loss"] - ref["train/pg_loss"]) > 1e-3, (name, ref)
        assert ref["train/entropy"] > 0.1 and ref["train/kl"] > 1e-4, (name, ref)
    clipped = results["ddp/seq-mean-token-mean/rows=1/clip=True"]
    assert clipped["ref_metrics"]["train/grad_norm"] > 1.5 * clipped["max_grad_norm"]  # the clip is active
    # the test can tell global from local normalisation on this batch
    r = results["ddp/token-mean/rows=None/clip=False"]
    assert abs(r["naive_local_mean_loss"] - r["ref_metrics"]["train/loss"]) > 1e-3
