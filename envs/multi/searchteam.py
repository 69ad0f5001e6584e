"""``multi/SearchTeam-v0``: a searcher with the search tool passes notes to an answerer with no tools (AEC, cooperative).

Built on the HopQA worlds of ``search/HopQA-v0`` (`turngym.envs.builtin.hopqa.HopQAEnv` draws the question and
provides the search tool over the world's corpus). Both agents see the multi-hop question.

1. ``searcher_0`` acts first and keeps the turn while it searches (``<search> founder of Zentrix </search>``; the
   documents come back to it). When it is ready it hands its notes to the answerer inside
   ``<answer>...</answer>`` (at most ``max_note_chars`` characters); that ends its part.
2. ``answerer_0`` reads the question and the notes and answers with ``<answer> name </answer>``.

Team reward: both agents' outcome (and episode return) is the exact match of the answerer's answer with the gold
answer. An action with neither a call nor an answer, an over-long note, or a tool call by the answerer is an error
message to the same agent, who acts again; every action counts against ``max_cycles`` (per agent).

Scripted policies: the searcher looks up one hop at a time (the HopQA expert's queries) and then writes the
facts it found as the note; the answerer follows the question's relations through the facts in the notes (it
never reads the gold answer), so the team succeeds only when the searcher's notes carry the chain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from turngym.envs.core import exact_match, resolve_split, token_f1
from turngym.envs.multi.core import Action, TextAECEnv
from turngym.errors import ConfigError
from turngym.types import ToolCall

SEARCHER, ANSWERER = "searcher_0", "answerer_0"

SEARCHER_TAGS = (
    "You are the searcher of a two-agent team. Your teammate, the answerer, must answer the question below but "
    "cannot search. Search an encyclopedia one fact at a time with <search> query </search>, for example "
    "<search> founder of Zentrix </search>; the matching documents come back to you. When you have the facts, "
    "hand short notes to the answerer inside <answer> notes </answer> (at most {max_note_chars} characters). You "
    "cannot search after that."
)
SEARCHER_HERMES = (
    "You are the searcher of a two-agent team. Your teammate, the answerer, must answer the question below but "
    'cannot search. Use the search tool one fact at a time (for example the query "founder of Zentrix"). When '
    "you have the facts, hand short notes to the answerer inside <answer>...</answer> (at most {max_note_chars} "
    "characters). You cannot search after that."
)
ANSWERER_TEXT = (
    "You are the answerer of a two-agent team. Your teammate, the searcher, looks up facts and sends you notes; "
    "you have no tools. Read the question and the notes, then reply with the final answer inside "
    "<answer> name </answer>, for example <answer> Varton </answer>."
)
_FACT_HEAD_RE = re.compile(r"The (\w+) of ")


class SearchTeamEnv(TextAECEnv):
    """Cooperative multi-hop QA: searcher (search tool) -> notes -> answerer (no tools).

    Args:
        hops: Hops per question: an int or a sequence drawn uniformly (1..4).
        world_seed: Seed of the HopQA world.
        corpus_size: Entity documents in the world (20..800).
        distractors: Distractor documents.
        topk: Documents per search.
        max_note_chars: Longest note the searcher may hand over.
        max_cycles: Largest number of actions per agent, bad ones included (truncates the episode).
        retriever: Optional search backend (see `HopQAEnv`); default: a local BM25 index of the world.
        split: Which of the world's questions a reset draws (see `HopQAEnv`): ``"auto"`` (held-out ones for
            seeds >= 1,000,000, where turngym evaluates; training ones below), ``"train"``, ``"test"``, ``"all"``.
        test_fraction: The held-out share of the questions.
        **kwargs: Passed to `TextAECEnv` (``parser``, ``max_action_chars``, ``tool_timeout_s``, ``render_mode``).
    """

    possible_agents = [SEARCHER, ANSWERER]
    metadata = {"name": "searchteam_v0", "render_modes": ["ansi"], "is_parallelizable": False}
    parser_name = "tags"
    default_expert_noise = 0.2

    def __init__(
        self,
        *,
        hops: int | Sequence[int] = (1, 2),
        world_seed: int = 0,
        corpus_size: int = 120,
        distractors: int = 20,
        topk: int = 3,
        max_note_chars: int = 400,
        max_cycles: int = 8,
        retriever: Any = None,
        split: str = "auto",
        test_fraction: float = 0.25,
        **kwargs: Any,
    ):
        from turngym.envs.builtin.hopqa import HopQAEnv

        if max_note_chars < 1:
            raise ConfigError(f"max_note_chars must be >= 1, got {max_note_chars}.")
        self.max_note_chars = int(max_note_chars)
        parser = kwargs.get("parser") or self.parser_name
        self.qa = HopQAEnv(
            hops=hops,
            world_seed=world_seed,
            corpus_size=corpus_size,
            distractors=distractors,
            topk=topk,
            split=split,
            test_fraction=test_fraction,
            retriever=retriever,
            parser=parser,
            tool_timeout_s=kwargs.get("tool_timeout_s", 10.0),
        )
        self.world = self.qa.world
        super().__init__(max_cycles=max_cycles, **kwargs)

    def _make_tools(self, agent: str) -> Any:
        return self.qa.toolset if agent == SEARCHER else None

    def close(self) -> None:
        """Release the search tool (idempotent)."""
        if not self._closed:
            super().close()
            self.qa.close()

    # ------------------------------------------------------------------ episode
    def _start(self, rng: np.random.Generator, options: dict[str, Any] | None) -> dict[str, Any]:
        # PettingZoo's api_test resets with options={'options': 1}: that key is accepted and ignored
        opts = {k: v for k, v in (options or {}).items() if k != "options"}
        opts["split"] = resolve_split(opts.get("split", self.qa.split), self.reset_seed)  # by this env's seed
        _, info = self.qa.reset(seed=int(rng.integers(0, 2**31 - 1)), options=opts)
        task = info["task"]
        self.notes: str | None = None
        question = task["question"]
        intro = SEARCHER_TAGS if self.parser_name == "tags" else SEARCHER_HERMES
        self.send(SEARCHER, intro.format(max_note_chars=self.max_note_chars), role="system")
        self.send(SEARCHER, f"Question: {question}")
        self.send(ANSWERER, ANSWERER_TEXT, role="system")
        self.send(ANSWERER, f"Question: {question}\nWait for the searcher's notes.")
        return task

    def _turn(self, agent: str, action: Action) -> None:
        if agent == SEARCHER:
            self._searcher_turn(action)
        else:
            self._answerer_turn(action)

    def _searcher_turn(self, action: Action) -> None:
        if action.calls:
            self.run_tools(SEARCHER, action.calls)
        if action.answer is not None:
            if len(action.answer) > self.max_note_chars:
                self.reject(
                    SEARCHER,
                    f"your notes have {len(action.answer)} characters; the limit is {self.max_note_chars}. "
                    "Hand over shorter notes inside <answer>...</answer>.",
                )
                return
            self.notes = action.answer
            self.send(ANSWERER, f"Notes from the searcher: {action.answer}", name=SEARCHER)
            self.agent_selection = ANSWERER
            return
        if not action.calls:
            self.reject(
                SEARCHER,
                "no search and no notes found. Search with <search>query</search> or hand notes to the answerer "
                "inside <answer>...</answer>.",
                action.errors,
            )
        elif action.errors:
            self.send(SEARCHER, "Error: " + "; ".join(action.errors))

    def _answerer_turn(self, action: Action) -> None:
        assert self.task is not None
        if action.calls:
            self.run_tools(ANSWERER, action.calls)  # the answerer has no tools: errors come back
        if action.answer is None:
            self.reject(
                ANSWERER,
                "no answer found. Reply with the final answer inside <answer>...</answer>.",
                action.errors,
            )
            return
        gold = self.task["gold_answer"]
        em = float(exact_match(action.answer, gold))
        f1 = token_f1(action.answer, gold)
        self.end(
            {a: em for a in self.agents},
            success=bool(em),
            final_answer=action.answer,
            stop_reason="answered",
            extra={a: {"f1": f1, "notes": self.notes} for a in self.agents},
        )

    # ------------------------------------------------------------------ scripted policies
    def _found(self) -> list[str]:
        """The chain facts the searcher has seen in its tool results, in hop order (stops at the first gap)."""
        assert self.task is not None
        seen = "\n".join(m["content"] for m in self._history[SEARCHER] if m["role"] == "tool")
        facts = []
        for hop in self.task["chain"]:
            fact = f"The {hop['relation']} of {hop['src']} is {hop['dst']}."
            if fact not in seen:
                break
            facts.append(fact)
        return facts

    def _expert(self, agent: str, rng: np.random.Generator, noise: float) -> str:
        """Searcher: next hop's query, then the facts as notes. Answerer: the answer found in the notes.

        The answerer follows the question's relations through the facts stated in the notes (it never reads
        the gold answer). Noise (searcher): a wrong query, a malformed call, or notes handed over too early.
        Noise (answerer): a malformed answer or a wrong entity of the right type.
        """
        assert self.task is not None
        parser = self.parsers[agent]
        mistake = noise > 0 and rng.random() < noise
        if agent == SEARCHER:
            chain = self.task["chain"]
            facts = self._found()
            if mistake:
                kind = ("wrong_query", "malformed", "early_notes")[int(rng.integers(0, 3))]
                if kind == "wrong_query":
                    names = [n for n in self.world.entities if n not in {h["src"] for h in chain}]
                    name = names[int(rng.integers(0, len(names)))]
                    return parser.format(calls=[ToolCall("search", {"query": f"who is {name}"})])
                if kind == "malformed":
                    return "<search>"  # an unclosed tag: a parse error, no call
                return parser.format(answer=" ".join(facts[:-1]) or "I found nothing.")
            if len(facts) < len(chain):
                hop = chain[len(facts)]
                return parser.format(
                    calls=[ToolCall("search", {"query": f"{hop['relation']} of {hop['src']}"})]
                )
            return parser.format(answer=" ".join(facts)[: self.max_note_chars])
        notes = self.notes or ""
        gold = self.task["gold_answer"]
        if mistake:
            if rng.random() < 0.5:
                return "The answer is in the notes."
            wrong = [n for n in self.world.of_type(self.world.entities[gold]) if n != gold]
            return parser.format(answer=wrong[int(rng.integers(0, len(wrong)))])
        return parser.format(answer=resolve_question(self.task["question"], notes) or "unknown")


def resolve_question(question: str, notes: str) -> str | None:
    """Answer a HopQA question from notes that state facts ("The founder of Zentrix is Mira Tal.").

    Follows the question's relations from its start entity, innermost first; None when a fact is missing.

    Example:
        >>> resolve_question("What is the birthplace of the founder of Zentrix?",
        ...                  "The founder of Zentrix is Mira Tal. The birthplace of Mira Tal is Varton.")
        'Varton'
    """
    m = re.fullmatch(r"What is the (.+)\?", question.strip())
    if m is None:
        return None
    *outer, innermost = m.group(1).split(" of the ")
    rel0, sep, entity = innermost.partition(" of ")
    if not sep:
        return None
    facts = _facts(notes)
    for rel in [rel0, *reversed(outer)]:
        if (rel, entity) not in facts:
            return None
        entity = facts[(rel, entity)]
    return entity


def _facts(notes: str) -> dict[tuple[str, str], str]:
    """``{(relation, source): target}`` from sentences "The REL of SRC is DST." (linear in the notes).

    Each full-stop-terminated sentence gives at most one fact: the first "The REL of " that a later " is "
    follows; SRC runs to the first " is " after it, DST to the end of the sentence.
    """
    facts: dict[tuple[str, str], str] = {}
    for sentence in notes.split(".")[:-1]:  # the text after the last full stop is no sentence
        for head in _FACT_HEAD_RE.finditer(sentence):
            cut = sentence.find(" is ", head.end() + 1)
            if cut < 0:
                break  # no later head has an " is " after it either
            if cut + 4 < len(sentence):
                facts[(head.group(1), sentence[head.end() : cut])] = sentence[cut + 4 :]
                break
    return facts


def make_env(api: str = "aec", **kwargs: Any) -> Any:
    """Registry entry point: the AEC env (``api="aec"``) or its parallel view (``api="parallel"``)."""
    from turngym.envs.multi import to_api

    return to_api(SearchTeamEnv(**kwargs), api)
