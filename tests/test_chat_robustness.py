"""Appendix A4: the chat under attack (issue 23). The model's text, the tools' behaviour and the user's messages and
settings: each case is a test, and parse_response is checked on generated nested and malformed text (hypothesis)."""
import json, math, os, sys
import pytest, torch
from hypothesis import given, settings, strategies as st
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, Qwen3Tokenizer
from qwen3_lib.errors import ContextLengthError
from qwen3_lib.chat import parse_response, Chat
from qwen3_lib.chat_checks import (read_tool_call, function_schema, as_tools, load_tools, run_tool, strict_json,
                                   MAX_JSON_DEPTH, TOOL_RESULT_CHARS)
from doubles import ScriptedModel

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: miniature models on one thread

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=151_936)).eval()

@pytest.fixture(scope="module")
def short():
    "A miniature model that reads at most 256 positions: easy to overflow."
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=151_936, max_position_embeddings=256)).eval()

call = lambda name, args: {"type": "function", "function": {"name": name, "arguments": args}}

# --- the model's text ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[" * 100_000, "<tool_call>" + "[" * 100_000,
                                  '<tool_call>{"name": "f", "arguments": ' + '{"a": ' * 5_000 + "1" + "}" * 5_001,
                                  "<tool_call>" + '"' * 50_001, "<tool_call>" * 10_000])
def test_parse_response_reports_deep_nesting_instead_of_raising(text):
    m = parse_response(text)
    assert m["role"] == "assistant" and "tool_calls" not in m
    if text.startswith("<tool_call>{"): assert "nested deeper than 32 levels" in m["errors"][0]

def test_nesting_up_to_the_bound_is_a_call():
    ok = '{"name": "f", "arguments": {"x": ' + "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2) + "}}"
    assert read_tool_call(ok)[0] is not None
    assert "nested deeper" in read_tool_call(ok.replace('{"x": [', '{"x": [[').replace("]}}", "]]}}"))[1]
    assert read_tool_call('{"name": "f", "arguments": {"s": "' + "[" * 1000 + '"}}')[0] is not None  # text, not depth

TAGS = st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>", "<|endoftext|>", "{", "}",
                        "[", "]", '"', ":", ",", "\\", '"name": "f"', '"arguments": ', "NaN", "-Infinity", "1e999",
                        "\n", " ", "x", "{}", '"\\ud800"', "9" * 5000])
MALFORMED = st.lists(TAGS | st.text(max_size=4), max_size=40).map("".join)
NESTED = st.tuples(st.integers(0, 3000), st.sampled_from("[{"), st.booleans()).map(
    lambda t: '<tool_call>{"name": "f", "arguments": ' + (t[1] if t[1] == "[" else '{"a": ') * t[0] + "1"
              + ("]" if t[1] == "[" else "}") * (t[0] if t[2] else t[0] // 2) + "}</tool_call>")

@settings(max_examples=300)
@given(st.one_of(MALFORMED, NESTED, st.text()))
def test_parse_response_never_raises_and_writes_strict_json(text):
    m = parse_response(text)
    assert m["role"] == "assistant" and isinstance(m["content"], str)
    assert all(isinstance(c["function"]["arguments"], (dict, str)) for c in m.get("tool_calls", []))
    assert all(isinstance(e, str) for e in m.get("errors", []))
    json.dumps(m, allow_nan=False)                                       # strict JSON, whatever was read
    Qwen3Tokenizer().apply_chat_template([{"role": "user", "content": "q"}, m], add_generation_prompt=False)

def test_a_tool_call_ends_the_reasoning_without_think_end():
    m = parse_response('<think>\nI need the weather.\n<tool_call>\n{"name": "w", "arguments": {"c": "Paris"}}\n'
                       '</tool_call><|im_end|>')
    assert m["reasoning_content"] == "I need the weather." and m["tool_calls"] == [call("w", {"c": "Paris"})]
    m = parse_response("<think>\nI could write <tool_call> here, and go on thinking")   # no JSON object follows
    assert "tool_calls" not in m and "errors" not in m and m["content"] == ""

def test_arguments_given_as_a_json_string_stay_a_string(tok):
    m = parse_response('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>')
    assert m["tool_calls"] == [call("f", '{"x": 1}')]                    # as vLLM's Hermes parser and Qwen-Agent
    assert run_tool({"f": lambda x: x}, m["tool_calls"][0]).startswith('error: "arguments" must be a JSON object')

def test_a_call_missing_arguments_is_an_error_entry():
    m = parse_response('<tool_call>\n{"name": "f"}\n</tool_call>')
    assert "tool_calls" not in m and 'no "arguments"' in m["errors"][0]

def test_nan_and_infinity_in_a_call_are_refused():
    for bad in ("NaN", "Infinity", "-Infinity", "1e999"):
        assert "is not JSON" in read_tool_call('{"name": "f", "arguments": {"x": %s}}' % bad)[1]

# --- the tools ----------------------------------------------------------------------------------------------
def bye(code: int) -> str:
    "Leaves."
    sys.exit(code)

class Unprintable(Exception):
    def __str__(self): raise RuntimeError("no message")

def odd() -> str:
    "Raises an exception whose message fails."
    raise Unprintable()

def deep() -> list:
    "A result nested too deeply to write."
    x = []
    for _ in range(100_000): x = [x]
    return x

def test_tool_errors_of_any_kind_become_tool_results():
    tools = {"bye": bye, "odd": odd, "deep": deep, "boom": lambda: 1 / 0}
    assert run_tool(tools, call("bye", {"code": 3})) == "error: SystemExit: 3"
    assert run_tool(tools, call("odd", {})) == "error: Unprintable"
    assert run_tool(tools, call("deep", {})).startswith("error: RecursionError")
    assert run_tool(tools, call("boom", {})) == "error: ZeroDivisionError: division by zero"
    assert run_tool(tools, call("bye", {"code": 3, "extra": 1})).startswith("error: TypeError")
    def ctrl_c() -> str:
        "The user presses Ctrl-C."
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):                               # the user's Ctrl-C still stops a reply
        run_tool({"ctrl_c": ctrl_c}, call("ctrl_c", {}))

def test_long_tool_results_are_cut_to_the_budget_with_a_marker():
    out = run_tool({"dump": lambda: "x" * 2_000_000}, call("dump", {}))
    assert out.startswith("x" * TOOL_RESULT_CHARS) and out.count("x") == TOOL_RESULT_CHARS
    assert "cut: the result has 2,000,000 characters; the first 8,000 are shown" in out
    assert run_tool({"dump": lambda: "x" * 10}, call("dump", {}), limit=4).startswith("xxxx\n[... cut")

def test_tool_results_are_strict_json():
    out = run_tool({"f": lambda: {"mean": math.nan, "hi": math.inf, "lo": [-math.inf], "ok": 1.5}}, call("f", {}))
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} written")) == \
        {"mean": "NaN", "hi": "Infinity", "lo": ["-Infinity"], "ok": 1.5}
    assert strict_json({1, 2}) in ('"{1, 2}"', '"{2, 1}"')                   # other objects: their str()

def test_a_system_exit_tool_does_not_end_the_chat(tiny, tok):
    script = ['<tool_call>\n{"name": "bye", "arguments": {"code": 0}}\n</tool_call>', "Still here."]
    chat = Chat(ScriptedModel(tiny, tok, script), tok, tools=[bye], enable_thinking=False, max_new_tokens=30)
    events = list(chat.send("Leave."))
    assert ("tool_result", 'bye({"code": 0}) = error: SystemExit: 0') in events
    assert chat.messages[-1]["content"] == "Still here."

def _impl(x: int) -> int:
    "Twice x."
    return 2 * x

def test_a_tool_is_offered_and_looked_up_under_one_name(tiny, tok, tmp_path):
    f = tmp_path / "tools.py"
    f.write_text("def _impl(x: int) -> int:\n    'Twice x.'\n    return 2 * x\n\npublic = _impl\n")
    tools = load_tools(f)
    assert list(tools) == ["public"]
    script = ['<tool_call>\n{"name": "public", "arguments": {"x": 21}}\n</tool_call>', "42."]
    chat = Chat(ScriptedModel(tiny, tok, script), tok, tools=tools, enable_thinking=False, max_new_tokens=30)
    assert [s["function"]["name"] for s in chat.schemas] == ["public"]
    events = list(chat.send("Twice 21?"))
    assert ("tool_result", 'public({"x": 21}) = 42') in events
    assert '"name": "public"' in tok.decode(chat.cached) and '"_impl"' not in tok.decode(chat.cached)

def test_a_tool_annotated_with_an_unknown_name():
    def forecast(city: "Town") -> str:                                    # noqa: F821 (Town is defined nowhere)
        "Weather."
    with pytest.raises(TypeError, match=r"tool forecast: cannot read its type hints \(NameError: name 'Town'"):
        function_schema(forecast)

def test_tools_takes_a_list(tiny, tok):
    with pytest.raises(TypeError, match=r"takes a list of Python functions, e\.g\. tools=\[get_weather\]"):
        Chat(tiny, tok, tools=function_schema(_impl))
    with pytest.raises(TypeError, match=r"tools=\[f\]"):
        Chat(tiny, tok, tools=_impl)
    with pytest.raises(TypeError, match="named Python function"):
        Chat(tiny, tok, tools=[function_schema(_impl)])
    with pytest.raises(ValueError, match="two tools are named '_impl'"):
        Chat(tiny, tok, tools=[_impl, _impl])
    assert as_tools([]) == ({}, None) and Chat(tiny, tok, tools={"twice": _impl}).tools == {"twice": _impl}

def test_a_tools_file_that_exits_while_loading(tmp_path):
    (tmp_path / "t.py").write_text("import sys\nsys.exit('no')\n")
    with pytest.raises(ValueError, match="SystemExit: no"):
        load_tools(tmp_path / "t.py")

# --- the user's messages and settings ----------------------------------------------------------------------
def test_a_message_that_does_not_fit_is_refused_and_the_chat_goes_on(short, tok):
    chat = Chat(ScriptedModel(short, tok, ["Hello!", "Still here."]), tok, enable_thinking=False, max_new_tokens=8)
    list(chat.send("Hi"))
    before, cached, stats = [dict(m) for m in chat.messages], list(chat.cached), len(chat.stats)
    with pytest.raises(ContextLengthError, match="at most 256"):
        list(chat.send("word " * 300))
    assert chat.messages == before and chat.cached == cached and len(chat.stats) == stats
    list(chat.send("Still there?"))                                      # the chat goes on, its cache intact
    assert chat.messages[-1]["content"] == "Still here." and chat.stats[-1]["prefilled"] < chat.stats[-1]["prompt"]

def test_a_tool_result_that_does_not_fit_is_refused_and_the_chat_goes_on(short, tok):
    script = ['<tool_call>\n{"name": "dump", "arguments": {"n": 2000}}\n</tool_call>', "Done."]
    def dump(n: int) -> str:
        "n words."
        return "word " * n
    chat = Chat(ScriptedModel(short, tok, script), tok, tools=[dump], enable_thinking=False, max_new_tokens=40)
    with pytest.raises(ContextLengthError):
        list(chat.send("Dump."))
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]  # the results did not enter
    list(chat.send("Thanks."))
    assert chat.messages[-1]["content"] == "Done."

@pytest.mark.parametrize("kw, error, match", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be >= 1, got 0"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens must be an integer"),
    (dict(max_tool_rounds=-1), ValueError, "max_tool_rounds must be >= 0"),
    (dict(seed=2**64), ValueError, r"seed must be None or an integer in \[0, 2\*\*63\)"),
    (dict(seed=1.5), ValueError, "seed must be"),
    (dict(generation="greedy"), TypeError, "generation must be a GenerationConfig")])
def test_bad_generation_settings_are_refused(tiny, tok, kw, error, match):
    with pytest.raises(error, match=match):
        Chat(tiny, tok, **kw)

def test_a_generation_config_changed_after_it_was_made_is_checked(tiny, tok):
    from qwen3_lib.generate import GenerationConfig
    g = GenerationConfig()
    g.temperature = -1
    with pytest.raises(ValueError, match="temperature"):
        Chat(tiny, tok, generation=g)
