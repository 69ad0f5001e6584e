"""``search/SearchR1-v0``: open-domain QA over a user's Search-R1 dataset, with a BM25 or remote retriever.

The agent gets a question, searches with ``<search>query</search>`` (tags parser, as in Search-R1) or a
``search`` tool call (hermes parser), reads the returned documents and answers ``<answer>...</answer>``.
Reward: normalised exact match against any of the golden answers (token F1 in ``info["f1"]``).

Data:
- ``dataset``: a JSONL file (or a list of dicts) with one question per line, in the Search-R1 / FlashRAG
  format ``{"id": ..., "question": "...", "golden_answers": ["...", ...]}`` (``"answers"`` or
  ``"answer"`` are accepted for ``golden_answers``; a single string is one answer).
- Documents come from exactly one of: ``corpus`` (a Search-R1 JSONL corpus ``{"id", "contents"}``, indexed
  locally with BM25 and cached on disk), ``retriever_url`` (any Search-R1 ``/retrieve`` server, e.g.
  ``turngym serve-retriever``) or ``retriever`` (any object with ``.search(queries, topk)``).
- With no ``dataset`` the env uses a small built-in demo (questions about fictional countries and their
  corpus, `demo_data`) so that ``turngym.make("search/SearchR1-v0")`` works out of the box.

Task metadata (``info["task"]``): ``gold_answer`` (first golden answer), ``golden_answers``, ``gold_calls``
(one search with the question itself), ``index`` and ``id`` of the dataset row. The scripted expert
searches the question, then answers the first golden answer (an oracle: it does not read the documents).
A dead or broken retriever is data: the search returns an error observation and the episode goes on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from turngym.envs.core import Env, Score, Task, exact_match, token_f1
from turngym.errors import ConfigError
from turngym.types import Message, ToolCall

TAGS_INSTRUCTIONS = (
    "Answer the question. You can search a knowledge corpus by writing <search> your query </search>; the best "
    "matching documents come back. Search as often as you need. When you know the answer, reply with a short "
    "answer inside <answer> ... </answer>, for example <answer> Paris </answer>."
)
HERMES_INSTRUCTIONS = (
    "Answer the question. You can search a knowledge corpus with the search tool; the best matching documents "
    "come back. Search as often as you need. When you know the answer, reply with a short answer inside "
    "<answer>...</answer>, for example <answer>Paris</answer>."
)


def load_dataset(dataset: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Load and validate Search-R1 QA rows.

    Args:
        dataset: JSONL path or a list of dicts with ``question`` and ``golden_answers``.

    Returns:
        Rows ``{"id": str, "question": str, "golden_answers": list[str]}``.

    Raises:
        ConfigError: Missing file, bad JSON, missing fields, or an empty dataset (the message names the row).
    """
    where = "dataset"
    if isinstance(dataset, (str, Path)):
        path = Path(dataset)
        where = str(path)
        if not path.is_file():
            raise ConfigError(
                f"dataset file {where!r} does not exist; pass a JSONL file with one "
                '{"question": ..., "golden_answers": [...]} object per line.'
            )
        raw: list[Any] = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}:{lineno}: not a JSON line ({e}).") from None
    else:
        raw = list(dataset)
    rows = []
    for i, obj in enumerate(raw):
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("question"), str)
            or not obj["question"].strip()
        ):
            raise ConfigError(f"{where}: row #{i} needs a non-empty string 'question', got {_short(obj)}.")
        answers = next((obj[k] for k in ("golden_answers", "answers", "answer") if k in obj), None)
        if isinstance(answers, str):
            answers = [answers]
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, (str, int, float)) and str(a).strip() for a in answers)
        ):
            raise ConfigError(
                f"{where}: row #{i} needs 'golden_answers' as a non-empty list of strings, got {_short(obj)}."
            )
        rows.append(
            {
                "id": str(obj.get("id", i)),
                "question": obj["question"].strip(),
                "golden_answers": [str(a) for a in answers],
            }
        )
    if not rows:
        raise ConfigError(f"{where}: the dataset has no questions.")
    return rows


_SYL = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ar", "en", "is")]


def demo_data(num_countries: int = 40, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """A small self-contained Search-R1-style dataset and corpus about fictional countries.

    Each country has a document stating its capital, ruler and longest river; each capital city has a
    short document too. Questions ask for one of the three facts.

    Args:
        num_countries: Number of countries (3 questions each).
        seed: Seed of the generated names.

    Returns:
        ``(dataset_rows, corpus_docs)`` in the Search-R1 formats.
    """
    rng = np.random.default_rng(seed)
    used: set[str] = set()

    def name(n_syl: int) -> str:
        while True:
            w = "".join(_SYL[j] for j in rng.integers(0, len(_SYL), size=n_syl)).capitalize()
            if w not in used:
                used.add(w)
                return w

    rows: list[dict[str, Any]] = []
    docs: list[dict[str, str]] = []
    for i in range(num_countries):
        country, capital, river = name(3), name(3), name(2)
        ruler = f"{name(2)} {name(3)}"
        docs.append(
            {
                "id": f"country-{i}",
                "contents": (
                    f'"{country}"\n{country} is a fictional country. Its capital is {capital}. '
                    f"It is ruled by {ruler}. The longest river of {country} is the {river}."
                ),
            }
        )
        docs.append(
            {
                "id": f"city-{i}",
                "contents": (
                    f'"{capital}"\n{capital} is a city on the {river} river and the seat of government of {country}.'
                ),
            }
        )
        rows.append(
            {
                "id": f"demo-{i}-capital",
                "question": f"What is the capital of {country}?",
                "golden_answers": [capital],
            }
        )
        rows.append({"id": f"demo-{i}-ruler", "question": f"Who rules {country}?", "golden_answers": [ruler]})
        rows.append(
            {
                "id": f"demo-{i}-river",
                "question": f"What is the longest river of {country}?",
                "golden_answers": [river, f"the {river}"],
            }
        )
    return rows, docs


class SearchR1Env(Env):
    """Search-R1-style QA: search a corpus, then answer; exact-match reward against any golden answer.

    Args:
        dataset: Search-R1 QA rows (JSONL path or list of dicts); None = the built-in demo (`demo_data`).
        corpus: Search-R1 JSONL corpus (path or list of ``{"id", "contents"}``) for a local BM25 index.
        retriever_url: A Search-R1 ``/retrieve`` endpoint to use instead of a local corpus.
        retriever: Any backend with ``.search(queries, topk)`` (e.g. a shared `BM25Index`).
        topk: Documents returned per search.
        parser: ``"tags"`` (default, ``<search>q</search>``) or ``"hermes"``.
        cache_dir: BM25 cache directory (default ``~/.cache/turngym/bm25``).
        retriever_timeout_s: Per-request timeout of the HTTP client (``retriever_url`` only).
        retriever_retries: Retries of the HTTP client before the search returns an error observation.
        retriever_backoff: First backoff sleep of the HTTP client, doubled at each retry.
        tool_timeout_s: Per-call timeout of the search tool (default: covers the client's retries).
        **kwargs: Passed to `Env` (``max_action_chars``, ``max_answer_chars``, ``render_mode``).

    Raises:
        ConfigError: Several document sources, none for a user dataset, or malformed data.
    """

    parser_name = "tags"
    default_expert_noise = 0.2

    def __init__(
        self,
        *,
        dataset: str | Path | Sequence[dict[str, Any]] | None = None,
        corpus: str | Path | Sequence[dict[str, Any]] | None = None,
        retriever_url: str | None = None,
        retriever: Any = None,
        topk: int = 3,
        parser: str = "tags",
        cache_dir: str | Path | None = None,
        retriever_timeout_s: float = 10.0,
        retriever_retries: int = 3,
        retriever_backoff: float = 0.25,
        tool_timeout_s: float | None = None,
        **kwargs: Any,
    ):
        from turngym.tools.search import BM25Index, RetrieverClient, make_search_tool
        from turngym.tools.toolset import ToolSet

        sources = [
            n
            for n, v in (("corpus", corpus), ("retriever_url", retriever_url), ("retriever", retriever))
            if v is not None
        ]
        if len(sources) > 1:
            raise ConfigError(
                f"SearchR1Env takes one document source, got {sources}; pass only one of "
                "corpus=, retriever_url=, retriever=."
            )
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive int, got {topk!r}.")
        if dataset is None:
            rows, demo_docs = demo_data()
            if not sources:
                corpus = demo_docs
        else:
            rows = load_dataset(dataset)
            if not sources:
                raise ConfigError(
                    "SearchR1Env needs documents for its dataset: pass corpus='corpus.jsonl' "
                    "(a Search-R1 JSONL corpus) or retriever_url='http://127.0.0.1:8000/retrieve'."
                )
        self.rows = rows
        self.topk = topk
        self._owned_client: RetrieverClient | None = None
        if retriever_url is not None:
            retriever = self._owned_client = RetrieverClient(
                retriever_url,
                timeout_s=retriever_timeout_s,
                retries=retriever_retries,
                backoff=retriever_backoff,
            )
        elif corpus is not None:
            in_memory = not isinstance(corpus, (str, Path))
            retriever = BM25Index.build(corpus, cache_dir=cache_dir, cache=not in_memory)
        self.retriever = retriever
        tool = make_search_tool(retriever, topk, timeout_s=tool_timeout_s)
        self.instructions = TAGS_INSTRUCTIONS if parser == "tags" else HERMES_INSTRUCTIONS
        super().__init__(tools=ToolSet([tool]), parser=parser, **kwargs)

    # ------------------------------------------------------------------ task
    def _sample_task(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Task:
        opts = dict(options or {})
        index = opts.pop("index", None)
        if opts:
            raise ConfigError(f"SearchR1 reset options: unknown keys {sorted(opts)}; known: ['index'].")
        if index is None:
            index = int(rng.integers(0, len(self.rows)))
        elif (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < len(self.rows)
        ):
            raise ConfigError(
                f"reset option index={index!r} is out of range; the dataset has {len(self.rows)} rows."
            )
        row = self.rows[int(index)]
        return Task(
            prompt=row["question"],
            gold_answer=row["golden_answers"][0],
            gold_calls=[{"name": "search", "arguments": {"query": row["question"]}}],
            meta={
                "golden_answers": list(row["golden_answers"]),
                "index": int(index),
                "id": row["id"],
                "question": row["question"],
            },
        )

    def _score(self, answer: str, task: Task) -> Score:
        golds = task.meta["golden_answers"]
        em = exact_match(answer, golds)
        return Score(outcome=float(em), success=bool(em), info={"f1": token_f1(answer, golds)})

    def _progress(self, history: list[Message]) -> int:
        # one gold search: done once any search came back with documents (not an error)
        ok = any(
            m.get("role") == "tool" and not str(m.get("content", "")).startswith("Error:") for m in history
        )
        return int(ok)

    def _plan_lengths(self) -> dict[int, float]:
        return {2: 1.0}

    # ------------------------------------------------------------------ expert
    def _expert_next(self) -> ToolCall | str:
        assert self.task is not None
        if self._progress(self._history) < 1:
            return ToolCall(name="search", arguments={"query": self.task.prompt})
        return self.task.gold_answer

    def _expert_wrong_call(self, rng: np.random.Generator) -> ToolCall:
        assert self.task is not None
        other = self.rows[int(rng.integers(0, len(self.rows)))]["question"]
        return ToolCall(name="search", arguments={"query": other})

    def _expert_wrong_answer(self, rng: np.random.Generator) -> str:
        assert self.task is not None
        golds = self.task.meta["golden_answers"]
        for _ in range(20):
            cand = self.rows[int(rng.integers(0, len(self.rows)))]["golden_answers"][0]
            if not exact_match(cand, golds):
                return cand
        return "I don't know"

    def close(self) -> None:
        """Release the tools and the HTTP client this env created (idempotent)."""
        super().close()
        if self._owned_client is not None:
            self._owned_client.close()
            self._owned_client = None


def _short(obj: Any, n: int = 120) -> str:
    r = repr(obj)
    return r if len(r) <= n else r[: n - 3] + "..."
