"""The GPU paths: the same checks as on the CPU, run on a CUDA device (skipped where there is none).

CI has no GPU; these run on a lent GPU machine through `benchmarks/gpu_session.sh`."""
import pytest, torch
import dataclasses
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, ContextLengthError, KVCache, generate, kv_cache_bytes
from qwen3_lib.attention import attention_explicit, attention_sdpa
from qwen3_lib.fast import FastQwen3
from qwen3_lib.prefill import prefill, prefill_split, preflight, MemoryBudgetError
from qwen3_lib.tools.memory import measure_kv_cache, measure_prefill
from conftest import randomize_norms, max_diff, hf_twin

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

@pytest.fixture(scope="module")
def gpu_model():
    "Full-size Qwen3-0.6B, float32 on the GPU, weights varied enough that greedy tokens change."
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config(), device="cuda", dtype=torch.float32).eval()
    m.reset_parameters(std=0.05); randomize_norms(m)
    return m

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("T,S", [(7, 7), (1, 9), (6, 10), (512, 4096)])
def test_sdpa_paths_match_explicit(dtype, tol, T, S):
    "Every branch of attention_sdpa on CUDA (flash causal, decode, lower-right causal, repeated heads)."
    torch.manual_seed(1)
    q = torch.randn(2, 16, T, 128, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, 8, S, 128, device="cuda", dtype=dtype) for _ in range(2))
    ref, _ = attention_explicit(q.float(), k.float(), v.float())
    assert max_diff(attention_sdpa(q, k, v), ref) <= tol

def test_full_model_matches_transformers_on_gpu(gpu_model):
    ref = hf_twin(gpu_model)                                          # eager attention, float32
    ids = torch.randint(0, 151_643, (2, 33), device="cuda")
    with torch.inference_mode():
        ours, theirs = gpu_model(ids), ref(ids).logits
    assert max_diff(ours, theirs) <= 1e-4
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    out = generate(gpu_model, ids[:1, :9], 10, stop_token_ids=())
    with torch.inference_mode():
        hf = ref.generate(ids[:1, :9], attention_mask=torch.ones_like(ids[:1, :9]), do_sample=False,
                          max_new_tokens=10, min_new_tokens=10, eos_token_id=None, pad_token_id=0)
    assert torch.equal(out, hf)
    assert len(set(out[0, 9:].tolist())) > 1                          # the weights make tokens vary
    del ref; torch.cuda.empty_cache()

def test_cache_and_chunks_match_one_pass_on_gpu(gpu_model):
    ids = torch.randint(0, 151_643, (1, 40), device="cuda")
    with torch.inference_mode():
        full = gpu_model(ids)[:, -1]
        cache = KVCache(gpu_model.cfg, 1, 40, device="cuda", dtype=torch.float32)
        chunked = prefill(gpu_model, ids, cache, chunk_size=16)[:, -1]     # masked chunks: the repeat_kv branch
        split = prefill_split(gpu_model, ids, KVCache(gpu_model.cfg, 1, 40, device="cuda", dtype=torch.float32), 16)[:, -1]
    assert max_diff(chunked, full) <= 1e-4 and max_diff(split, full) <= 1e-4
    m16 = Qwen3ForCausalLM(Qwen3Config(), device="cuda", dtype=torch.bfloat16).eval()
    m16.load_state_dict(gpu_model.state_dict())
    ids = torch.randint(0, 151_643, (1, 300), device="cuda")
    with torch.inference_mode():
        one = m16(ids, logits_to_keep=1)[:, -1].float()
        c = KVCache(m16.cfg, 1, 300, device="cuda", dtype=torch.bfloat16)
        two = prefill(m16, ids, c, chunk_size=64)[:, -1].float()          # the lower-right causal branch
    assert max_diff(two, one) <= 0.05 * one.abs().max().item()
    assert (two.argmax() == one.argmax()).item()
    with torch.inference_mode():
        c = KVCache(m16.cfg, 1, 300, device="cuda", dtype=torch.bfloat16)
        three = prefill_split(m16, ids, c, chunk_size=64)[:, -1].float()  # attention in one pass, the rest in chunks
        c = KVCache(m16.cfg, 1, 300, device="cuda", dtype=torch.bfloat16)
        four = prefill_split(m16, ids, c, chunk_size=64, kv_heads_per_call=1)[:, -1].float()   # a head at a time
    assert max_diff(three, one) <= 0.05 * one.abs().max().item()
    assert (three.argmax() == one.argmax()).item()
    assert max_diff(four, one) <= 0.05 * one.abs().max().item()
    assert (four.argmax() == one.argmax()).item()

def test_fast_paths_give_eager_tokens_on_gpu(gpu_model):
    "Every way FastQwen3 can run its step, with a new prompt length the second time."
    ids = torch.randint(0, 151_643, (2, 11), device="cuda")
    ids2 = torch.randint(0, 151_643, (2, 5), device="cuda")
    want, want2 = generate(gpu_model, ids, 16, stop_token_ids=()), generate(gpu_model, ids2, 30, stop_token_ids=())
    for kw in ({}, dict(cuda_graph=True), dict(compile_layers=True), dict(compile_layers=True, cuda_graph=True)):
        fast = FastQwen3(gpu_model, 40, 2, **kw)
        assert torch.equal(fast.generate(ids, 16, stop_token_ids=()), want), kw
        assert torch.equal(fast.generate(ids2, 30, stop_token_ids=()), want2), kw

def test_fast_adds_only_its_cache_on_gpu(gpu_model):
    "The allocator's view: building a FastQwen3 leaves its cache allocated and nothing else of note."
    fresh = Qwen3ForCausalLM(Qwen3Config(), device="cuda", dtype=torch.bfloat16).eval()   # not fused by earlier tests
    torch.cuda.synchronize(); torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    weights = sum(p.nbytes for p in fresh.parameters())
    fast = FastQwen3(fresh, 4096)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= fast.kv_cache.nbytes + 0.05 * weights

def test_fast_prefill_holds_no_square_mask_on_gpu(gpu_model):
    "FastQwen3.prefill (split, one causal call, no mask) = forward(), holding less: forward's (2T, S) mask is quadratic."
    T = 8192
    fast = FastQwen3(gpu_model, T)
    ids = torch.randint(0, 151_643, (1, T), device="cuda")
    def peak(fn):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, out.float()
    held, a = peak(lambda: fast.prefill(ids))
    masked, b = peak(lambda: fast.forward(ids, fast.positions[:T]))
    assert max_diff(a, b) <= 1e-3 * b.abs().max().item()
    assert masked > held + 2 * T * T * 4, (held, masked)                    # float32 additive mask, (2T, S)

def test_graphs_per_window_give_eager_tokens_on_gpu(gpu_model):
    "cuda_graph() records a graph for each window the first time a step needs it, mid-generation."
    ids = torch.randint(0, 151_643, (2, 5), device="cuda")
    want = generate(gpu_model, ids, 30, stop_token_ids=())
    fast = FastQwen3(gpu_model, 40, 2, cuda_graph=True)   # (compile_layers per window: tests/test_fast.py, on the CPU)
    fast.min_window = 8
    assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), want)
    assert sorted(fast.graphs) == [8, 16, 32, 40]
    assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), want)          # again, every graph recorded

def test_bad_input_on_gpu_is_a_clear_error(gpu_model):
    bad = torch.tensor([[5, 151_936]], device="cuda")
    with pytest.raises(ValueError, match="151936|151,936"):
        gpu_model(bad)
    with pytest.raises(ContextLengthError):
        gpu_model(torch.zeros(1, 40_961, dtype=torch.long, device="cuda"))
    with pytest.raises(ValueError):
        generate(gpu_model, torch.tensor([[-1, 3]], device="cuda"), 2)
    fast = FastQwen3(gpu_model, 8)
    with pytest.raises(ValueError, match="151936|151,936"):
        fast.forward(bad, fast.positions[:2])
    with pytest.raises(ContextLengthError):
        fast.forward(torch.tensor([[5, 6]], device="cuda"), torch.tensor([7, 8], device="cuda"))
    assert gpu_model(torch.tensor([[5, 6]], device="cuda")).isfinite().all()   # no device-side assert: still usable
    torch.cuda.synchronize()

def test_memory_measurements_on_gpu(gpu_model):
    cfg = Qwen3Config()
    for n in (8, 1):
        c = dataclasses.replace(cfg, num_key_value_heads=n)
        assert measure_kv_cache(c, 4096, torch.bfloat16) == kv_cache_bytes(c, 4096, 1, torch.bfloat16)
    free = torch.cuda.mem_get_info()[0]
    with pytest.raises(MemoryBudgetError, match="GiB"):
        preflight(cfg, 40_960, batch_size=10_000, device="cuda")
    assert torch.cuda.mem_get_info()[0] >= free - (64 << 20)              # refused before allocating
    m = measure_prefill(gpu_model, 2048, chunk_size=512)
    assert m["kv_cache"] == kv_cache_bytes(cfg, 2048, 1, torch.float32)
    assert m["kv_cache"] <= m["peak_above_weights"] <= m["kv_cache"] + (1 << 30)
