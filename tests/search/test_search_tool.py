"""make_search_tool: schema, output format, meta, custom formatter, argument checks."""

from __future__ import annotations

import pytest

from turngym.tools.base import Tool
from turngym.tools.search import BM25Index, Hit, RetrieverClient, format_hits_searchr1, make_search_tool
from turngym.tools.toolset import ToolSet
from turngym.types import ToolCall

DOCS = [
    {"id": "a", "contents": '"Alpha"\nalpha particles are helium nuclei'},
    {"id": "b", "contents": '"Beta"\nbeta particles are electrons'},
]


def test_schema_and_output():
    tool = make_search_tool(BM25Index.build(DOCS, cache=False), topk=2)
    assert isinstance(tool, Tool) and tool.name == "search" and tool.required == ["query"]
    assert tool.schema["function"]["parameters"]["properties"]["query"]["type"] == "string"
    with ToolSet([tool]) as ts:
        (res,) = ts.execute([ToolCall("search", {"query": "helium particles"}, id="c1")])
    assert res.ok and res.call_id == "c1"
    assert res.output.splitlines() == [
        'Doc 1(Title: "Alpha") alpha particles are helium nuclei',
        'Doc 2(Title: "Beta") beta particles are electrons',
    ]
    assert res.meta["doc_ids"] == ["a", "b"] and res.meta["scores"][0] > res.meta["scores"][1] > 0


def test_custom_name_formatter_and_no_hits():
    idx = BM25Index.build(DOCS, cache=False)
    tool = make_search_tool(idx, topk=1, name="lookup", formatter=lambda hits: "|".join(h.id for h in hits))
    with ToolSet([tool]) as ts:
        hit, miss = ts.execute(
            [ToolCall("lookup", {"query": "electrons"}), ToolCall("lookup", {"query": "zzz"})]
        )
    assert hit.output == "b" and miss.ok and miss.output == "" and miss.meta["doc_ids"] == []
    assert format_hits_searchr1([]) == "No documents found."
    assert format_hits_searchr1([Hit("x", "no title line", 1.0)]) == "Doc 1(Title: no title line) "


def test_bad_construction():
    with pytest.raises(TypeError, match="search"):
        make_search_tool(object())
    with pytest.raises(ValueError, match="topk"):
        make_search_tool(BM25Index.build(DOCS, cache=False), topk=0)


def test_timeout_covers_client_retries():
    client = RetrieverClient("http://127.0.0.1:9", timeout_s=2.0, retries=2, backoff=0.5)
    assert client.max_duration_s == pytest.approx(3 * 2.0 + 0.5 + 1.0)
    assert make_search_tool(client).timeout_s == pytest.approx(client.max_duration_s + 1)
    assert make_search_tool(client, timeout_s=3.0).timeout_s == 3.0
    assert make_search_tool(BM25Index.build(DOCS, cache=False)).timeout_s is None
    with pytest.raises(ValueError, match="http"):
        RetrieverClient("127.0.0.1:8000")
    client.close()
