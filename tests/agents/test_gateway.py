"""The OpenAI-compatible gateway (turngym.agents.gateway) driven by the real `openai` client on loopback.

Most tests sample with the real tiny HopQA policy (`HFPolicy`), watched by `Spy` (it forwards every call and keeps
the contexts and samples). Two tests need the policy to write given texts (a tool call, a reasoning block), which a
random-init model does not: `TextPolicy` returns the token ids of a scripted text, with the real model's
teacher-forced log-probs; the same recording path is checked with the real sampler in the other tests.
"""

from __future__ import annotations

import asyncio
import copy
import json

import httpx
import pytest

from turngym.agents.gateway import Gateway
from turngym.agents.policy import HFPolicy, Sample, SamplingParams, decode_action, score_sequence
from turngym.agents.render import Renderer
from turngym.agents.tiny import TINY_CHAT_TEMPLATE
from turngym.types import Trajectory

openai = pytest.importorskip("openai")

ENV_ID = "search/HopQA-v0"
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the encyclopedia.",
                                           "parameters": {"type": "object", "properties": {
                                               "query": {"type": "string", "description": "what to look up"}},
                                               "required": ["query"]}}}


class Spy:
    """Forwards to a real policy and keeps every (context, sample) pair and the batch size of every call."""

    def __init__(self, policy):
        self.policy = policy
        self.calls: list[tuple[list[list[int]], list[Sample]]] = []
        self.max_positions = policy.max_positions
        self.stop_token_ids = policy.stop_token_ids

    def generate(self, contexts, params, **kw):
        out = self.policy.generate(contexts, params, **kw)
        self.calls.append(([list(c) for c in contexts], out))
        return out

    def sample_for(self, context: list[int]) -> Sample:
        hits = [s for cs, ss in self.calls for c, s in zip(cs, ss) if c == context]
        assert len(hits) == 1, f"{len(hits)} samples for this context"
        return hits[0]


class TextPolicy:
    """Writes scripted texts (one per call, in order) as token ids ending with the end-of-turn token; log-probs are
    the real model's teacher-forced ones at the context."""

    def __init__(self, model, tok, texts: list[str], eot: int):
        self.model, self.tok, self.texts, self.eot = model, tok, list(texts), eot
        self.max_positions = model.config.max_position_embeddings
        self.stop_token_ids = [eot]
        self.sampled: list[list[int]] = []

    def generate(self, contexts, params, **kw):
        out = []
        for c in contexts:
            ids = list(self.tok.encode(self.texts.pop(0), add_special_tokens=False)) + [self.eot]
            lps = score_sequence(self.model, list(c) + ids)[len(c):]
            self.sampled.append(ids)
            out.append(Sample(ids=ids, logprobs=lps, text=decode_action(self.tok, ids, [self.eot]),
                              finish_reason="stop"))
        return out


@pytest.fixture(scope="module")
def parts(tiny):
    model, tok = tiny
    return model, tok, Renderer(tok)


def _client(gw: Gateway, eid: str):
    return openai.OpenAI(base_url=gw.episode_url(eid), api_key="test", max_retries=0, timeout=60)


def _hopqa(seed: int):
    from turngym.envs import make

    env = make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    return env, obs


def test_tool_calls_round_trip(parts):
    model, tok, renderer = parts
    texts = ['Look it up. <tool_call>{"name": "search", "arguments": {"query": "founder of Zentrix"}}</tool_call>',
             "<answer>Mira Tal</answer>"]
    pol = TextPolicy(model, tok, texts, renderer.eot_id)
    msgs = [{"role": "system", "content": "Answer with the search tool."}, {"role": "user", "content": "Who?"}]
    with Gateway(pol, renderer, parser="hermes") as gw:
        eid = gw.new_episode(group_id="g0", meta={"gold_answer": "Mira Tal"})
        client = _client(gw, eid)
        r1 = client.chat.completions.create(model="m", messages=msgs, tools=[SEARCH], max_tokens=128)
        m1 = r1.choices[0].message
        assert r1.choices[0].finish_reason == "tool_calls"
        assert m1.content == "Look it up."
        (call,) = m1.tool_calls
        assert call.function.name == "search" and json.loads(call.function.arguments) == {"query": "founder of Zentrix"}
        msgs += [m1.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Zentrix was founded by Mira Tal."}]
        r2 = client.chat.completions.create(model="m", messages=msgs, tools=[SEARCH], max_tokens=128)
        assert r2.choices[0].message.content == "<answer>Mira Tal</answer>" and not r2.choices[0].message.tool_calls
        httpx.post(f"{gw.url}/episodes/{eid}/end", json={"reward": 1.0, "final_answer": "Mira Tal"}).raise_for_status()
        (traj,) = gw.trajectories()
    t0, t1 = traj.turns
    assert [(c.name, c.arguments, c.id) for c in t0.tool_calls] == [("search", {"query": "founder of Zentrix"}, call.id)]
    assert [(r.name, r.output, r.call_id) for r in t0.tool_results] == [
        ("search", "Zentrix was founded by Mira Tal.", call.id)]
    assert t0.obs_messages == [{"role": "tool", "tool_call_id": call.id, "name": "search",
                                "content": "Zentrix was founded by Mira Tal."}]
    assert [t0.action_ids, t1.action_ids] == pol.sampled  # the sampled ids, not a re-tokenization of the returned text
    assert t0.obs_ids == renderer.for_tools([SEARCH]).observation(t0.obs_messages)
    assert traj.outcome == 1.0 and t1.reward == 1.0 and traj.final_answer == "Mira Tal"
    assert traj.group_id == "g0" and traj.meta["gold_answer"] == "Mira Tal"


def test_recorded_ids_equal_the_samplers(parts):
    model, tok, renderer = parts
    spy = Spy(HFPolicy(model, tok, seed=3))
    env, obs = _hopqa(5)
    env.close()
    msgs = list(obs)
    with Gateway(spy, renderer) as gw:
        eid = gw.new_episode()
        client = _client(gw, eid)
        for k in range(3):
            r = client.chat.completions.create(model="m", messages=msgs, max_tokens=12, temperature=1.0,
                                               logprobs=True, extra_body={"return_token_ids": True})
            ext = r.model_extra["turngym"]
            assert [x.logprob for x in r.choices[0].logprobs.content] == pytest.approx(ext["logprobs"])
            msgs += [{"role": "assistant", "content": r.choices[0].message.content},
                     {"role": "user", "content": f"observation {k}"}]
        gw.end_episode(eid, 0.5)
        (traj,) = gw.trajectories()
    assert len(spy.calls) == 3 and traj.prompt_ids == renderer.initial(obs)
    ids = list(traj.prompt_ids)
    for turn, (contexts, samples) in zip(traj.turns, spy.calls):
        assert contexts == [ids]  # the context sampled from is the recorded sequence so far
        assert turn.action_ids == samples[0].ids and turn.logprobs == samples[0].logprobs
        ids += turn.action_ids + turn.obs_ids
    assert traj.token_ids() == ids[: len(traj.token_ids())]
    full = traj.token_ids()
    rescored = score_sequence(model, full)
    pos = len(traj.prompt_ids)
    for turn in traj.turns:
        assert turn.logprobs == pytest.approx(rescored[pos: pos + len(turn.action_ids)], abs=1e-4)
        pos += len(turn.action_ids) + len(turn.obs_ids)


def test_resent_history_gives_the_env_api_batch(parts):
    """The same greedy HopQA episode, once by the env-API rollout engine, once by an agent through the gateway that
    re-sends the history: the packed batches are identical."""
    from turngym.agents.rollout import collect_rollouts
    from turngym.credit import GroupBatch

    model, tok, renderer = parts
    policy = HFPolicy(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    (ref,) = collect_rollouts(ENV_ID, policy, renderer, [11], 1, params=params)
    policy.clear_cache()
    env, obs = _hopqa(11)
    msgs = list(obs)
    with Gateway(policy, renderer) as gw:
        eid = gw.new_episode(group_id=f"{ENV_ID}:11", meta=ref.meta)
        client = _client(gw, eid)
        while True:
            r = client.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0)
            text = r.choices[0].message.content
            new, reward, terminated, truncated, _ = env.step(text)
            if terminated or truncated:
                break
            msgs += [r.choices[0].message.model_dump(exclude_none=True), *new]
        gw.end_episode(eid, reward)
        (traj,) = gw.trajectories()
    env.close()
    assert len(traj.turns) == len(ref.turns) >= 2
    assert traj.token_ids() == ref.token_ids() and traj.action_mask() == ref.action_mask()
    a = GroupBatch.from_trajectories([ref], pad_id=0)
    b = GroupBatch.from_trajectories([traj], pad_id=0)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "attention_mask", "action_mask", "turn_id",
                 "old_logprobs"):
        assert getattr(a, name).equal(getattr(b, name)), name


def _qwen_style_template() -> str:
    """The tiny template, but past reasoning is stripped: assistant messages before the last user message render
    only what follows their ``</think>`` (as Qwen3's template does)."""
    head = ("{%- set ns2 = namespace(last=-1) -%}{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
            "{%- set ns2.last = loop.index0 -%}{%- endif -%}{%- endfor -%}")
    old = "{{ '<|assistant|>' + (m['content'] or '') }}"
    new = ("{%- set c = (m['content'] or '') -%}{%- if loop.index0 < ns2.last and '</think>' in c -%}"
           "{%- set c = c.split('</think>')[-1] -%}{%- endif -%}{{ '<|assistant|>' + c }}")
    assert old in TINY_CHAT_TEMPLATE
    return head + TINY_CHAT_TEMPLATE.replace(old, new)


def test_reasoning_stripping_template_keeps_fidelity(parts):
    model, tok, _ = parts
    tok = copy.deepcopy(tok)
    tok.chat_template = _qwen_style_template()
    renderer = Renderer(tok)
    texts = [('<think>first find the founder</think><tool_call>{"name": "search", "arguments": {"query": "a"}}'
              "</tool_call>"), "<think>the founder is Mira</think><answer>Mira</answer>", "<answer>Mira</answer>"]
    pol = TextPolicy(model, tok, texts, renderer.eot_id)
    msgs = [{"role": "system", "content": "Use search."}, {"role": "user", "content": "Who founded Zentrix?"}]
    with Gateway(pol, renderer) as gw:
        eid = gw.new_episode()
        client = _client(gw, eid)
        r1 = client.chat.completions.create(model="m", messages=msgs, tools=[SEARCH])
        m1 = r1.choices[0].message
        assert m1.model_extra["reasoning_content"] == "first find the founder" and m1.content is None
        msgs += [{"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in m1.tool_calls]},
                 {"role": "tool", "tool_call_id": m1.tool_calls[0].id, "content": "Mira founded Zentrix."}]
        r2 = client.chat.completions.create(model="m", messages=msgs, tools=[SEARCH])
        msgs += [{"role": "assistant", "content": r2.choices[0].message.content},  # reasoning dropped by the client
                 {"role": "user", "content": "Are you sure?"}]
        client.chat.completions.create(model="m", messages=msgs, tools=[SEARCH])
        gw.end_episode(eid, 1.0)
        (traj,) = gw.trajectories()
    assert len(traj.turns) == 3 and traj.meta["gateway"]["segments"] == 1  # matched, not split
    assert [t.action_ids for t in traj.turns] == pol.sampled
    packed = tok.decode(traj.token_ids())
    assert "<think>first find the founder</think>" in packed and "<think>the founder is Mira</think>" in packed
    # re-rendering the conversation (what a re-tokenizing proxy trains on) would have lost the reasoning
    rerendered = renderer.for_tools([SEARCH]).render_text(msgs + [{"role": "assistant", "content": texts[2]}],
                                                          add_generation_prompt=False)
    assert "first find the founder" not in rerendered and "the founder is Mira" not in rerendered


def test_edited_history_splits_or_is_rejected(parts):
    model, tok, renderer = parts
    policy = HFPolicy(model, tok, seed=1)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    with Gateway(policy, renderer) as gw:
        eid = gw.new_episode()
        client = _client(gw, eid)
        r1 = client.chat.completions.create(model="m", messages=msgs, max_tokens=6)
        hist = msgs + [{"role": "assistant", "content": r1.choices[0].message.content},
                       {"role": "user", "content": "More"}]
        client.chat.completions.create(model="m", messages=hist, max_tokens=6)
        edited = copy.deepcopy(hist)
        edited[2]["content"] = "an edited reply"
        client.chat.completions.create(model="m", messages=edited, max_tokens=6)
        gw.end_episode(eid, 1.0)
        seg0, seg1 = gw.trajectories()
        assert [len(seg0.turns), len(seg1.turns)] == [2, 1]
        assert "edited" in seg1.meta["gateway"]["split"] and seg0.meta["gateway"]["split"] is None
        assert seg1.prompt_ids == renderer.initial(edited)  # the edited text is prompt (mask 0), never an action
        assert seg0.turns[0].action_text == r1.choices[0].message.content and gw.stats.splits == 1

        strict = Gateway(policy, renderer, on_mismatch="reject").start()
        try:
            eid = strict.new_episode()
            client = _client(strict, eid)
            r1 = client.chat.completions.create(model="m", messages=msgs, max_tokens=6)
            hist = msgs + [{"role": "assistant", "content": r1.choices[0].message.content},
                           {"role": "user", "content": "More"}]
            with pytest.raises(openai.ConflictError, match="differs from the episode.s first request"):
                client.chat.completions.create(model="m", messages=hist[:1] + hist[2:], max_tokens=6)  # re-ordered
            assert strict.episode(eid).num_turns == 1 and strict.episode(eid).segments[0].turns[0].obs_ids == []
        finally:
            strict.stop()


def test_32_concurrent_episodes_are_batched(parts):
    model, tok, renderer = parts
    spy = Spy(HFPolicy(model, tok, seed=7))
    prompts = {}
    for i in range(32):
        env, obs = _hopqa(100 + i)
        env.close()
        obs[-1]["content"] += f" (episode {i})"  # questions repeat across seeds; contexts must not
        prompts[i] = list(obs)

    async def episode(gw: Gateway, i: int) -> str:
        eid = gw.new_episode(group_id=f"g{i // 8}")
        async with openai.AsyncOpenAI(base_url=gw.episode_url(eid), api_key="t", max_retries=0) as client:
            msgs = list(prompts[i])
            for k in range(2):
                r = await client.chat.completions.create(model="m", messages=msgs, max_tokens=4)
                msgs += [{"role": "assistant", "content": r.choices[0].message.content},
                         {"role": "user", "content": f"go on {k}"}]
        gw.end_episode(eid, float(i % 2))
        return eid

    async def main(gw):
        return await asyncio.gather(*(episode(gw, i) for i in range(32)))

    with Gateway(spy, renderer, batch_window_s=0.25) as gw:
        eids = asyncio.run(main(gw))
        trajs = gw.trajectories(eids)
    assert len(trajs) == 32 and [t.outcome for t in trajs] == [float(i % 2) for i in range(32)]
    assert gw.stats.requests == 64 and gw.stats.generate_calls == len(spy.calls) < 64
    assert max(len(cs) for cs, _ in spy.calls) >= 8  # requests of many episodes shared one generate call
    for i, t in enumerate(trajs):
        assert t.prompt_ids == renderer.initial(prompts[i]) and t.group_id == f"g{i // 8}"
        ctx = list(t.prompt_ids)
        for turn in t.turns:
            s = spy.sample_for(ctx)  # each episode got the sample drawn for its own context
            assert turn.action_ids == s.ids and turn.logprobs == s.logprobs
            ctx += turn.action_ids + turn.obs_ids


def test_bad_input_gets_clear_http_errors(parts):
    model, tok, renderer = parts
    spy = Spy(HFPolicy(model, tok))
    msgs = [{"role": "user", "content": "Hi"}]
    with Gateway(spy, renderer, max_body_bytes=200_000) as gw:
        eid = gw.new_episode()
        url = f"{gw.episode_url(eid)}/chat/completions"
        client = _client(gw, eid)
        client.chat.completions.create(model="m", messages=msgs, max_tokens=4)  # one good turn
        with httpx.Client(timeout=30) as h:
            r = h.post(url, content=b'{"messages": [', headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
            r = h.post(url, json=["not", "an", "object"])
            assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
            r = h.post(url, json={"messages": [{"role": "wizard", "content": "x"}]})
            assert r.status_code == 400 and "role" in r.json()["error"]["message"]
            r = h.post(url, json={"messages": msgs, "n": 2})
            assert r.status_code == 400 and r.json()["error"]["param"] == "n"
            r = h.post(url, json={"messages": msgs, "stream": True})
            assert r.status_code == 400
            r = h.post(url, content=b"x" * 300_000, headers={"Content-Type": "application/json"})
            assert r.status_code == 413
            r = h.post(f"{gw.url}/nowhere", json={})
            assert r.status_code == 404
            r = h.post(f"{gw.url}/episodes/{eid}/end", json={"reward": "lots"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "reward"
        with pytest.raises(openai.NotFoundError, match="episode_not_found|unknown episode"):
            _client(gw, "nosuchepisode").chat.completions.create(model="m", messages=msgs)
        long = [{"role": "user", "content": "word " * 20_000}]  # about 20k tokens > the 4096 positions
        with pytest.raises(openai.BadRequestError, match="context_length_exceeded|prompt tokens"):
            client.chat.completions.create(model="m", messages=long)
        ep = gw.episode(eid)
        assert ep.num_turns == 1 and ep.segments[0].turns[0].obs_ids == [] and len(spy.calls) == 1  # nothing recorded
        gw.end_episode(eid, 0.0)
        with pytest.raises(openai.ConflictError, match="episode_closed|ended"):
            client.chat.completions.create(model="m", messages=msgs + [{"role": "assistant", "content": "x"},
                                                                        {"role": "user", "content": "y"}])
        assert len(spy.calls) == 1
        # the server is still up and serves the next episode
        eid2 = gw.new_episode()
        r = _client(gw, eid2).chat.completions.create(model="m", messages=msgs, max_tokens=4)
        assert r.choices[0].message.role == "assistant" and gw.episode(eid2).num_turns == 1
        assert gw.stats.errors >= 9


def test_http_episode_routes_and_budget(parts):
    model, tok, renderer = parts
    with Gateway(HFPolicy(model, tok), renderer, max_episode_tokens=3) as gw, httpx.Client(timeout=30) as h:
        made = h.post(f"{gw.url}/episodes", json={"group_id": "task-7", "meta": {"gold_answer": "x"}}).json()
        assert made["base_url"] == gw.episode_url(made["id"])
        assert h.get(f"{gw.url}/v1/models").json()["data"][0]["id"] == "turngym-policy"
        client = openai.OpenAI(base_url=made["base_url"], api_key="t", max_retries=0)
        msgs = [{"role": "user", "content": "Hi"}]
        for _ in range(4):  # max_tokens is cut to what is left of the episode's 3 tokens, then requests are refused
            try:
                r = client.chat.completions.create(model="m", messages=msgs, max_tokens=64)
            except openai.BadRequestError as e:
                assert "used its 3 sampled tokens" in str(e)
                break
            msgs += [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "?"}]
        else:
            pytest.fail("the episode's token budget was never exhausted")
        ep = gw.episode(made["id"])
        assert ep.sampled_tokens == 3 and ep.budget_exhausted
        assert h.get(f"{gw.url}/episodes/{made['id']}").json()["turns"] == ep.num_turns >= 1
        # the header carries the episode id too
        r2 = h.post(f"{gw.url}/v1/chat/completions", headers={"X-Turngym-Episode": "nope"}, json={"messages": msgs})
        assert r2.status_code == 404
        # no episode: served, not recorded
        r3 = h.post(f"{gw.url}/v1/chat/completions", json={"messages": msgs, "max_tokens": 3})
        assert r3.status_code == 200 and r3.json()["usage"]["completion_tokens"] <= 3
        end = f"{gw.url}/episodes/{made['id']}/end"
        assert h.post(end, json={"reward": 0.25, "anchors": ["a"] * 9}).status_code == 400  # one per turn
        anchors = [f"state{k}" for k in range(ep.num_turns)]
        assert h.post(end, json={"reward": 0.25, "anchors": anchors}).status_code == 200
        over_http = h.get(f"{gw.url}/episodes/{made['id']}/trajectories").json()["trajectories"]
        (t,) = gw.trajectories()
        assert t.group_id == "task-7" and t.outcome == 0.25 and t.meta["gold_answer"] == "x"
        assert [u.info["anchor_obs"] for u in t.turns] == anchors  # GiGPO's anchor states
        assert [Trajectory.from_dict(d) for d in over_http] == [t]


def test_match_history_names_each_kind_of_change():
    from turngym.agents.gateway_record import Returned, Segment, match_history
    from turngym.types import Turn

    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    r0 = Returned(full="<tool_call>x</tool_call>", content=None, reasoning=None, calls=[("search", {"q": 1})],
                  call_names={"call_0_0": "search"})
    r1 = Returned(full="done", content="done", reasoning=None, calls=[], call_names={})
    obs0 = [{"role": "tool", "content": "R", "tool_call_id": "call_0_0", "name": "search"}]
    seg = Segment(prompt_ids=[1], prompt_messages=prompt, tools=None, context=[1],
                  turns=[Turn(obs_messages=obs0), Turn()], returned=[r0, r1])
    a0 = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0_0", "type": "function", "function": {"name": "search", "arguments": '{"q": 1}'}}]}
    a1 = {"role": "assistant", "content": "done"}
    new = [{"role": "user", "content": "next"}]
    assert match_history(seg, prompt + [a0, *obs0, a1, *new]) == (new, "")
    assert match_history(seg, prompt + [a0, *obs0, a1])[1].startswith("no new message")
    cases = {
        "truncated": prompt + [a0, *obs0] + new,  # the last response dropped
        "edited": prompt + [{**a0, "tool_calls": [{"function": {"name": "search", "arguments": {"q": 2}}}]},
                            *obs0, a1, *new],
        "differ from those sent before": prompt + [a0, {**obs0[0], "content": "other"}, a1, *new],  # a tool result
        "first request": [prompt[1], prompt[0], a0, *obs0, a1, *new],  # re-ordered
    }
    for word, msgs in cases.items():
        got, reason = match_history(seg, msgs)
        assert got is None and word in reason, (word, reason)
