"""Parsers: hand cases, JSON repair, and hypothesis fuzzing (never raise; format/parse round trip)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turngym.errors import ConfigError, RegistryError
from turngym.tools import PARSERS, ToolCall, get_parser, loads_lenient
from turngym.tools.parsers import repair_json

SCHEMAS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "s",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "c",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "two args: no tag",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "required": ["a", "b"],
            },
        },
    },
]


def test_registry_names_and_unknown():
    assert set(PARSERS.names()) >= {"hermes", "tags"}
    with pytest.raises(RegistryError, match="Did you mean 'hermes'"):
        get_parser("hermas")


# ----------------------------------------------------------------------------- hermes


def test_hermes_several_calls_and_answer():
    p = get_parser("hermes")
    text = (
        "Let me look.\n"
        '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>\n'
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'
    )
    r = p.parse(text)
    assert [(c.name, c.arguments, c.id) for c in r.calls] == [
        ("search", {"query": "capital of France"}, "call_0"),
        ("calculator", {"expression": "2+2"}, "call_1"),
    ]
    assert r.answer is None and r.errors == []
    assert r.calls[0].raw.startswith("<tool_call>") and r.calls[0].raw.endswith("</tool_call>")
    r2 = p.parse("thinking... <answer> Paris </answer>")
    assert r2.answer == "Paris" and r2.calls == [] and r2.has_action


@pytest.mark.parametrize(
    "body, expected",
    [
        ('{"name": "s", "arguments": {"q": "a",},}', {"q": "a"}),  # trailing commas
        ("{'name': 's', 'arguments': {'q': 'it\\'s'}}", {"q": "it's"}),  # single quotes
        ('{"name": "s", "arguments": {"q": "line1\nline2\ttab"}}', {"q": "line1\nline2\ttab"}),  # raw newline
        (
            '{"name": "s", "arguments": {"a": True, "b": None, "c": False}}',
            {"a": True, "b": None, "c": False},
        ),
        ('{"name": "s", "arguments": {"code": "re.match(\'\\d+\', x)"}}', {"code": "re.match('\\d+', x)"}),
        ('{name: "s", arguments: {q: "x"}}', {"q": "x"}),  # unquoted keys
        ('```json\n{"name": "s", "arguments": {"q": "x"}}\n```', {"q": "x"}),  # code fence
        ('{"name": "s", "arguments": "{\\"q\\": \\"x\\"}"}', {"q": "x"}),  # arguments as a JSON string
        ('{"name": "s", "arguments": {"q": "x"}', {"q": "x"}),  # missing closing brace
        ('{"name": "s", "parameters": {"q": "x"}}', {"q": "x"}),  # 'parameters' instead of 'arguments'
        ('{"function": {"name": "s", "arguments": {"q": "x"}}}', {"q": "x"}),  # OpenAI-style wrapper
        ('{"name": "s"}', {}),  # no arguments
    ],
)
def test_hermes_repairs_common_slips(body, expected):
    r = get_parser("hermes").parse(f"<tool_call>{body}</tool_call>")
    assert r.errors == [], r.errors
    assert len(r.calls) == 1 and r.calls[0].name == "s" and r.calls[0].arguments == expected


def test_hermes_list_of_calls_in_one_block():
    r = get_parser("hermes").parse(
        '<tool_call>[{"name": "a"}, {"name": "b", "arguments": {"x": 1}}]</tool_call>'
    )
    assert [c.name for c in r.calls] == ["a", "b"] and [c.id for c in r.calls] == ["call_0", "call_1"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("<tool_call>not json at all</tool_call>", "invalid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'missing "name"'),
        ('<tool_call>{"name": "s", "arguments": [1, 2]}</tool_call>', '"arguments" must be a JSON object'),
        ('<tool_call>{"name": "s", "arguments": "nope"}</tool_call>', '"arguments" is a string'),
        ("<tool_call>42</tool_call>", "expected a JSON object"),
        ("<tool_call>", "not closed and empty"),
        ("<tool_call>{{{{ broken", "close it with </tool_call>"),
    ],
)
def test_hermes_clear_errors(text, fragment):
    r = get_parser("hermes").parse(text)
    assert r.calls == []
    assert len(r.errors) == 1 and fragment in r.errors[0], r.errors
    assert "<tool_call>" in r.errors[0]  # tells the model the expected format


def test_hermes_good_and_bad_calls_mixed_and_unclosed_tail():
    r = get_parser("hermes").parse(
        '<tool_call>{"name": "a"}</tool_call><tool_call>oops</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}'
    )
    assert [c.name for c in r.calls] == ["a", "b"]
    assert len(r.errors) == 1 and r.errors[0].startswith("tool call #2")


def test_hermes_unclosed_answer_at_end_and_last_answer_wins():
    p = get_parser("hermes")
    assert p.parse("so <answer>42").answer == "42"
    assert p.parse("<answer>1</answer> then <answer>2</answer>").answer == "2"


def test_hermes_format_escapes_closing_tags():
    p = get_parser("hermes")
    call = ToolCall("python", {"code": "print('</tool_call>')"})
    text = p.format([call], answer="done")
    r = p.parse(text)
    assert r.errors == [] and r.calls[0].arguments == call.arguments and r.answer == "done"
    with pytest.raises(ValueError, match="markup"):
        p.format(answer="a </answer> b")


def test_loads_lenient_reports_failure():
    assert loads_lenient('{"a": 1}') == ({"a": 1}, False)
    assert loads_lenient("{'a': 1,}") == ({"a": 1}, True)
    with pytest.raises(ValueError, match="line 1 column"):
        loads_lenient('{"a": 1 "b": 2')
    assert json.loads(repair_json("{'a': [1, 2,], 'b': True,}")) == {"a": [1, 2], "b": True}


# ----------------------------------------------------------------------------- tags


def test_tags_parse_calls_and_answer():
    p = get_parser("tags", SCHEMAS)
    assert p.params == {"search": "query", "calculator": "expression"}  # 'lookup' has two params: no tag
    r = p.parse("<think>hmm</think><search> capital of France </search> <calculator>2*3</calculator>")
    assert [(c.name, c.arguments) for c in r.calls] == [
        ("search", {"query": "capital of France"}),
        ("calculator", {"expression": "2*3"}),
    ]
    assert r.answer is None and r.errors == []
    assert p.parse("<answer>Paris</answer>").answer == "Paris"


def test_tags_defaults_without_schemas_and_errors():
    p = get_parser("tags")
    assert p.params["search"] == "query" and p.params["python"] == "code"
    r = p.parse("<search></search>")
    assert r.calls == [] and "empty <search>" in r.errors[0]
    r = p.parse("<search>open question")
    assert r.calls == [] and "<search> is not closed" in r.errors[0]
    assert p.parse("<answer>cut off").answer == "cut off"
    with pytest.raises(ConfigError, match="exactly one required string"):
        get_parser("tags", [SCHEMAS[2]])


def test_tags_format_rejects_unrepresentable():
    p = get_parser("tags", SCHEMAS)
    with pytest.raises(ValueError, match="no tag"):
        p.format([ToolCall("lookup", {"a": "x", "b": "y"})])
    with pytest.raises(ValueError, match="exactly one string argument"):
        p.format([ToolCall("search", {"query": "x", "k": "3"})])
    with pytest.raises(ValueError, match="markup"):
        p.format([ToolCall("search", {"query": "a </search> b"})])


# ----------------------------------------------------------------------------- fuzzing

# Thousands of inputs in the fast tier: 1000 junk texts (x2 parsers) + 1000 lenient-JSON texts + ~700 round
# trips; the slow tier adds 5000 more junk texts.
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_RT = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARKUP = st.sampled_from(
    [
        "<tool_call>",
        "</tool_call>",
        "<answer>",
        "</answer>",
        "<search>",
        "</search>",
        "<calculator>",
        "</calculator>",
        "{",
        "}",
        "[",
        "]",
        '"',
        "'",
        ",",
        ":",
        "\\",
        "\n",
        "name",
        "arguments",
        "True",
        "null",
        '{"name": "search", "arguments": {',
        "\x00",
        "\ud7ff",
        "𝔘",
    ]
)
JUNK = st.lists(st.one_of(st.text(max_size=20), MARKUP), max_size=30).map("".join)


def _never_raise(text: str) -> None:
    for name in ("hermes", "tags"):
        r = get_parser(name, SCHEMAS if name == "tags" else None).parse(text)
        assert isinstance(r.calls, list) and isinstance(r.errors, list)
        assert r.answer is None or isinstance(r.answer, str)
        for c in r.calls:
            assert isinstance(c.name, str) and c.name and isinstance(c.arguments, dict)
            json.dumps(c.arguments)  # always JSON-able


@FUZZ
@given(JUNK)
def test_fuzz_parsers_never_raise(text):
    _never_raise(text)


@pytest.mark.slow
@FUZZ_SLOW
@given(JUNK)
def test_fuzz_parsers_never_raise_long(text):
    _never_raise(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_loads_lenient_never_raises_anything_but_valueerror(text):
    try:
        value, _ = loads_lenient(text)
    except ValueError:
        return
    json.dumps(value)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=15),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
FREE = st.text(max_size=40).filter(lambda s: "<" not in s)


@FUZZ_RT
@given(
    st.lists(st.tuples(NAMES, st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4)), max_size=4),
    st.none() | FREE,
    FREE,
)
def test_fuzz_hermes_round_trip(calls, answer, thought):
    p = get_parser("hermes")
    tcs = [ToolCall(n, a) for n, a in calls]
    r = p.parse(p.format(tcs, answer=answer, thought=thought))
    assert r.errors == []
    assert [(c.name, c.arguments) for c in r.calls] == [(c.name, c.arguments) for c in tcs]
    assert r.answer == (answer.strip() if answer is not None else None)


@FUZZ_RT
@given(
    st.lists(
        st.tuples(st.sampled_from(["search", "calculator"]), FREE.filter(lambda s: s.strip())), max_size=4
    ),
    st.none() | FREE,
    FREE,
)
def test_fuzz_tags_round_trip(calls, answer, thought):
    p = get_parser("tags", SCHEMAS)
    tcs = [ToolCall(n, {p.params[n]: a}) for n, a in calls]
    r = p.parse(p.format(tcs, answer=answer, thought=thought))
    assert r.errors == []
    assert [(c.name, c.arguments) for c in r.calls] == [
        (c.name, {p.params[c.name]: a.strip()}) for c, (_, a) in zip(tcs, calls)
    ]
    assert r.answer == (answer.strip() if answer is not None else None)


@FUZZ_RT
@given(
    st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4),
    st.sampled_from(["trailing", "single", "py"]),
)
def test_fuzz_repair_of_slipped_json(args, slip):
    """Valid JSON with a typical slip injected still parses to the same value."""
    text = json.dumps({"name": "t", "arguments": args}, ensure_ascii=False).replace("</", "<\\/")
    if slip == "trailing":
        bad = text[:-1] + ",}"
    elif slip == "py":  # Python literals: a True flag injected into the arguments
        args = {**args, "flag_": True}
        text = json.dumps({"name": "t", "arguments": args}, ensure_ascii=False).replace("</", "<\\/")
        bad = text.replace('"flag_": true', '"flag_": True')
    else:
        bad = text  # single quotes on the keys we control
        bad = bad.replace('"name": "t"', "'name': 't'")
    r = get_parser("hermes").parse(f"<tool_call>{bad}</tool_call>")
    assert r.errors == [], (bad, r.errors)
    assert r.calls[0].arguments == args
