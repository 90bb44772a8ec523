"""Chapter 08c: `python -m qwen3_lib generate` and `chat`. User errors give one line and an exit status, never a
traceback; the chat is driven end to end through a pseudo-terminal (pexpect), tools and Ctrl-C included, with its
replies scripted by tests/scripted_cli.py (the package has no test-only flags)."""
import argparse, io, json, os, re, subprocess, sys
from pathlib import Path
import pytest, torch
import qwen3_lib.config
import qwen3_lib.tokenizer as T
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, save_pretrained
from qwen3_lib.__main__ import main, _parser

ENV = {k: v for k, v in os.environ.items() if k != "QWEN3_WEIGHTS"} | {"OMP_NUM_THREADS": "1"}

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    "A miniature checkpoint with random weights and Qwen3's vocabulary, as save_pretrained writes it."
    d = tmp_path_factory.mktemp("tiny-qwen3")
    torch.manual_seed(0)
    save_pretrained(Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=151_936)), d)
    return d

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: miniature models on one thread

@pytest.fixture(autouse=True)
def no_env_weights(monkeypatch):
    monkeypatch.delenv("QWEN3_WEIGHTS", raising=False)

def run(capsys, *argv):
    "main() in-process: (exit status, stdout, stderr)."
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err

def test_random_weights_are_announced(capsys, monkeypatch):
    # without weights the CLI builds a full-size random Qwen3; a miniature one is enough to check what it says
    monkeypatch.setattr(qwen3_lib.config, "Qwen3Config", lambda: Qwen3Config.tiny(vocab_size=151_936))
    status, out, err = run(capsys, "generate", "Hello", "--max-new-tokens", "3")
    assert status == 0 and "RANDOM weights" in err and out.endswith("\n")

def test_weights_chat_and_sampling_flags(capsys, ckpt, monkeypatch):
    status, out, err = run(capsys, "generate", "Hi", "--weights", ckpt, "--chat", "--no-thinking", "--max-new-tokens", 4,
                           "--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--seed", 1)
    assert status == 0 and "RANDOM" not in err and err == ""
    monkeypatch.setenv("QWEN3_WEIGHTS", str(ckpt))
    assert run(capsys, "generate", "Hi", "--max-new-tokens", 4)[0] == 0

@pytest.mark.parametrize("args", [["generate", "x", "--max-tokens", "3"], ["generate"], ["frobnicate", "x"], [],
                                  ["generate", "x", "--temperature", "-1"], ["generate", "x", "--top-k", "many"],
                                  ["generate", "x", "--temperature", "inf"], ["generate", "x", "--temperature", "nan"],
                                  ["generate", "x", "--top-p", "0"], ["generate", "x", "--max-new-tokens", "0"],
                                  ["generate", ""], ["generate", " \n "], ["chat", "--top-k", "0"]])
def test_usage_errors_exit_2(capsys, args):
    status, out, err = run(capsys, *args)
    assert status == 2 and "usage:" in err and "error:" in err.strip().splitlines()[-1]

def one_line_error(capsys, *argv):
    status, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith("qwen3_lib: error: "), err
    return lines[0]

def test_missing_weights_dir(capsys, tmp_path):
    line = one_line_error(capsys, "generate", "x", "--weights", tmp_path / "missing")
    assert "does not exist" in line and "hf download Qwen/Qwen3-0.6B --local-dir" in line   # the pinned hub's command

@pytest.mark.parametrize("field, value", [("num_hidden_layers", "two"), ("hidden_size", None), ("vocab_size", "151936"),
                                          ("head_dim", 32.5)])
def test_config_with_a_wrongly_typed_field(capsys, ckpt, tmp_path, field, value):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpt.iterdir(): (bad / f.name).symlink_to(f)
    cfg = json.loads((ckpt / "config.json").read_text()) | {field: value}
    (bad / "config.json").unlink(); (bad / "config.json").write_text(json.dumps(cfg))
    one_line_error(capsys, "generate", "x", "--weights", bad)

def test_bad_generation_config(capsys, ckpt, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpt.iterdir(): (bad / f.name).symlink_to(f)
    (bad / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": "warm"}))
    assert "'temperature'" in one_line_error(capsys, "generate", "x", "--weights", bad)

def test_an_unwritable_or_odd_cache_costs_only_the_rebuild(capsys, ckpt, tmp_path, monkeypatch):
    built = T.cached_tokenizer()                              # a real rebuild takes seconds; count them instead
    calls = []
    monkeypatch.setattr(T, "build_tokenizer", lambda: calls.append(1) or built)
    (tmp_path / "file").write_text("x")
    for place in (tmp_path / "file" / "cache", "/proc/self/qwen3"):
        monkeypatch.setenv("QWEN3_CACHE", str(place))
        status, out, err = run(capsys, "generate", "Hi", "--weights", ckpt, "--max-new-tokens", 2)
        assert status == 0 and err == ""
    assert len(calls) == 2

def test_tools_file_that_does_not_load(capsys, ckpt, tmp_path):
    (tmp_path / "t.py").write_text("def f(:\n")
    assert "SyntaxError" in one_line_error(capsys, "chat", "--weights", ckpt, "--tools", tmp_path / "t.py")
    assert "no tools file" in one_line_error(capsys, "chat", "--weights", ckpt, "--tools", tmp_path / "none.py")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")          # would end the program silently
    assert "SystemExit" in one_line_error(capsys, "chat", "--weights", ckpt, "--tools", tmp_path / "exits.py")

def with_template(ckpt, d, source):
    "The checkpoint's files linked into d, with chat_template.jinja holding source."
    d.mkdir(exist_ok=True)
    for f in ckpt.iterdir():
        if not (d / f.name).exists(): (d / f.name).symlink_to(f)
    (d / "chat_template.jinja").write_text(source)
    return d

@pytest.mark.parametrize("command, source, what", [
    (["chat"], "{{ raise_exception('This model needs a system message.') }}", "line 1: This model needs a system message."),
    (["generate", "Hi", "--chat"], "{{ messages[0].content.upper( }}", "line 1: unexpected '}', expected ')' (a Jinja syntax error)"),
    (["generate", "Hi", "--chat"], "{{ messages.__class__.__name__ }}", "line 1: SecurityError: access to attribute"),
    (["generate", "Hi", "--chat"], "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "line 1: it ran past its budget of")])
def test_a_chat_template_that_fails_is_one_line(capsys, ckpt, tmp_path, monkeypatch, command, source, what):
    # before: jinja2's TemplateError, TemplateSyntaxError or SecurityError reached the terminal as a traceback
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))      # the chat must fail before it reads a line
    d = with_template(ckpt, tmp_path / "ckpt", source)
    line = one_line_error(capsys, *command, "--weights", d, "--max-new-tokens", 2)
    assert f"qwen3_lib: error: chat template {d}/chat_template.jinja, {what}" in line
    assert sys.stdin.read() == "Hello\n"

def test_a_template_that_refuses_one_message_leaves_the_chat_going(capsys, ckpt, tmp_path, monkeypatch):
    d = with_template(ckpt, tmp_path / "ckpt", "{% for m in messages %}{% if m.content == 'boom' %}"
                      "{{ raise_exception('no booms here') }}{% endif %}{{ m.content }}\n{% endfor %}")
    monkeypatch.setattr(sys, "stdin", io.StringIO("boom\nHello\n"))
    status, out, err = run(capsys, "chat", "--weights", d, "--max-new-tokens", 2)
    assert status == 0 and f"error: chat template {d}/chat_template.jinja, line 1: no booms here" in out
    assert err.count("prompt tokens prefilled") == 1                # "Hello" was answered

def test_a_misspelt_row_kernel_is_one_line_and_exit_2():
    # QWEN3_ROW_KERNEL is checked when qwen3_lib is imported, before main() can catch anything: a program that
    # imports the library gets the ValueError; `python -m qwen3_lib` prints its line alone, as a usage error
    r = subprocess.run([sys.executable, "-m", "qwen3_lib", "generate", "Hi"], capture_output=True, text=True,
                       env=ENV | {"QWEN3_ROW_KERNEL": "gemv"}, timeout=300)
    assert r.returncode == 2 and r.stderr == ("qwen3_lib: error: QWEN3_ROW_KERNEL='gemv': use one of ('mv', 'linear', 'reduce'), "
                                              "or unset it to measure\n")
    r = subprocess.run([sys.executable, "-c", "import qwen3_lib"], capture_output=True, text=True,
                       env=ENV | {"QWEN3_ROW_KERNEL": "gemv"}, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("ValueError: QWEN3_ROW_KERNEL='gemv'")

def test_flags_that_do_nothing_are_reported(capsys, ckpt):
    status, out, err = run(capsys, "generate", "Hi", "--weights", ckpt, "--max-new-tokens", 2, "--no-thinking",
                           "--top-k", 5, "--seed", 3)
    assert status == 0
    assert "--no-thinking has no effect without --chat" in err
    assert "--top-k has no effect with greedy decoding" in err and "--seed has no effect" in err
    assert run(capsys, "generate", "Hi", "--weights", ckpt, "--max-new-tokens", 2, "--temperature", "1e-300",
               "--top-k", 5)[2] == ""                         # a tiny temperature samples: nothing to report

def test_help_has_text_and_default_for_every_flag(capsys):
    parser = _parser()
    subs = parser._subparsers._group_actions[0].choices
    assert set(subs) == {"generate", "chat"}
    for name, sub in subs.items():
        assert all(a.help != argparse.SUPPRESS for a in sub._actions)       # no hidden (test-only) flags
        shown = [a for a in sub._actions if a.dest != "help"]
        assert len(shown) >= 7
        for a in shown:
            assert a.help and ("default" in a.help or not a.option_strings), (name, a.dest)
        status, out, err = run(capsys, name, "--help")
        assert status == 0 and all(s in out for a in shown for s in a.option_strings)

def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "qwen3_lib", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300, **kw)

def test_piped_into_head_stops_quietly(ckpt):
    r = subprocess.run(f"{sys.executable} -m qwen3_lib generate Hello --weights {ckpt} --max-new-tokens 2000 | head -c 5",
                       shell=True, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and r.stderr == "" and len(r.stdout) <= 5

# --- the chat, end to end in a pseudo-terminal ------------------------------------------------------
TOOLS = '''def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b
'''
SCRIPT = ['<think>\nThe user wants a sum; I have a tool.\n</think>\n\n'
          '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
          '<think>\nThe tool said 5.\n</think>\n\n2 + 3 = 5.',
          {"text": "Once upon a time", "wait": True}]     # scripted_cli.py: a reply that only Ctrl-C ends

def test_chat_in_a_terminal(ckpt, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    (tmp_path / "tools.py").write_text(TOOLS)
    (tmp_path / "script.json").write_text(json.dumps(SCRIPT))
    scripted = Path(__file__).parent / "scripted_cli.py"            # the CLI with its replies scripted
    child = pexpect.spawn(sys.executable, [str(scripted), str(tmp_path / "script.json"), "chat", "--weights", str(ckpt),
                          "--tools", str(tmp_path / "tools.py"), "--max-new-tokens", "100", "--system", "You can add."],
                          env=ENV, encoding="utf-8", timeout=120, dimensions=(40, 200))
    transcript = []
    def expect(pattern):
        child.expect(pattern)
        transcript.append(child.before + child.after)
    expect("tools: add")
    expect(">>> ")
    child.sendline("What is 2 + 3?")
    expect(r"\(\d+ of \d+ prompt tokens prefilled, first token after [\d.]+ s[^\n]*\n")
    expect(r"\(\d+ of \d+ prompt tokens prefilled, first token after [\d.]+ s[^\n]*\n")
    expect(">>> ")
    child.sendline("/no_think")
    expect(r"\(thinking off\)")
    expect(">>> ")
    child.sendline("Now tell me a very long story.")
    expect("long story.\r\n")                             # the terminal's echo of the line
    expect("Once upon a time")                            # the reply has begun, and waits for Ctrl-C however long
    child.sendintr()                                      # (by the program's state, not the machine's speed)
    expect(r"\[stopped\]")
    expect(r"\(\d+ of \d+ prompt tokens prefilled")
    expect(">>> ")
    child.sendline("/system Be brief.")
    expect(r"\(system prompt: 'Be brief.'\)")
    expect(">>> ")
    child.sendintr()                                      # Ctrl-C at the prompt: the chat stays
    expect(r"Ctrl-D leaves")
    child.sendline("/reset")
    expect(r"\(a new conversation\)")
    expect(">>> ")
    child.sendeof()                                       # Ctrl-D: leave
    child.expect(pexpect.EOF)
    child.close()
    text = re.sub(r"\x1b\[[0-9;]*m", "", "".join(transcript) + child.before)
    assert child.exitstatus == 0 and "Traceback" not in text
    assert "thinking: The user wants a sum; I have a tool." in text
    assert 'tool: add({"a": 2, "b": 3}) = 5' in text and "2 + 3 = 5." in text
    assert re.search(r"\nOnce upon a time(\^C)? \[stopped\]", text)         # the terminal may echo the ^C
    prefills = [(int(a), int(b)) for a, b in re.findall(r"\((\d+) of (\d+) prompt tokens prefilled", text)]
    assert len(prefills) == 3 and prefills[0][0] == prefills[0][1] and prefills[1][0] < 20 < prefills[1][1]
    (tmp_path / "session.txt").write_text(text)
