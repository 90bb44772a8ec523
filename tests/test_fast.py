"Chapter 10: the fast decoding path gives the eager path's tokens; the benchmark runs (tiny, CPU)."
import json, subprocess, sys
from pathlib import Path
import pytest, torch
from qwen3_lib import Qwen3Config, Qwen3Model, ContextLengthError, generate
from qwen3_lib.fast import FastQwen3, decode_bytes_per_token, copy_bandwidth
from qwen3_lib.bench import run_benchmark, format_table
from conftest import randomize_norms, max_diff

ROOT = Path(__file__).resolve().parent.parent

def test_roofline_bytes():
    cfg = Qwen3Config()
    assert decode_bytes_per_token(cfg) == 596_049_920 * 2                     # tied head: read once, as the head
    assert decode_bytes_per_token(cfg, torch.float32, context=100) == 596_049_920 * 4 + 100 * 114_688 * 2
    # untied: one more 151,936 x 1024 matrix exists, but the embedding is only looked up, so the bytes
    # read per token stay those of 596,049,920 values (the head counts, the embedding does not)
    untied = Qwen3Config(tie_word_embeddings=False)
    assert decode_bytes_per_token(untied) == 596_049_920 * 2
    assert decode_bytes_per_token(Qwen3Config(num_hidden_layers=27)) == (596_049_920 - 15_730_944) * 2
    assert copy_bandwidth("cpu", 1 << 22, repeats=1) > 1e8

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Qwen3Model(Qwen3Config.tiny()).eval(); randomize_norms(m); return m

def test_fast_greedy_equals_eager_tiny_batch(tiny):
    ids = torch.randint(0, 1000, (3, 5))
    fast = FastQwen3(tiny, 5 + 30, batch_size=3)
    assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), generate(tiny, ids, 30, stop_token_ids=()))
    # reusable: a second generation overwrites the static cache from position 0
    ids2 = torch.randint(0, 1000, (3, 8))
    assert torch.equal(fast.generate(ids2, 20, stop_token_ids=()), generate(tiny, ids2, 20, stop_token_ids=()))

def test_fast_greedy_equals_eager_full_size():
    torch.manual_seed(6)
    m = Qwen3Model(Qwen3Config()).eval(); m.reset_parameters(std=0.05)
    ids = torch.randint(0, 151_643, (1, 9))
    assert torch.equal(FastQwen3(m, 21).generate(ids, 12, stop_token_ids=()), generate(m, ids, 12, stop_token_ids=()))

def test_fast_logits_equal_model_logits_step_by_step(tiny):
    ids = torch.randint(0, 1000, (1, 12))
    fast = FastQwen3(tiny, 12)
    with torch.inference_mode():
        full = tiny(ids)
        assert max_diff(fast.forward(ids[:, :5], fast.positions[:5]), full[:, 4]) <= 1e-5
        for t in range(5, 12):
            assert max_diff(fast.forward(ids[:, t:t + 1], fast.positions[t:t + 1]), full[:, t]) <= 1e-5

def test_fast_bfloat16_close_to_eager(tiny):
    m16 = Qwen3Model(Qwen3Config.tiny(), dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (1, 10))
    with torch.inference_mode():
        a = FastQwen3(m16, 10).forward(ids, torch.arange(10))
        b = m16(ids)[:, -1]
    assert a.dtype == torch.bfloat16 and max_diff(a, b) <= 0.05 * b.abs().max().item()

def test_fast_sampling_stops_and_limits(tiny):
    ids = torch.tensor([[1, 2, 3]])
    fast = FastQwen3(tiny, 40)
    a = fast.generate(ids, 10, temperature=0.9, top_p=0.9, seed=3, stop_token_ids=())
    assert torch.equal(a, fast.generate(ids, 10, temperature=0.9, top_p=0.9, seed=3, stop_token_ids=()))
    first = int(fast.generate(ids, 1, stop_token_ids=())[0, -1])
    assert fast.generate(ids, 10, stop_token_ids=(first,)).shape == (1, 4)
    with pytest.raises(ContextLengthError, match="max_seq_len"):
        fast.generate(ids, 38)
    with pytest.raises(ValueError, match="batch size"):
        fast.generate(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError):
        FastQwen3(tiny, 0)
    with pytest.raises(ValueError, match="5000"):                               # forward checks its input too
        fast.forward(torch.tensor([[1, 5000]]), fast.positions[:2])
    with pytest.raises(ContextLengthError, match="max_seq_len"):
        fast.forward(torch.tensor([[1, 2]]), torch.tensor([39, 40]))
    with pytest.raises(ValueError, match="one position per token"):
        fast.forward(torch.tensor([[1, 2]]), fast.positions[:3])

def test_compiled_step_matches_eager_on_cpu(tiny):
    "torch.compile of the fixed-shape step (on a GPU it also becomes a CUDA graph) keeps the tokens."
    ids = torch.randint(0, 1000, (1, 4))
    compiled = FastQwen3(tiny, 4 + 6).compile(mode="default")
    assert torch.equal(compiled.generate(ids, 6, stop_token_ids=()), generate(tiny, ids, 6, stop_token_ids=()))

@pytest.mark.parametrize("attention,matvec", [("sdpa", "linear"), ("sdpa", "reduce"), ("math", "reduce"),
                                              ("sdpa", "fold"), ("math", "fold")])
def test_compiled_layer_is_one_graph_and_keeps_the_tokens(tiny, attention, matvec):
    "compile_layers(): every layer runs the one compiled function (no recompilation), tokens unchanged (float32)."
    from torch._dynamo.utils import counters
    torch._dynamo.reset(); counters.clear()
    ids = torch.randint(0, 1000, (2, 5))
    fast = FastQwen3(tiny, 5 + 10, 2, attention=attention).compile_layers(matvec=matvec)
    assert fast.matvec == matvec
    assert torch.equal(fast.generate(ids, 10, stop_token_ids=()), generate(tiny, ids, 10, stop_token_ids=()))
    assert counters["stats"]["unique_graphs"] == 3      # layer (two of them), inputs, final norm: each compiled once

def test_generated_kernel_forms_match_library_ones():
    "The 'reduce' forms (broadcast sums) equal F.linear and a GQA attention reference, in float32."
    import torch.nn.functional as F
    from qwen3_lib.fast import _matvec, _attend_grouped, grouped_mask
    torch.manual_seed(0)
    x, w = torch.randn(2, 1, 64), torch.randn(96, 64)
    assert max_diff(_matvec(x, w, "reduce"), F.linear(x, w)) <= 1e-5
    q, k, v = torch.randn(2, 4, 1, 32), torch.randn(2, 2, 9, 32), torch.randn(2, 2, 9, 32)
    allowed = torch.arange(9)[None, :] <= torch.tensor([5])[:, None]          # one query at position 5
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed)
    mask = grouped_mask(allowed, 2, q.dtype)
    assert mask.shape == (2, 9) and mask[0, 5] == 0 and mask[0, 6] == float("-inf")
    for how in ("sdpa", "math", "reduce"):
        assert max_diff(_attend_grouped(q, k, v, mask, how), ref) <= 1e-5, how

def test_static_cache_holds_chapter_08s_keys_and_values(tiny):
    "One tensor per layer, the keys' heads then the values': after a prefill it equals chapter 08's KVCache."
    from qwen3_lib.kv_cache import KVCache
    ids = torch.randint(0, 1000, (2, 7))
    fast, cache = FastQwen3(tiny, 9, batch_size=2), KVCache(tiny.cfg, 2, 9)
    Hkv = tiny.cfg.num_key_value_heads
    with torch.inference_mode():
        fast.forward(ids, fast.positions[:7]); tiny(ids, kv_cache=cache)
        for i in range(tiny.cfg.num_hidden_layers):
            assert max_diff(fast.kv_cache[i, :, :Hkv, :7], cache.k[i][:, :, :7]) <= 1e-5
            assert max_diff(fast.kv_cache[i, :, Hkv:, :7], cache.v[i][:, :, :7]) <= 1e-5
        assert fast.kv_cache[:, :, :, 7:].abs().max() == 0                      # nothing written past the prompt

def test_window_rounds_up_to_a_power_of_two_times_min_window(tiny):
    fast = FastQwen3(tiny, 40_960)
    assert [fast.window(n) for n in (1, 1024, 1025, 5000, 32_769, 40_960)] == [1024, 1024, 2048, 8192, 40_960, 40_960]
    assert len({fast.window(n) for n in range(1, 40_961)}) == 7                  # 1,024 ... 32,768 and the whole cache
    assert FastQwen3(tiny, 100).window(1) == 100

def test_steps_read_a_window_and_keep_the_tokens(tiny):
    "generate() attends over window(filled) positions: crossing windows (8, 16, 32, 40 here) keeps the eager tokens."
    from torch._dynamo.utils import counters
    ids = torch.randint(0, 1000, (2, 5))
    want = generate(tiny, ids, 30, stop_token_ids=())
    fast = FastQwen3(tiny, 40, batch_size=2)
    fast.min_window = 8
    seen = []
    step = fast.step
    fast.step = lambda i, p, length=None: seen.append(length) or step(i, p, length)
    assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), want)
    assert sorted(set(seen)) == [8, 16, 32, 40] and seen == sorted(seen)
    torch._dynamo.reset(); counters.clear()
    compiled = FastQwen3(tiny, 40, batch_size=2).compile_layers()
    compiled.min_window = 8
    assert torch.equal(compiled.generate(ids, 30, stop_token_ids=()), want)
    assert counters["stats"]["unique_graphs"] == 2 * 4 + 1                   # step_inputs, layer per window; final_norm

def test_prefill_equals_forward_and_writes_the_same_cache(tiny):
    "prefill() (chapter 09's prefill_split through views of the one-tensor cache) = forward() over the prompt."
    ids = torch.randint(0, 1000, (2, 7))
    fast = FastQwen3(tiny, 9, batch_size=2)
    with torch.inference_mode():
        a = fast.forward(ids, fast.positions[:7]); cache = fast.kv_cache.clone()
        fast.kv_cache.zero_()
        for chunk, per_call in ((2048, None), (3, 1)):
            assert max_diff(fast.prefill(ids, chunk, per_call), a) <= 1e-5
            assert max_diff(fast.kv_cache, cache) <= 1e-5                   # keys' heads, values', nothing past 7
    with pytest.raises(ContextLengthError):                                 # longer than the cache: before writing
        fast.prefill(torch.randint(0, 1000, (2, 10)))
    with pytest.raises(ValueError, match="batch size"):
        fast.prefill(ids[:1])

def test_prefill_holds_no_square_mask():
    "A prompt's forward() masks with (2T, S): quadratic. prefill() holds less than chapter 09's one-pass prefill."
    from qwen3_lib.memory import cpu_peak_bytes, prefill
    from qwen3_lib.kv_cache import KVCache
    torch.manual_seed(0)
    cfg = Qwen3Config(num_hidden_layers=1)
    m = Qwen3Model(cfg, dtype=torch.bfloat16).eval()
    T = 4096                                                                 # two chunks of 2,048
    ids = torch.randint(0, 151_643, (1, T))
    fast = FastQwen3(m, T)
    with torch.inference_mode():
        held = cpu_peak_bytes(lambda: fast.prefill(ids))
        masked = cpu_peak_bytes(lambda: fast.forward(ids, fast.positions[:T]))
        cache = KVCache(cfg, 1, T, dtype=torch.bfloat16)
        one_pass = cpu_peak_bytes(lambda: prefill(m, ids, cache))
    mask = 2 * T * T * 2                                                     # the bfloat16 (2T, S) additive mask
    assert masked > held + mask and held < one_pass, (held, masked, one_pass)

def test_folded_layer_equals_the_plain_one(tiny):
    "matvec='fold' (each RMSNorm inside the kernel that reads it), run eagerly on one token: same layer output and cache."
    from qwen3_lib.fast import decoder_layer, grouped_mask
    fast = FastQwen3(tiny, 6)
    cfg, w = tiny.cfg, fast.layers[1]
    x, d = torch.randn(1, 1, cfg.hidden_size), torch.randn(1, 1, cfg.hidden_size)
    pos = torch.tensor([3])
    cos, sin = tiny.model.rotary.cos[pos], tiny.model.rotary.sin[pos]
    mask = grouped_mask(fast.positions[None, :] <= pos[:, None], cfg.num_attention_heads // cfg.num_key_value_heads, x.dtype)
    caches = {how: torch.randn(1, 2 * cfg.num_key_value_heads, 6, cfg.head_dim).index_fill_(2, pos, 0)
              for how in ("linear", "reduce", "fold")}
    caches["reduce"].copy_(caches["linear"]); caches["fold"].copy_(caches["linear"])
    with torch.inference_mode():
        out = {how: decoder_layer(x, d, w, caches[how], cos, sin, mask, pos, fast.dims, matvec=how) for how in caches}
    for how in ("reduce", "fold"):
        assert max_diff(out[how][0], out["linear"][0]) <= 1e-5 and max_diff(out[how][1], out["linear"][1]) <= 1e-5, how
        assert max_diff(caches[how], caches["linear"]) <= 1e-5, how
    assert caches["fold"][:, :, 3].abs().max() > 0                                # position 3 was written

def test_rotary_as_a_gather_equals_chapter_02s():
    from qwen3_lib.fast import _rotary_gather
    from qwen3_lib.rope import apply_rotary, RotaryEmbedding
    torch.manual_seed(0)
    cos, sin = RotaryEmbedding(64, 100)(7, 3)
    x = torch.randn(2, 5, 3, 64)
    assert torch.equal(_rotary_gather(x, cos, sin), apply_rotary(x, cos, sin))
    x16 = x.bfloat16()
    assert torch.equal(_rotary_gather(x16, cos, sin), apply_rotary(x16, cos, sin))

def test_cpu_16bit_single_row_product():
    "On a CPU one bf16 row goes through torch.mv (an op the compiler keeps as is): same values as a float32 product."
    import torch.nn.functional as F
    from qwen3_lib.fast import _matvec
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 256, dtype=torch.bfloat16), torch.randn(96, 256, dtype=torch.bfloat16)
    ref = F.linear(x.float(), w.float())
    got = _matvec(x, w)
    assert got.shape == (1, 1, 96) and got.dtype == torch.bfloat16
    assert max_diff(got, ref) <= 0.02 * ref.abs().max().item()
    compiled = torch.compile(lambda x, w: _matvec(x, w) * 2, fullgraph=True)
    assert max_diff(compiled(x, w), 2 * ref) <= 0.04 * ref.abs().max().item()
    assert _matvec(x.expand(2, 1, 256), w).shape == (2, 1, 96)                 # several rows: F.linear

def test_compile_options_are_checked(tiny):
    with pytest.raises(ValueError, match="reduce"):
        FastQwen3(tiny, 8).compile_layers(matvec="triton")
    with pytest.raises(ValueError, match="reduce-overhead"):
        FastQwen3(tiny, 8).compile(mode="max-autotune")
    assert FastQwen3(tiny, 8).compile_layers().matvec == "linear"             # CPU default: library products

def test_benchmark_runs_and_reports(tmp_path):
    res = run_benchmark(Qwen3Config.tiny(vocab_size=151936), "cpu", ("float32",), prompt_tokens=4, new_tokens=3,
                        repeats=1, prefill_lengths=(32,), chunk_size=8, split_chunk_size=8, log=lambda s: None)
    assert [p["contender"] for p in res["prefill"]] == ["qwen3_lib", "qwen3_lib, chunks of 8",
                                                        "qwen3_lib, split, chunks of 8",
                                                        "qwen3_lib, split, 1 KV head a call", "transformers"]
    names = {r["contender"] for r in res["decode"]}
    assert {"qwen3_lib eager (KVCache)", "qwen3_lib fused + static cache", "transformers eager"} <= names
    assert all(r["tokens_per_s"] > 0 for r in res["decode"])
    table = format_table(res)
    assert "vs HF eager" in table and "skipped:" in table and "roofline" in table

def test_benchmark_skips_a_contender_that_cannot_be_built(monkeypatch):
    "A fast path that fails to build (say, a compiler error) is reported in 'skipped'; the other contenders still run."
    def broken(self, matvec=None): raise RuntimeError("no compiler here")
    monkeypatch.setattr(FastQwen3, "compile_layers", broken)
    res = run_benchmark(Qwen3Config.tiny(vocab_size=151936), "cpu", ("float32",), prompt_tokens=4, new_tokens=3,
                        repeats=1, transformers_too=False, log=lambda s: None)
    assert {r["contender"] for r in res["decode"]} == {"qwen3_lib eager (KVCache)", "qwen3_lib fused + static cache"}
    assert any("compiled layers" in s and "no compiler here" in s for s in res["meta"]["skipped"])

def test_benchmark_cli_tiny(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "qwen3_lib.bench", "--tiny", "--new-tokens", "3", "--repeats", "1",
                        "--dtypes", "float32", "--no-transformers", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["device_type"] == "cpu" and len(data["decode"]) == 3          # eager, fused, compiled layers
    bad = subprocess.run([sys.executable, "-m", "qwen3_lib.bench", "--new-tokens", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "new-tokens" in bad.stderr

def test_math_attention_gives_the_same_tokens(tiny):
    ids = torch.randint(0, 1000, (2, 7))
    want = generate(tiny, ids, 20, stop_token_ids=())
    assert torch.equal(FastQwen3(tiny, 27, 2, attention="math").generate(ids, 20, stop_token_ids=()), want)
    with pytest.raises(ValueError, match="sdpa"):
        FastQwen3(tiny, 27, 2, attention="flash")

def test_cuda_graph_needs_cuda(tiny):
    if torch.cuda.is_available(): pytest.skip("tests/test_cuda.py covers the GPU")
    with pytest.raises(RuntimeError, match="CUDA"):
        FastQwen3(tiny, 16).cuda_graph()

def test_variants_program_runs(tmp_path):
    "benchmarks/compare_variants.py (a GPU-session tool) runs on a CPU: times, profiles and checks a variant."
    out = tmp_path / "v.json"
    r = subprocess.run([sys.executable, "benchmarks/compare_variants.py", "--device", "cpu", "--layers", "1", "--steps", "2",
                        "--new-tokens", "4", "--variants", "layers-math", "layers-fold-prefetch", "--prefill-length", "32", "--chunks", "0", "8", "--split-chunks", "8",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    for name in ("layers-math", "layers-fold-prefetch"):
        v = data["variants"][name]
        assert "error" not in v and v["ms_per_step"] > 0 and v["logits_rel_diff"] < 0.05, name
    assert any(k["name"] == "aten::sum" for k in data["variants"]["layers-fold-prefetch"]["top"])   # the prefetch reads
    assert [(p["chunk_size"], p["split"], p["kv_heads_per_call"]) for p in data["prefill"]] == \
        [(None, False, None), (8, False, None), (8, True, None), (8, True, 1)]

def test_kernel_count_program_says_what_it_needs():
    "benchmarks/count_kernels.py needs the triton package; without it, it says so and exits non-zero."
    import importlib.util
    if importlib.util.find_spec("triton"):
        pytest.skip("triton is installed here: the program would run for a minute instead")
    r = subprocess.run([sys.executable, "benchmarks/count_kernels.py"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "pip install triton" in r.stderr

def test_profile_program_runs(tmp_path):
    "benchmarks/profile_decode.py (a GPU-session tool) works on a CPU: it counts the step's operators."
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "benchmarks/profile_decode.py", "--device", "cpu", "--layers", "1",
                        "--steps", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())["report"]["eager"]
    assert rep["per_step_count"] > 10 and rep["top"][0]["name"] in ("aten::linear", "qwen3_lib::mv")   # products dominate
