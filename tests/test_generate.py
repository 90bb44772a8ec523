"KV cache and generation (chapters 08a-08b); the command line is in test_cli.py."
import json
import pytest, torch
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, ContextLengthError, Qwen3Tokenizer
from qwen3_lib.kv_cache import KVCache
from qwen3_lib.generate import generate, stream, sample_next, check_sampling, GenerationConfig, TOKENIZER_VOCAB
from conftest import hf_twin, randomize_norms, max_diff

TINY = Qwen3Config.tiny()

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(TINY).eval(); randomize_norms(m); return m

# --- the cache ---------------------------------------------------------------------------------
def test_cache_shapes_and_size():
    c = KVCache(Qwen3Config(), device="meta", dtype=torch.bfloat16)
    assert c.max_seq_len == 40960 and len(c.k) == len(c.v) == 28
    assert c.k[0].shape == (1, 8, 40960, 128)                       # 8 KV heads, not 16
    assert c.nbytes == 114_688 * 40960
    c2 = KVCache(TINY, batch_size=3, max_seq_len=10)
    assert c2.k[1].shape == (3, 2, 10, 32) and c2.length == 0 and c2.dtype == torch.float32
    with pytest.raises(ValueError, match="40,960"):
        KVCache(Qwen3Config(), max_seq_len=40961, device="meta")

@pytest.mark.parametrize("kw, words", [
    (dict(max_seq_len=0), ["max_seq_len", "got 0", "leave it out"]),        # 0 is not "the default 40,960"
    (dict(max_seq_len=-5), ["max_seq_len", "got -5"]),
    (dict(max_seq_len=2.5), ["max_seq_len", "got 2.5"]),
    (dict(batch_size=0), ["batch_size", "got 0"]),
    (dict(batch_size=-1), ["batch_size", "got -1"]),
    (dict(batch_size=True), ["batch_size", "got True"]),
    (dict(batch_size=2**40), ["batch_size", "1,048,576", "got 1099511627776"]),     # not an allocator error
])
def test_cache_refuses_no_room_and_no_rows(kw, words):
    with pytest.raises(ValueError) as e:
        KVCache(Qwen3Config(), device="meta", **kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert KVCache(TINY, max_seq_len=None).max_seq_len == TINY.max_position_embeddings

def _cached_vs_full(model, prompt, steps):
    cache = KVCache(model.cfg, batch_size=prompt.shape[0], max_seq_len=prompt.shape[1] + steps)
    with torch.no_grad():
        rows, seq = [model(prompt, kv_cache=cache)], prompt
        for _ in range(steps):
            nxt = rows[-1][:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], 1)
            rows.append(model(nxt, kv_cache=cache))
        assert cache.length == seq.shape[1]
        return max_diff(torch.cat(rows, 1)[:, :-1], model(seq)[:, :-1])

def test_cached_equals_full_forward_tiny(tiny):
    torch.manual_seed(1)
    assert _cached_vs_full(tiny, torch.randint(0, 1000, (2, 5)), 40) <= 1e-4

def test_multi_token_chunks_on_a_cache(tiny):
    seq = torch.randint(0, 1000, (2, 17))
    c = KVCache(TINY, batch_size=2, max_seq_len=17)
    with torch.no_grad():
        parts = [tiny(seq[:, a:b], kv_cache=c) for a, b in [(0, 4), (4, 5), (5, 12), (12, 17)]]
        assert max_diff(torch.cat(parts, 1), tiny(seq)) <= 1e-4

def test_overflow_raises_before_writing_and_cache_stays_usable(tiny):
    c = KVCache(TINY, max_seq_len=8)
    with torch.no_grad():
        tiny(torch.randint(0, 1000, (1, 6)), kv_cache=c)
        snapshot = [k.clone() for k in c.k]
        with pytest.raises(ContextLengthError, match="max_seq_len = 8") as e:
            tiny(torch.randint(0, 1000, (1, 3)), kv_cache=c)
        assert isinstance(e.value, IndexError) and c.length == 6
        # compare bit patterns: the unwritten part of an empty() buffer may hold NaNs, and NaN != NaN
        assert all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(snapshot, c.k))
        assert tiny(torch.randint(0, 1000, (1, 2)), kv_cache=c).shape == (1, 2, 1000) and c.length == 8
        c.reset(); assert c.length == 0

def test_cache_past_the_rope_table_is_refused():
    m = Qwen3ForCausalLM(Qwen3Config.tiny(max_position_embeddings=16)).eval()
    c = KVCache(m.cfg)
    with torch.no_grad():
        m(torch.zeros(1, 16, dtype=torch.long), kv_cache=c)
        with pytest.raises(ContextLengthError):
            m(torch.zeros(1, 1, dtype=torch.long), kv_cache=c)

def test_cache_batch_and_dtype_mismatch(tiny):
    with pytest.raises(ValueError, match="batch size 2"):
        tiny(torch.zeros(1, 3, dtype=torch.long), kv_cache=KVCache(TINY, batch_size=2, max_seq_len=8))
    with pytest.raises(TypeError, match="bfloat16"):
        tiny(torch.zeros(1, 3, dtype=torch.long), kv_cache=KVCache(TINY, max_seq_len=8, dtype=torch.bfloat16))

# --- generation --------------------------------------------------------------------------------
def _hf_greedy(ref, ids, n):
    return ref.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                        pad_token_id=0, attention_mask=torch.ones_like(ids))

def test_greedy_equals_transformers_tiny_batch(tiny):
    torch.manual_seed(3)
    ids = torch.randint(0, 1000, (3, 6))
    ours = generate(tiny, ids, 25, stop_token_ids=())
    assert ours.shape == (3, 31) and ours.dtype == torch.long
    assert torch.equal(ours, _hf_greedy(hf_twin(tiny), ids, 25))

def test_stop_tokens_end_rows_and_pad_finished_ones(tiny):
    ids = torch.tensor([[5, 6, 7], [9, 8, 7]])
    free = generate(tiny, ids, 12, stop_token_ids=())
    stop = int(free[0, 3 + 4])                     # the 5th new token of row 0
    out = generate(tiny, ids, 12, stop_token_ids=(stop,), pad_token_id=999)
    # Each row is its free run up to and including its first stop token, then padding; a row that never
    # meets the stop token runs on. The batch ends when its longest row does.
    rows, lengths = [], []
    for r in free:
        hits = (r[3:] == stop).nonzero()
        n = hits[0].item() + 1 if len(hits) else 12
        rows.append(r[:3 + n]); lengths.append(n)
    assert lengths[0] <= 5 and out.shape == (2, 3 + max(lengths))
    for r, want in zip(out, rows):
        assert torch.equal(r[:len(want)], want) and (r[len(want):] == 999).all()

def test_single_row_stops_immediately_at_stop_token(tiny):
    ids = torch.tensor([[1, 2, 3]])
    first = int(generate(tiny, ids, 1, stop_token_ids=())[0, -1])
    out = generate(tiny, ids, 50, stop_token_ids=(first,))
    assert out.shape == (1, 4) and int(out[0, -1]) == first

def test_padding_rows_are_never_chosen():
    cfg = Qwen3Config.tiny(vocab_size=151936, tie_word_embeddings=False)
    m = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight[TOKENIZER_VOCAB:] = m.lm_head.weight[TOKENIZER_VOCAB:].sign() * 5.0  # huge logits there
        logits = m(torch.tensor([[1, 2, 3]]))[0, -1]
    assert logits.argmax() >= TOKENIZER_VOCAB           # unmasked, greedy would pick a padding row
    for kw in (dict(), dict(temperature=1.0, seed=0), dict(temperature=2.0, top_p=0.99, seed=1)):
        out = generate(m, torch.tensor([[1, 2, 3]]), 8, stop_token_ids=(), **kw)
        assert out[0, 3:].max() < TOKENIZER_VOCAB

def test_sampling_is_reproducible_and_seed_dependent(tiny):
    ids = torch.tensor([[4, 5, 6]])
    a = generate(tiny, ids, 15, temperature=1.0, seed=11, stop_token_ids=())
    assert torch.equal(a, generate(tiny, ids, 15, temperature=1.0, seed=11, stop_token_ids=()))
    assert not torch.equal(a, generate(tiny, ids, 15, temperature=1.0, seed=12, stop_token_ids=()))
    assert torch.equal(generate(tiny, ids, 15, temperature=0.7, top_k=1, seed=3, stop_token_ids=()),
                       generate(tiny, ids, 15, stop_token_ids=()))      # top-k 1 is greedy

def test_top_k_and_top_p_restrict_the_draws():
    logits = torch.tensor([[4.0, 3.0, 2.9, 1.0, 0.0, -2.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    p = logits[0].softmax(-1)                            # 0.54, 0.20, 0.18, ...: nucleus 0.7 = {0, 1}
    assert p[0] < 0.7 <= p[0] + p[1]
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert len(set(sample_next(logits, 1.0, generator=g).tolist())) >= 5

@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_settings(tiny, kw):
    with pytest.raises(ValueError):
        generate(tiny, torch.tensor([[1]]), 3, **kw)

def test_too_many_new_tokens_fails_before_allocating():
    m = Qwen3ForCausalLM(Qwen3Config(), device="meta")         # never allocated: the check comes first
    with pytest.raises(ContextLengthError, match="max_new_tokens"):
        generate(m, torch.zeros(1, 40000, dtype=torch.long), 961)

def test_stream_matches_generate():
    cfg = Qwen3Config.tiny(vocab_size=151936)
    torch.manual_seed(5)
    m = Qwen3ForCausalLM(cfg).eval(); m.reset_parameters(std=0.5)
    tok = Qwen3Tokenizer()
    ids = torch.tensor([tok.encode("Hello there")])
    new = generate(m, ids, 20, stop_token_ids=())[0, ids.shape[1]:]
    pieces = list(stream(m, tok, "Hello there", 20, stop_token_ids=()))
    assert "".join(pieces) == tok.decode(new, skip_special_tokens=True)
    assert len(pieces) > 1

class OneHot(torch.nn.Module):
    "A model that always predicts the given ids in turn (then repeats the last): to test what stream does with them."
    def __init__(self, ids):
        super().__init__()
        self.cfg, self.ids, self.n, self.w = Qwen3Config.tiny(vocab_size=151936), ids, 0, torch.nn.Parameter(torch.zeros(1))
    def forward(self, input_ids, kv_cache=None, logits_to_keep=0):
        logits = torch.full((input_ids.shape[0], 1, 151936), -1e9)
        logits[:, -1, self.ids[min(self.n, len(self.ids) - 1)]] = 0.0
        self.n += 1
        if kv_cache is not None: kv_cache.advance(input_ids.shape[1])
        return logits

def test_stream_ends_with_a_cut_character_instead_of_dropping_it():
    tok = Qwen3Tokenizer()
    euro = tok.encode("𝄞")                          # four bytes in two tokens
    assert len(euro) > 1 and tok.decode(euro[:1]).endswith("\ufffd")
    ids = tok.encode("ok ") + euro[:1]                # generation stops in the middle of the character
    pieces = list(stream(OneHot(ids), tok, "x", len(ids), stop_token_ids=()))
    assert "".join(pieces) == tok.decode(ids) == "ok \ufffd" and pieces[-1].endswith("\ufffd")
    whole = tok.encode("ok ") + euro
    assert "".join(stream(OneHot(whole), tok, "x", len(whole), stop_token_ids=())) == "ok 𝄞"

@pytest.mark.parametrize("t", [float("inf"), float("nan"), -1e-9])
def test_temperature_must_be_finite(t):
    with pytest.raises(ValueError, match="temperature"):
        check_sampling(t)

def test_tiny_temperatures_sample_like_greedy(tiny):
    ids = torch.tensor([[4, 5, 6]])
    greedy = generate(tiny, ids, 8, stop_token_ids=())
    for t in (1e-300, 1e-30, 5e-324):
        assert torch.equal(generate(tiny, ids, 8, temperature=t, seed=0, stop_token_ids=()), greedy)

def test_generation_config_from_a_checkpoint(tmp_path):
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig()        # none: greedy
    f = tmp_path / "generation_config.json"
    f.write_text(json.dumps({"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                             "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}))
    g = GenerationConfig.from_pretrained(tmp_path)
    assert g.sampling() == dict(temperature=0.6, top_k=20, top_p=0.95, stop_token_ids=(151645, 151643))
    f.write_text(json.dumps({"do_sample": False, "temperature": 0.6, "eos_token_id": 151645}))
    assert GenerationConfig.from_pretrained(f) == GenerationConfig(stop_token_ids=(151645,))
    f.write_text(json.dumps({"do_sample": True}))                                    # transformers' defaults
    assert GenerationConfig.from_pretrained(tmp_path).sampling()["top_k"] == 50
    for bad, err in [({"do_sample": True, "temperature": "hot"}, TypeError), ({"do_sample": "yes"}, TypeError),
                     ({"do_sample": True, "top_p": 2.0}, ValueError), ({"eos_token_id": [1.5]}, TypeError),
                     ({"do_sample": True, "top_k": True}, TypeError), ([1, 2], ValueError)]:
        f.write_text(json.dumps(bad))
        with pytest.raises(err, match="generation_config.json"):
            GenerationConfig.from_pretrained(tmp_path)
    f.write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GenerationConfig.from_pretrained(tmp_path)

def test_generation_config_checks_its_settings():
    from qwen3_lib.generate import GenerationConfig
    for bad in (dict(temperature=-1.0), dict(temperature=float("inf")), dict(top_k=0), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)
    with pytest.raises(TypeError):
        GenerationConfig(temperature="hot")
    assert GenerationConfig(stop_token_ids=5).stop_token_ids == (5,)

def test_negative_logits_to_keep_is_refused(tiny):
    with pytest.raises(ValueError, match="logits_to_keep"):
        tiny(torch.tensor([[1, 2, 3]]), logits_to_keep=-1)
