"""Ray rollout workers on a local Ray cluster (2 CPUs): same trajectories as a local rollout, weight sync."""

from __future__ import annotations

import copy
import math
import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_worker_niceness", "0")  # Ray nices workers to 15: starved on a shared, loaded CPU box
ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from turngym.agents.policy import HFPolicy, SamplingParams, score_sequence
from turngym.agents.ray_rollout import RayRolloutPool, RolloutSpec, RolloutWorker, collect
from turngym.agents.render import Renderer, prompt_tool_schemas
from turngym.agents.rollout import collect_rollouts
from turngym.envs import make

ENV_ID = "search/HopQA-v0"
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=24, seed=5)
SPEC = RolloutSpec(ENV_ID, max_turns=3, max_traj_tokens=96)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    from turngym.agents.tiny import load_policy_model

    model, tok = load_policy_model("tiny", env_id=ENV_ID, cache_dir=tmp_path_factory.mktemp("m"), n_seeds=16)
    env = make(ENV_ID)
    renderer = Renderer(tok, prompt_tool_schemas(env))
    env.close()
    return model, tok, renderer


@pytest.fixture(scope="module")
def pool(tiny):
    model, _, renderer = tiny
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    p = RayRolloutPool(SPEC, model, renderer, num_workers=2, num_cpus_per_worker=0.5)  # 1 CPU left: test 4
    yield p
    p.close()
    ray.shutdown()


def _local(model, tok, renderer, seeds, g, params=PARAMS):
    return collect_rollouts(ENV_ID, HFPolicy(model, tok), renderer, seeds, g, params=params,
                            max_turns=SPEC.max_turns, max_traj_tokens=SPEC.max_traj_tokens)


def _same(a, b):
    assert [t.group_id for t in a] == [t.group_id for t in b]
    for x, y in zip(a, b):
        assert x.token_ids() == y.token_ids() and x.action_mask() == y.action_mask()
        assert (x.outcome, x.stop_reason, x.final_answer, x.meta.get("gold_answer")) == \
               (y.outcome, y.stop_reason, y.final_answer, y.meta.get("gold_answer"))
        for u, v in zip(x.turns, y.turns):
            assert u.action_text == v.action_text and u.obs_messages == v.obs_messages
            assert max(abs(p - q) for p, q in zip(u.logprobs, v.logprobs)) < 1e-5


def test_one_chunk_equals_local_rollout(tiny, pool):
    model, tok, renderer = tiny
    remote, stats = pool.collect([3], 3, PARAMS, return_stats=True)
    _same(remote, _local(model, tok, renderer, [3], 3))
    assert stats.trajectories == 3 and stats.sampled_tokens > 0


def test_many_seeds_on_two_workers_keep_structure_and_fidelity(tiny, pool):
    model, _, _ = tiny
    seeds = [11, 12, 13]
    trajs = pool.collect(seeds, 2, PARAMS)
    assert [t.group_id for t in trajs] == [f"{ENV_ID}:{s}" for s in seeds for _ in range(2)]
    assert len({w for w in ray.get([w.pid.remote() for w in pool.workers])}) == 2
    for t in trajs:  # behaviour log-probs from the workers = the driver's model re-scoring the packed ids
        ids, mask = t.token_ids(), t.action_mask()
        ref = score_sequence(model, ids)
        lps = [lp for u in t.turns for lp in u.logprobs]
        got = [ref[i] for i, m in enumerate(mask) if m]
        assert len(got) == len(lps) > 0
        assert max(abs(a - b) for a, b in zip(got, lps)) < 1e-4
    again = pool.collect(seeds, 2, PARAMS)  # a pure function of (seeds, params.seed, weights)
    _same(trajs, again)


def test_sync_weights_changes_worker_logprobs(tiny, pool):
    model, tok, renderer = tiny
    probe = renderer.initial([{"role": "user", "content": "Who founded Novex?"}]) + [5, 6, 7]
    before = pool.score(probe)
    assert max(abs(a - b) for a, b in zip(before[0], score_sequence(model, probe))) < 1e-5
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    version = pool.sync_weights(new.state_dict())
    after = pool.score(probe)
    ref = score_sequence(new, probe)
    for w in after:
        assert max(abs(a - b) for a, b in zip(w, ref)) < 1e-5
        assert max(abs(a - b) for a, b in zip(w, before[0])) > 1e-3
    assert version == pool.version == 1
    _same(pool.collect([3], 2, PARAMS), _local(new, tok, renderer, [3], 2))
    pool.sync_weights(model)  # a model is accepted too; back to the original weights
    assert pool.version == 2
    assert max(abs(a - b) for a, b in zip(pool.score(probe)[1], before[1])) < 1e-6


def test_workers_import_the_drivers_env_modules(tiny, pool, tmp_path):
    """An id registered by ``--import FILE`` on the driver is known in the worker processes (``env_imports``)."""
    model, tok, renderer = tiny
    mod = tmp_path / "my_envs.py"
    mod.write_text('from turngym.envs import register\n'
                   'register("mine/HopQA-v0", "turngym.envs.builtin.hopqa:HopQAEnv", max_turns=6)\n')
    from turngym.envs.registration import import_modules

    import_modules([str(mod)])  # the driver (this process) knows the id, as after `turngym train --import FILE`
    spec = RolloutSpec("mine/HopQA-v0", max_turns=3, max_traj_tokens=96)
    with pytest.raises(ray.exceptions.RayTaskError, match="mine/HopQA-v0"):  # without env_imports: unknown there
        p = RayRolloutPool(spec, model, renderer, num_workers=1, num_cpus_per_worker=0.5)
        try:
            p.collect([0], 2, PARAMS)
        finally:
            p.close()
    p = RayRolloutPool(RolloutSpec("mine/HopQA-v0", max_turns=3, max_traj_tokens=96, env_imports=(str(mod),)),
                       model, renderer, num_workers=1, num_cpus_per_worker=0.5)
    try:
        trajs = p.collect([0, 1], 2, PARAMS)
    finally:
        p.close()
    local = collect_rollouts("mine/HopQA-v0", HFPolicy(model, tok), renderer, [0, 1], 2, params=PARAMS,
                             max_turns=3, max_traj_tokens=96)
    _same(trajs, local)


def test_in_process_worker_and_trainer_dispatch(tiny, pool):
    """The actor class runs in process too; `collect(cfg, setup, ...)` pushes weights only when they changed."""
    from types import SimpleNamespace

    model, tok, renderer = tiny
    w = RolloutWorker(SPEC, model.config, model.state_dict(), renderer)
    trajs, _, version = w.collect([3], 2, PARAMS)
    assert version == 0
    _same(trajs, _local(model, tok, renderer, [3], 2))
    cfg = SimpleNamespace(env_id=ENV_ID, env_kwargs={}, sampler="group", max_turns=SPEC.max_turns,
                          max_traj_tokens=SPEC.max_traj_tokens, rollout_workers=1, seed=0, temperature=1.0,
                          top_p=1.0, max_new_tokens=24)
    setup = SimpleNamespace(model=copy.deepcopy(model), renderer=renderer)
    from turngym.agents import ray_rollout

    try:
        got, _ = collect(cfg, setup, [3], 2, sample_seed=5)
        _same(got, trajs)
        p = ray_rollout._POOLS[id(setup)]
        got, _ = collect(cfg, setup, [3], 2, sample_seed=5)
        assert p.version == 0  # unchanged model: no push
        with torch.no_grad():
            next(setup.model.parameters()).mul_(1.5)
        collect(cfg, setup, [3], 1, sample_seed=5)
        assert p.version == 1
    finally:
        ray_rollout.close_pools()


def test_async_grpo_samples_on_ray_workers(pool, tmp_path):
    """`grpo.train` with ``rollout_backend=ray`` and ``max_staleness=1`` on the local cluster: a real Ray actor
    samples one step ahead. The pool fixture holds 1 of the cluster's 2 CPUs; the trainer's two pools (the
    producer's and the evaluations') reserve half a CPU each."""
    from turngym.trainers.checkpoint import checkpoint_dirs, load_checkpoint
    from turngym.trainers.config import resolve_train_config
    from turngym.trainers.grpo import train
    from turngym.trainers.runlog import read_metrics

    run = tmp_path / "run"
    cfg = resolve_train_config(None, [
        f"env_id={ENV_ID}", "model=tiny", "model_size=1m", "device=cpu", "credit=grpo", "tasks_per_step=2",
        "group_size=2", "minibatch_size=4", "sft_steps=0", "eval_tasks=2", "max_turns=2", "max_new_tokens=16",
        "max_traj_tokens=256", "save_trajectories=0", "tensorboard=false", "progress=false", "report=false",
        "torch_threads=1", "lr=1e-3", "entropy_coef=0.05", "steps=3", "checkpoint_every=0",
        "rollout_backend=ray", "rollout_workers=1", "rollout_worker_cpus=0.5", "max_staleness=1",
        f"cache_dir={tmp_path / 'models'}", f"run_dir={run}"])
    assert train(cfg)["steps"] == 3
    lines = read_metrics(run, kind="train")
    assert [d["step"] for d in lines] == [1, 2, 3]
    stale = [d["async/staleness_max"] for d in lines]
    assert stale[0] == 0 and set(stale) <= {0, 1} and 1 in stale, stale
    for d in lines:  # a stale batch keeps the Ray worker's behaviour log-probs: the ratio sees the drift
        assert math.isfinite(d["train/loss"]) and (d["train/approx_kl"] > 1e-6) == (d["async/staleness_max"] > 0), d
    first, last = (load_checkpoint(d) for d in checkpoint_dirs(run))
    assert any(not torch.equal(v, last.model_state[k]) for k, v in first.model_state.items())
