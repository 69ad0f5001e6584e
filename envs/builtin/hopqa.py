"""``search/HopQA-v0``: multi-hop questions over a generated world, answered by searching its corpus.

The agent sees a question such as "What is the birthplace of the founder of Zentrix?", searches with
``<search> founder of Zentrix </search>`` (one fact per query), reads the returned documents, searches the next
hop ("birthplace of Mira Tal"), and answers ``<answer> Varton </answer>``. The world (entities, facts, corpus)
is fixed per env instance by ``world_seed``; each ``reset(seed=...)`` draws a question from it. With ``worlds=N``
each reset first draws one of N worlds (the same names, other facts), so that facts cannot be remembered across
episodes: every answer has to be searched for.

Gold data for credit (in ``info["task"]``): ``gold_answer``, ``gold_calls`` (the ideal queries),
``decisive_turns`` (the gold turns that resolve a hop, plus the answer turn), ``chain`` (the hops),
``gold_turn_values``. Every step's info carries the ground-truth ``value`` (fraction of hops resolved, in
order), ``value_delta`` and a GiGPO ``anchor``. `HopQAEnv.turn_value` computes the value for any history.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from turngym.envs.builtin.world import World, generate_world, question_text
from turngym.envs.core import Env, Task, check_test_fraction, draw_in_split, resolve_split
from turngym.errors import ConfigError
from turngym.types import Message, ToolCall

TAGS_INSTRUCTIONS = (
    "Answer the question by searching an encyclopedia. Search for one fact at a time with "
    "<search> query </search>, for example <search> founder of Zentrix </search>; the matching documents come "
    "back. When you know the answer, reply with <answer> name </answer>."
)
SEARCH_TOOL_DESCRIPTION = (
    "Search the encyclopedia for one fact, e.g. 'founder of Zentrix'; returns the best documents."
)
"""Description of HopQA's ``search`` tool (shown in its schema); an outside search tool (``tools=``) should use it."""
HERMES_INSTRUCTIONS = (
    "Answer the question by searching an encyclopedia with the search tool, one fact at a time "
    '(for example the query "founder of Zentrix"). When you know the answer, reply with <answer>name</answer>.'
)


WORLD_CACHE = 256
"""Worlds (and their indexes) kept per process; a world takes about 30 ms to build again."""


@functools.lru_cache(maxsize=WORLD_CACHE)
def _shared_world(world_seed: int, corpus_size: int, distractors: int) -> World:
    """The generated world of these parameters, built once per process and shared read-only by every env."""
    return generate_world(world_seed, corpus_size=corpus_size, distractors=distractors)


@functools.lru_cache(maxsize=WORLD_CACHE)
def _shared_index(world_seed: int, corpus_size: int, distractors: int) -> Any:
    """The in-memory BM25 index of that world's corpus, built once per process (searching it is read-only)."""
    from turngym.tools.search.index import BM25Index

    return BM25Index.build(_shared_world(world_seed, corpus_size, distractors).docs, cache=False)


class HopQAEnv(Env):
    """Multi-hop question answering with a search tool over a generated corpus.

    Args:
        hops: Number of hops per question: an int, or a sequence of ints drawn uniformly (1..4).
        world_seed: Seed of the generated world (entities, facts, corpus).
        worlds: Number of worlds (seeds ``world_seed .. world_seed + worlds - 1``); each reset draws one. The worlds
            share their name vocabulary and differ in who is related to whom, so with more than one a policy cannot
            answer from facts it remembers from other episodes (with one world it can: a held-out question's facts
            are mostly facts of training questions). Only with the built-in search (not ``retriever``,
            ``retriever_url`` or ``tools``, which serve one corpus).
        corpus_size: Number of entity documents (20..800).
        distractors: Number of distractor documents.
        topk: Documents returned per search.
        retriever: A search backend with ``.search(queries, topk) -> list[list[Hit]]`` (e.g. a
            `turngym.tools.search.BM25Index` or `RetrieverClient`); overrides the local index. Its corpus
            must contain the world's documents (`HopQAEnv.corpus`).
        retriever_url: URL of a Search-R1 ``/retrieve`` server to use instead of the local index.
        parser: Tool-call format: ``"tags"`` (default) or ``"hermes"``.
        tool_timeout_s: Per-call timeout of the search tool.
        tools: A `ToolSet` to use instead of the built-in search tool (e.g. ``ToolSet.from_mcp(...)`` serving
            ``search`` over this world's corpus); it needs a ``search`` tool taking ``query`` whose results show
            the documents' facts, and the env closes it. Not with ``retriever`` / ``retriever_url``.
        split: Which questions ``reset`` draws: ``"train"``, ``"test"`` (the held-out share of the world's
            questions, chosen by a hash of each question's id), ``"all"``, or ``"auto"`` (the default): held-out
            for seeds >= `turngym.envs.core.TEST_SEED_START` (1,000,000, where turngym evaluates), training below. A world holds
            a few hundred questions (432 with the defaults), so without a split the training seeds draw most of
            them and an evaluation on "new" seeds is mostly on questions seen in training. The reset option
            ``{"split": ...}`` overrides it for one episode.
        test_fraction: The held-out share of the questions (0..1).
        **kwargs: Passed to `Env` (``max_action_chars``, ``max_answer_chars``, ``render_mode``).
    """

    parser_name = "tags"
    default_expert_noise = 0.3

    def __init__(
        self,
        *,
        hops: int | Sequence[int] = (1, 2),
        world_seed: int = 0,
        worlds: int = 1,
        corpus_size: int = 120,
        distractors: int = 20,
        topk: int = 3,
        retriever: Any = None,
        retriever_url: str | None = None,
        parser: str = "tags",
        tool_timeout_s: float = 10.0,
        tools: Any = None,
        split: str = "auto",
        test_fraction: float = 0.25,
        **kwargs: Any,
    ):
        self.hops = _check_hops(hops)
        resolve_split(split, None)  # a bad name fails here, not at the first reset
        self.split = split
        self.test_fraction = check_test_fraction(test_fraction)
        self.world_seed = int(world_seed)
        self.worlds = int(worlds)
        self.topk = int(topk)
        if self.topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}.")
        if self.worlds < 1:
            raise ConfigError(f"worlds must be >= 1, got {worlds}.")
        if self.worlds > 1 and (retriever is not None or retriever_url is not None or tools is not None):
            raise ConfigError(f"worlds={worlds} needs HopQA's built-in search (each world has its own corpus); "
                              "retriever=, retriever_url= and tools= serve one corpus. Fix: leave worlds=1.")
        self._world_args = (int(corpus_size), int(distractors))
        self.world: World = _shared_world(self.world_seed, *self._world_args)
        if retriever is not None and retriever_url is not None:
            raise ConfigError("Pass either retriever= or retriever_url=, not both.")
        if tools is not None and (retriever is not None or retriever_url is not None):
            raise ConfigError("Pass either tools= (a ToolSet with a search tool) or retriever= / retriever_url=.")
        self._owns_retriever = retriever_url is not None  # a client this env opened; the BM25 index is shared
        if retriever_url is not None:
            from turngym.tools.search import RetrieverClient

            retriever = RetrieverClient(retriever_url)
        if retriever is None:
            retriever = _WorldIndex(_shared_index(self.world_seed, *self._world_args))
        self.retriever = retriever
        from turngym.tools.toolset import ToolSet

        if tools is None:
            tools = ToolSet([_make_search_tool(self.retriever, self.topk)], timeout_s=tool_timeout_s)
        elif not isinstance(tools, ToolSet) or "search" not in tools:
            raise ConfigError(f"tools= must be a ToolSet with a 'search' tool, got {tools!r}.")
        self.instructions = TAGS_INSTRUCTIONS if parser == "tags" else HERMES_INSTRUCTIONS
        super().__init__(tools=tools, parser=parser, **kwargs)

    def close(self) -> None:
        """Close the tools and, when the env created it, the retriever client (idempotent)."""
        was_closed = self._closed
        super().close()
        if not was_closed and self._owns_retriever and callable(getattr(self.retriever, "close", None)):
            self.retriever.close()

    @property
    def corpus(self) -> list[dict[str, str]]:
        """The world's documents (``{"id", "contents"}``), e.g. to serve with ``turngym serve-retriever``."""
        return [dict(d) for d in self.world.docs]

    # ------------------------------------------------------------------ task
    def _question_id(self, chain: list[Any]) -> str:
        return f"hopqa/w{self.world.seed}/" + "/".join([chain[0].src] + [hp.relation for hp in chain])

    def _enter_world(self, rng: np.random.Generator) -> None:
        """Draw this episode's world (only with ``worlds > 1``: one world leaves the draws as they were)."""
        if self.worlds > 1:
            seed = self.world_seed + int(rng.integers(0, self.worlds))
            self.world = _shared_world(seed, *self._world_args)
            self.retriever.index = _shared_index(seed, *self._world_args)

    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        opts = dict(options or {})
        hop_choices = _check_hops(opts.pop("hops")) if "hops" in opts else self.hops
        split = resolve_split(opts.pop("split", self.split), self.reset_seed)
        if opts:
            raise ConfigError(f"HopQA reset options: unknown keys {sorted(opts)}; known: ['hops', 'split'].")
        self._enter_world(rng)
        h = hop_choices[int(rng.integers(0, len(hop_choices)))]
        chain = draw_in_split(lambda: self.world.sample_chain(rng, h), self._question_id, split, self.test_fraction)
        gold_calls = [{"name": "search", "arguments": {"query": hop.query}} for hop in chain]
        meta = {
            "id": self._question_id(chain),
            "split": split,
            "hops": h,
            "question": question_text(chain),
            "chain": [{"relation": hp.relation, "src": hp.src, "dst": hp.dst} for hp in chain],
            "gold_docs": [self.world.doc_of[hp.src] for hp in chain],
            "decisive_turns": list(range(h + 1)),
            "gold_turn_values": [i / h for i in range(h + 1)],
        }
        return Task(
            prompt=question_text(chain),
            gold_answer=chain[-1].dst,
            gold_calls=gold_calls,
            meta=meta,
            private={"chain": chain},
        )

    def _progress(self, history: list[Message]) -> int:
        assert self.task is not None
        seen = "\n".join(m.get("content", "") for m in history if m.get("role") == "tool")
        done = 0
        for hop in self.task.private["chain"]:
            if hop.fact not in seen:
                break
            done += 1
        return done

    def _plan_lengths(self) -> dict[int, float]:
        return {h + 1: 1.0 / len(self.hops) for h in self.hops}

    # ------------------------------------------------------------------ expert
    def _expert_next(self) -> ToolCall | str:
        assert self.task is not None
        k = self._progress(self._history)
        chain = self.task.private["chain"]
        if k < len(chain):
            return ToolCall(name="search", arguments={"query": chain[k].query})
        return self.task.gold_answer

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall:
        assert self.task is not None
        from turngym.envs.builtin.world import OUTGOING, query_text

        chain = self.task.private["chain"]
        k = min(self._progress(self._history), len(chain) - 1)
        names = [n for n, t in self.world.entities.items() if OUTGOING[t] and n != chain[k].src]
        name = names[int(rng.integers(0, len(names)))]
        rels = OUTGOING[self.world.entities[name]]
        return ToolCall(
            name="search", arguments={"query": query_text(rels[int(rng.integers(0, len(rels)))], name)}
        )

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        assert self.task is not None
        gold = self.task.gold_answer
        pool = [n for n in self.world.of_type(self.world.entities[gold]) if n != gold]
        return pool[int(rng.integers(0, len(pool)))]


class _WorldIndex:
    """The search backend of the current world: the env points ``index`` at another world's index on reset."""

    def __init__(self, index: Any):
        self.index = index

    def search(self, queries: Any, topk: int) -> Any:
        return self.index.search(queries, topk)


def _check_hops(hops: int | Sequence[int]) -> tuple[int, ...]:
    vals = (hops,) if isinstance(hops, (int, np.integer)) else tuple(hops)
    if not vals or any(not isinstance(h, (int, np.integer)) or not 1 <= h <= 4 for h in vals):
        raise ConfigError(f"hops must be an int in 1..4 or a non-empty sequence of them, got {hops!r}.")
    return tuple(int(h) for h in vals)


def format_hits(hits: Sequence[Any]) -> str:
    """Render search hits compactly: ``"[1] Title: text"`` per line."""
    lines = []
    for i, h in enumerate(hits, 1):
        contents = h.contents if hasattr(h, "contents") else str(h.get("contents", ""))
        title, _, body = contents.partition("\n")
        lines.append(f"[{i}] {title.strip()}: {body.strip()}" if body else f"[{i}] {title.strip()}")
    return "\n".join(lines) if lines else "No documents found."


def _make_search_tool(backend: Any, topk: int) -> Any:
    from turngym.tools.search import make_search_tool

    return make_search_tool(
        backend,
        topk,
        formatter=format_hits,
        description=SEARCH_TOOL_DESCRIPTION,
    )
