"Chapter 09a's arithmetic, chunked and split prefill and preflight; chapter 09b's measuring tools (CUDA ones need a GPU)."
import dataclasses
import pytest, torch
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, ContextLengthError
from qwen3_lib.kv_cache import KVCache
from qwen3_lib.config import weight_bytes, kv_cache_bytes
from qwen3_lib.prefill import activation_bytes, prefill_bytes, prefill, preflight, prefill_split, MemoryBudgetError
from qwen3_lib.tools.memory import GrowingKVCache, measure_kv_cache, cpu_peak_bytes
from conftest import max_diff

CFG, GiB = Qwen3Config(), 2**30

def test_weight_and_cache_arithmetic():
    assert weight_bytes(CFG) == 596_049_920 * 2 and weight_bytes(CFG, torch.float32) == 596_049_920 * 4
    assert weight_bytes(dataclasses.replace(CFG, tie_word_embeddings=False)) == (596_049_920 + 151936 * 1024) * 2
    assert kv_cache_bytes(CFG, 40960) == 4.375 * GiB
    assert kv_cache_bytes(dataclasses.replace(CFG, num_key_value_heads=16), 40960) == 2 * kv_cache_bytes(CFG, 40960)
    assert kv_cache_bytes(CFG, 100, batch_size=3, dtype=torch.float32) == 3 * 100 * 114_688 * 2

@pytest.mark.parametrize("n_kv", [16, 8, 4, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_kv_cache_tensors_match_the_arithmetic(n_kv, dtype):
    c = dataclasses.replace(CFG, num_key_value_heads=n_kv)
    for L in (1, 777, 40960):
        for B in (1, 3):
            assert KVCache(c, B, L, device="meta", dtype=dtype).nbytes == kv_cache_bytes(c, L, B, dtype)

def test_activation_estimate_is_bounded_by_chunks():
    one = activation_bytes(CFG, 40960)
    chunked = activation_bytes(CFG, 40960, chunk_size=2048)
    assert chunked < one / 15 and chunked < 0.5 * GiB
    assert activation_bytes(CFG, 1000, chunk_size=4096) == activation_bytes(CFG, 1000)
    p = prefill_bytes(CFG, 40960, chunk_size=2048)
    assert p["total"] == p["weights"] + p["kv_cache"] + p["activations"]

@pytest.mark.parametrize("chunk", [None, 1, 5, 13, 64])
def test_chunked_prefill_equals_one_pass(chunk):
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    ids = torch.randint(0, 1000, (2, 40))
    c = KVCache(m.cfg, 2, 48)
    with torch.no_grad():
        assert max_diff(prefill(m, ids, c, chunk), m(ids)[:, -1:]) <= 1e-4
        assert c.length == 40
        nxt = m(torch.tensor([[3], [4]]), kv_cache=c)
        full = m(torch.cat([ids, torch.tensor([[3], [4]])], 1))[:, -1:]
        assert max_diff(nxt, full) <= 1e-4

@pytest.mark.parametrize("chunk", [1, 7, 40, 100])
def test_split_prefill_equals_one_pass(chunk):
    "Attention in one pass, the rest in chunks: the one-pass logits and cache, and decoding goes on from it."
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    ids = torch.randint(0, 1000, (2, 40))
    one, c = KVCache(m.cfg, 2, 48), KVCache(m.cfg, 2, 48)
    with torch.no_grad():
        want = prefill(m, ids, one)
        assert max_diff(prefill_split(m, ids, c, chunk), want) <= 1e-5
        assert c.length == 40
        for a, b in zip(c.k + c.v, one.k + one.v):
            assert max_diff(a[:, :, :40], b[:, :, :40]) <= 1e-5
        nxt = m(torch.tensor([[3], [4]]), kv_cache=c)
        assert max_diff(nxt, m(torch.cat([ids, torch.tensor([[3], [4]])], 1))[:, -1:]) <= 1e-4

@pytest.mark.parametrize("per_call", [1, 3, 4])
def test_split_prefill_a_few_kv_heads_per_call(per_call):
    "Attention per group of key/value heads, outputs over the queries: same as one pass (groups of 1, 3+1, all 4)."
    torch.manual_seed(1)
    m = Qwen3ForCausalLM(Qwen3Config.tiny(num_attention_heads=8, num_key_value_heads=4, head_dim=16)).eval()
    ids = torch.randint(0, 1000, (2, 30))
    one, c = KVCache(m.cfg, 2, 30), KVCache(m.cfg, 2, 30)
    with torch.no_grad():
        want = prefill(m, ids, one)
        assert max_diff(prefill_split(m, ids, c, 8, kv_heads_per_call=per_call), want) <= 1e-5
    for a, b in zip(c.k + c.v, one.k + one.v):
        assert max_diff(a, b) <= 1e-5

def test_split_prefill_checks_before_writing():
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    c = KVCache(m.cfg, 1, 32)
    ids = torch.randint(0, 1000, (1, 20)); ids[0, 15] = 5000
    with pytest.raises(ValueError, match="5000"):
        prefill_split(m, ids, c, 4)
    with pytest.raises(ContextLengthError):
        prefill_split(m, torch.zeros(1, 40, dtype=torch.long), c, 8)
    with pytest.raises(TypeError, match="bfloat16"):
        prefill_split(m, torch.zeros(1, 4, dtype=torch.long), KVCache(m.cfg, 1, 8, dtype=torch.bfloat16))
    assert c.length == 0
    with torch.no_grad():
        m(torch.zeros(1, 3, dtype=torch.long), kv_cache=c)
    with pytest.raises(ValueError, match="empty"):
        prefill_split(m, torch.zeros(1, 4, dtype=torch.long), c)
    with pytest.raises(ValueError, match="chunk_size"):
        prefill_split(m, torch.zeros(1, 4, dtype=torch.long), KVCache(m.cfg, 1, 8), chunk_size=0)
    with pytest.raises(ValueError, match="kv_heads_per_call"):
        prefill_split(m, torch.zeros(1, 4, dtype=torch.long), KVCache(m.cfg, 1, 8), kv_heads_per_call=0)

def test_chunked_prefill_checks_everything_before_writing():
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    c = KVCache(m.cfg, 1, 32)
    ids = torch.randint(0, 1000, (1, 20)); ids[0, 15] = 5000               # bad id in the last chunk
    with pytest.raises(ValueError, match="5000"):
        prefill(m, ids, c, chunk_size=4)
    assert c.length == 0
    with pytest.raises(ContextLengthError):
        prefill(m, torch.zeros(1, 40, dtype=torch.long), c, chunk_size=8)
    assert c.length == 0
    with pytest.raises(ValueError, match="chunk_size"):
        prefill(m, torch.zeros(1, 4, dtype=torch.long), c, chunk_size=0)

def test_preflight_refuses_with_numbers_and_advice():
    with pytest.raises(MemoryBudgetError) as e:
        preflight(CFG, 40960, batch_size=8, free_bytes=24 * GiB)
    msg = str(e.value)
    assert isinstance(e.value, MemoryError)
    assert "35.00 GiB" in msg and "24.00 GiB is free" in msg and "batch size" in msg and "chunk_size" in msg
    est = preflight(CFG, 40960, batch_size=4, chunk_size=2048, free_bytes=24 * GiB)
    assert est["kv_cache"] == 4 * 4.375 * GiB
    with pytest.raises(MemoryBudgetError, match="weights"):
        preflight(CFG, 1024, free_bytes=1 * GiB, weights_loaded=False)
    assert preflight(CFG, 40960, batch_size=1000)["kv_cache"] > 0         # no device: estimate only

def test_preflight_uses_cuda_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (2 * GiB, 80 * GiB))
    with pytest.raises(MemoryBudgetError, match="2.00 GiB is free"):
        preflight(CFG, 40960, device="cuda")
    assert preflight(CFG, 1024, device="cuda")["kv_cache"] == kv_cache_bytes(CFG, 1024)

def test_growing_cache_gives_the_same_logits():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    ids = torch.randint(0, 1000, (1, 12))
    a, b = KVCache(m.cfg, 1, 20), GrowingKVCache(m.cfg)
    with torch.no_grad():
        assert max_diff(m(ids, kv_cache=a), m(ids, kv_cache=b)) == 0
        for t in (5, 6, 7):
            assert max_diff(m(torch.tensor([[t]]), kv_cache=a), m(torch.tensor([[t]]), kv_cache=b)) <= 1e-6

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_measurements_say_they_need_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        measure_kv_cache(CFG, 16)

def test_cpu_peak_bytes_counts_what_is_alive_at_once():
    "The profiler-based peak: two 4 MiB tensors alive together, then one freed before a third: 8 MiB, not 12."
    def run():
        a = torch.empty(1 << 20); b = torch.empty(1 << 20)
        del a
        c = torch.empty(1 << 20)
        return b, c
    assert cpu_peak_bytes(run) == 2 * 4 * (1 << 20)
    assert cpu_peak_bytes(lambda: None) == 0
