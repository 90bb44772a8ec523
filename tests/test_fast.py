"Chapter 10a: the fast decoding path gives the eager path's tokens and holds no second copy of the weights."
import os, pytest, torch
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, ContextLengthError, generate, save_pretrained, load_pretrained
from qwen3_lib.fast import FastQwen3, decode_bytes_per_token, fuse_weights, grouped_mask, attend_grouped
from qwen3_lib.kv_cache import KVCache
from qwen3_lib.prefill import prefill
from qwen3_lib.tools.memory import cpu_peak_bytes
from conftest import randomize_norms, max_diff

def test_roofline_bytes():
    cfg = Qwen3Config()
    assert decode_bytes_per_token(cfg) == 596_049_920 * 2                     # tied head: read once, as the head
    assert decode_bytes_per_token(cfg, torch.float32, context=100) == 596_049_920 * 4 + 100 * 114_688 * 2
    # untied: one more 151,936 x 1024 matrix exists, but the embedding is only looked up
    assert decode_bytes_per_token(Qwen3Config(tie_word_embeddings=False)) == 596_049_920 * 2
    assert decode_bytes_per_token(Qwen3Config(num_hidden_layers=27)) == (596_049_920 - 15_730_944) * 2

@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval(); randomize_norms(m); return m

def test_fast_greedy_equals_eager_tiny_batch(tiny):
    ids = torch.randint(0, 1000, (3, 5))
    want = generate(tiny, ids, 30, stop_token_ids=())
    fast = FastQwen3(tiny, 5 + 30, batch_size=3)
    assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), want)
    # reusable: a second generation overwrites the static cache from position 0
    ids2 = torch.randint(0, 1000, (3, 8))
    assert torch.equal(fast.generate(ids2, 20, stop_token_ids=()), generate(tiny, ids2, 20, stop_token_ids=()))

def test_fusing_keeps_keys_values_and_storage(tiny, tmp_path):
    "fuse_weights: the layers' weights become views of one matrix; same outputs; a checkpoint saves and loads."
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad(): want = tiny(ids)
    keys = list(tiny.state_dict())
    fused = fuse_weights(tiny)
    a, mlp = tiny.model.layers[1].self_attn, tiny.model.layers[1].mlp
    qkv, gate_up = fused[1]
    assert qkv.data_ptr() == a.q_proj.weight.data_ptr() and gate_up.data_ptr() == mlp.gate_proj.weight.data_ptr()
    assert a.v_proj.weight.data_ptr() == qkv.data_ptr() + (a.q_proj.weight.numel() + a.k_proj.weight.numel()) * 4
    assert fuse_weights(tiny)[1][0].data_ptr() == qkv.data_ptr()               # a second call finds the stacks
    with torch.no_grad(): assert max_diff(tiny(ids), want) == 0
    assert list(tiny.state_dict()) == keys
    save_pretrained(tiny, tmp_path)                                            # views are written as plain tensors
    back = load_pretrained(tmp_path, progress=False)
    with torch.no_grad(): assert max_diff(back(ids), want) == 0

def _storages(*tensors):
    "Bytes of the distinct storages behind the tensors (a view of another tensor counts once)."
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())

def test_fast_adds_only_its_cache():
    "The process does not hold the same numbers twice: FastQwen3 adds its KV cache and < 5 % of the weights."
    m = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=2), dtype=torch.bfloat16).eval()
    own = lambda: list(m.parameters()) + list(m.buffers())
    before = _storages(*own())
    fast = FastQwen3(m, 512)
    after = _storages(*own(), *(t for pair in fast.fused for t in pair), fast.kv_cache, fast.positions)
    assert after - before - fast.kv_cache.nbytes <= 0.05 * before
    # and the weights it replaced are gone: nothing refers to the unfused originals any more
    import gc, weakref
    m2 = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=2), dtype=torch.bfloat16).eval()
    originals = [weakref.ref(l.weight) for layer in m2.model.layers for l in
                 (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj)]
    fast2 = FastQwen3(m2, 16)
    gc.collect()
    assert all(r() is None for r in originals)

def test_fast_logits_equal_model_logits_step_by_step(tiny):
    ids = torch.randint(0, 1000, (1, 12))
    fast = FastQwen3(tiny, 12)
    with torch.inference_mode():
        full = tiny(ids)
        assert max_diff(fast.forward(ids[:, :5], fast.positions[:5]), full[:, 4]) <= 1e-5
        for t in range(5, 12):
            assert max_diff(fast.forward(ids[:, t:t + 1], fast.positions[t:t + 1]), full[:, t]) <= 1e-5

def test_fast_bfloat16_close_to_eager():
    m16 = Qwen3ForCausalLM(Qwen3Config.tiny(), dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (1, 10))
    with torch.inference_mode():
        b = m16(ids)[:, -1]
        a = FastQwen3(m16, 10).forward(ids, torch.arange(10))
    assert a.dtype == torch.bfloat16 and max_diff(a, b) <= 0.05 * b.abs().max().item()

def test_fast_sampling_stops_and_limits(tiny):
    ids = torch.tensor([[1, 2, 3]])
    fast = FastQwen3(tiny, 40)
    a = fast.generate(ids, 10, temperature=0.9, top_p=0.9, seed=3, stop_token_ids=())
    assert torch.equal(a, fast.generate(ids, 10, temperature=0.9, top_p=0.9, seed=3, stop_token_ids=()))
    assert torch.equal(a, generate(tiny, ids, 10, temperature=0.9, top_p=0.9, seed=3, stop_token_ids=()))
    first = int(fast.generate(ids, 1, stop_token_ids=())[0, -1])
    assert fast.generate(ids, 10, stop_token_ids=(first,)).shape == (1, 4)
    with pytest.raises(ContextLengthError, match="38"):
        fast.generate(ids, 38)
    with pytest.raises(ValueError, match="batch size"):
        fast.generate(torch.zeros(2, 3, dtype=torch.long), 2)
    for bad in (0, -1, 40_961, 2.5, True):
        with pytest.raises(ValueError, match="max_seq_len"):
            FastQwen3(tiny, bad)
    with pytest.raises(ValueError, match="batch_size"):
        FastQwen3(tiny, 8, 0)
    with pytest.raises(ValueError, match="5000"):                               # forward checks its input too
        fast.forward(torch.tensor([[1, 5000]]), fast.positions[:2])
    with pytest.raises(ContextLengthError, match="max_seq_len"):
        fast.forward(torch.tensor([[1, 2]]), torch.tensor([39, 40]))
    with pytest.raises(ValueError, match="one position per token"):
        fast.forward(torch.tensor([[1, 2]]), fast.positions[:3])

def test_grouped_attention_equals_a_plain_reference():
    "Query groups folded into the query axis, with the additive mask: the same as repeating the key/value heads."
    import torch.nn.functional as F
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 1, 32), torch.randn(2, 2, 9, 32), torch.randn(2, 2, 9, 32)
    allowed = torch.arange(9)[None, :] <= torch.tensor([5])[:, None]          # one query at position 5
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed)
    mask = grouped_mask(allowed, 2, q.dtype)
    assert mask.shape == (2, 9) and mask[0, 5] == 0 and mask[0, 6] == float("-inf")
    assert max_diff(attend_grouped(q, k, v, mask), ref) <= 1e-5

def test_compiled_layer_is_one_graph_and_keeps_the_tokens(tiny):
    "compile_layers: every layer runs the one compiled function (no recompilation), tokens unchanged (float32)."
    from torch._dynamo.utils import counters
    from qwen3_lib.kernels import compiled_row_kernel
    compiled_row_kernel()                               # the probe's own graph (appendix A5) is not the step's
    torch._dynamo.reset(); counters.clear()
    ids = torch.randint(0, 1000, (2, 5))
    want = generate(tiny, ids, 10, stop_token_ids=())
    fast = FastQwen3(tiny, 5 + 10, 2, compile_layers=True)
    assert torch.equal(fast.generate(ids, 10, stop_token_ids=()), want)
    assert counters["stats"]["unique_graphs"] == 3      # inputs, layer (both layers), last norm: each compiled once

def test_static_cache_holds_chapter_08s_keys_and_values(tiny):
    "One tensor per layer, the keys' heads then the values': after a prefill it equals chapter 08's KVCache."
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
    seen, step = [], fast.step
    fast.step = lambda i, p, length=None: seen.append(length) or step(i, p, length)
    assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), want)
    assert sorted(set(seen)) == [8, 16, 32, 40] and seen == sorted(seen)
    from qwen3_lib.kernels import compiled_row_kernel
    compiled_row_kernel()                               # the probe's own graph (appendix A5) is not the step's
    torch._dynamo.reset(); counters.clear()
    compiled = FastQwen3(tiny, 40, batch_size=2, compile_layers=True)
    compiled.min_window = 8
    assert torch.equal(compiled.generate(ids, 30, stop_token_ids=()), want)
    assert counters["stats"]["unique_graphs"] == 2 * 4 + 1                   # inputs and layer per window; last norm

def test_prefill_equals_forward_and_writes_the_same_cache(tiny):
    "prefill() (chapter 09a's prefill_split through views of the one-tensor cache) = forward() over the prompt."
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
    "A prompt's forward() masks with (2T, S): quadratic. prefill() holds less than chapter 09a's one-pass prefill."
    torch.manual_seed(0)
    cfg = Qwen3Config(num_hidden_layers=1)
    m = Qwen3ForCausalLM(cfg, dtype=torch.bfloat16).eval()
    T = 4096                                                                 # two chunks of 2,048
    ids = torch.randint(0, 151_643, (1, T))
    fast = FastQwen3(m, T)
    with torch.inference_mode():
        held = cpu_peak_bytes(lambda: fast.prefill(ids))
        masked = cpu_peak_bytes(lambda: fast.forward(ids, fast.positions[:T]))
        one_pass = cpu_peak_bytes(lambda: prefill(m, ids, KVCache(cfg, 1, T, dtype=torch.bfloat16)))
    mask = 2 * T * T * 2                                                     # the bfloat16 (2T, S) additive mask
    assert masked > held + mask and held < one_pass, (held, masked, one_pass)

def test_cuda_graph_needs_cuda(tiny):
    if torch.cuda.is_available(): pytest.skip("tests/test_cuda.py covers the GPU")
    with pytest.raises(ValueError, match="CUDA"):
        FastQwen3(tiny, 16, cuda_graph=True)

@pytest.mark.parametrize("kernel", ["mv", "linear"])
def test_cpu_16bit_single_row_product(kernel, monkeypatch):
    "On a CPU one bf16 row goes through the chosen kernel (torch.mv as an op the compiler keeps): close to float32."
    import torch.nn.functional as F
    from qwen3_lib import kernels
    from qwen3_lib.attention import linear
    monkeypatch.setitem(kernels._chosen, "kernel", kernel)
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 256, dtype=torch.bfloat16), torch.randn(96, 256, dtype=torch.bfloat16)
    ref = F.linear(x.float(), w.float())
    with torch.profiler.profile() as prof:
        got = linear(x, w)
    ops = {e.name for e in prof.events()}
    assert ("qwen3_lib::mv" in ops) == (kernel == "mv") and ("aten::linear" in ops) == (kernel == "linear"), ops
    assert got.shape == (1, 1, 96) and got.dtype == torch.bfloat16
    assert max_diff(got, ref) <= 0.02 * ref.abs().max().item()
    compiled = torch.compile(lambda x, w: linear(x, w) * 2, fullgraph=True)
    assert max_diff(compiled(x, w), 2 * ref) <= 0.04 * ref.abs().max().item()
    assert linear(x.expand(2, 1, 256), w).shape == (2, 1, 96)                 # several rows: F.linear
    assert torch.equal(linear(x.float(), w.float()), ref)                      # float32: F.linear itself

def test_the_row_kernel_is_measured_once_and_can_be_fixed(monkeypatch):
    "row_kernel() times both kernels once per process, keeps torch.mv only by a clear margin, obeys QWEN3_ROW_KERNEL."
    from qwen3_lib import kernels
    assert kernels.choose_row_kernel({"mv": 1.0, "linear": 1.26}) == "mv"
    assert kernels.choose_row_kernel({"mv": 1.0, "linear": 1.24}) == "linear"      # a close race: PyTorch's usual
    assert kernels.choose_row_kernel({"mv": 2.0, "linear": 1.0}) == "linear"
    seconds = kernels.time_row_kernels(rows=64, cols=32, count=2, repeats=1)
    assert set(seconds) == {"mv", "linear"} and all(0 < s < 1 for s in seconds.values())
    calls = []
    monkeypatch.setitem(kernels._chosen, "kernel", None)
    monkeypatch.setattr(kernels, "time_row_kernels", lambda: calls.append(1) or {"mv": 1.0, "linear": 2.0})
    assert kernels.row_kernel() == "mv" and kernels.row_kernel() == "mv" and calls == [1]
    with pytest.raises(ValueError, match="QWEN3_ROW_KERNEL='gemv'.*'mv', 'linear'"):   # a misspelt setting
        kernels.check_row_kernel("gemv")
    assert kernels.check_row_kernel(None) is None and kernels.check_row_kernel("mv") == "mv"

def test_the_row_kernel_environment_variable_reaches_a_fresh_process():
    import subprocess, sys
    code = "from qwen3_lib.kernels import row_kernel; print(row_kernel())"
    for kernel in ("mv", "linear"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "QWEN3_ROW_KERNEL": kernel},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == kernel
    bad = subprocess.run([sys.executable, "-c", "import qwen3_lib"], env={**os.environ, "QWEN3_ROW_KERNEL": "gemv"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "QWEN3_ROW_KERNEL='gemv': use one of ('mv', 'linear', 'reduce')" in bad.stderr

def test_the_row_kernel_is_not_measured_while_compiling(monkeypatch):
    "An unmeasured choice traces as F.linear without timing anything; FastQwen3's compiled() measures before tracing."
    import torch.nn.functional as F
    from qwen3_lib import kernels, fast
    calls = []
    for slot in ("kernel", "compiled"):
        monkeypatch.setitem(kernels._chosen, slot, None)
    monkeypatch.setattr(kernels, "time_row_kernels", lambda compiled=False: calls.append(1 + compiled) or
                        {"mv": 1.0, "linear": 2.0, **({"reduce": 0.9} if compiled else {})})
    torch._dynamo.reset()
    x, w = torch.randn(1, 64, dtype=torch.bfloat16), torch.randn(32, 64, dtype=torch.bfloat16)
    got = torch.compile(kernels.linear, fullgraph=True)(x, w)
    assert calls == [] and kernels._chosen["kernel"] is None and torch.equal(got, F.linear(x, w))
    fast.compiled(lambda t: t)                 # mv (1.0 s) is not a quarter slower than the reduction (0.9 s)
    assert calls == [1, 2] and kernels._chosen["kernel"] == "mv" and kernels._chosen["compiled"] == "mv"
    torch._dynamo.reset()

def test_the_compiled_row_kernel_takes_the_reduction_only_by_a_margin(monkeypatch):
    "compiled_row_kernel(): the compiled reduction where it beats the eager choice by a quarter; measured once."
    from qwen3_lib import kernels
    for eager_s, reduce_s, want in ((2.0, 1.0, "reduce"), (1.2, 1.0, "linear")):
        for slot in ("kernel", "compiled"):
            monkeypatch.setitem(kernels._chosen, slot, None)
        calls = []
        monkeypatch.setattr(kernels, "time_row_kernels", lambda compiled=False: calls.append(compiled) or
                            {"mv": 9.0, "linear": eager_s, **({"reduce": reduce_s} if compiled else {})})
        assert kernels.compiled_row_kernel() == want and kernels.compiled_row_kernel() == want
        assert calls == [False, True]                            # the eager choice, then all three: once
        assert kernels.row_kernel() == "linear"                  # the eager choice is its own
    for fixed in ("mv", "linear", "reduce"):                     # QWEN3_ROW_KERNEL fixes both, measuring nothing
        monkeypatch.setitem(kernels._chosen, "kernel", kernels.check_row_kernel(fixed))
        monkeypatch.setitem(kernels._chosen, "compiled", fixed)
        assert kernels.compiled_row_kernel() == fixed

def test_the_compiled_reduction_is_at_least_as_accurate_as_the_kernels(monkeypatch):
    """In a compiled graph, a bf16 row through row_reduction (float32 sums, one rounding) is no further from the exact
    product than F.linear's; eagerly linear() never takes it; an int8 layer's reduction is its kernel's product."""
    import torch.nn.functional as F
    from qwen3_lib import kernels
    from qwen3_lib.attention import Linear
    from qwen3_lib.quant import QuantLinear
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 512, dtype=torch.bfloat16), torch.randn(256, 512, dtype=torch.bfloat16)
    exact = x.double() @ w.double().T
    monkeypatch.setitem(kernels._chosen, "compiled", "reduce")
    torch._dynamo.reset()
    with torch.profiler.profile() as prof:
        eager = kernels.linear(x, w)
    assert "aten::linear" in {e.name for e in prof.events()} or "qwen3_lib::mv" in {e.name for e in prof.events()}
    got = torch.compile(kernels.linear, fullgraph=True)(x, w)
    err = lambda y: (y.double() - exact).abs().max().item()
    assert got.dtype == torch.bfloat16 and err(got) <= err(F.linear(x, w)) + 1e-6
    q = QuantLinear(Linear(512, 256, dtype=torch.bfloat16), bits=8)
    with torch.inference_mode():
        want = q(x)                                             # the int8 kernel, eagerly
        compiled = torch.compile(q, fullgraph=True)(x)
    assert compiled.shape == want.shape and max_diff(compiled, want) <= 0.01 * want.abs().max().item()
    torch._dynamo.reset()

def test_cpu_peak_bytes_leaves_the_row_kernel_probe_out(monkeypatch):
    "The probe's 100 MB belong to no measurement: cpu_peak_bytes chooses the kernel before it starts."
    from qwen3_lib import kernels
    from qwen3_lib.tools.memory import cpu_peak_bytes
    monkeypatch.setitem(kernels._chosen, "kernel", None)
    x, w = torch.randn(1, 1024, dtype=torch.bfloat16), torch.randn(1024, 1024, dtype=torch.bfloat16)
    peak = cpu_peak_bytes(lambda: kernels.linear(x, w))
    assert kernels._chosen["kernel"] in ("mv", "linear") and peak < 1e6, peak

def test_a_mixture_of_experts_model_is_refused_clearly():
    from qwen3_lib.moe import Qwen3MoeConfig, Qwen3MoeForCausalLM
    with pytest.raises(ValueError, match="qwen3_lib.generate"):
        FastQwen3(Qwen3MoeForCausalLM(Qwen3MoeConfig.tiny()).eval(), 16)

def test_public_steps_run_outside_inference_mode(tiny):
    "forward, step and prefill need no torch.no_grad() around them (the model's parameters require grad)."
    fast = FastQwen3(tiny, 16, 2)
    ids = torch.randint(0, 1000, (2, 5))
    a = fast.forward(ids, torch.arange(5))
    b = fast.prefill(ids)
    c = fast.step(ids[:, -1:], torch.tensor([5]), 16)
    assert a.shape == b.shape == c.shape == (2, 1000) and max_diff(a, b) <= 1e-5

def test_many_windows_and_batch_sizes_compile_without_hitting_the_limit(tiny, monkeypatch):
    "Each window and batch size is a new shape for the compiled pieces; more than the compiler's default 8 must work."
    import qwen3_lib.fast as fast_module
    real = torch.compile
    monkeypatch.setattr(fast_module.torch, "compile", lambda fn, **kw: real(fn, backend="eager", fullgraph=True, dynamic=False))
    torch._dynamo.reset()
    for B in (1, 2, 3):
        ids = torch.randint(0, 1000, (B, 3))
        fast = FastQwen3(tiny, 40, B, compile_layers=True)
        fast.min_window = 2                                   # windows 4, 8, 16, 32, 40: five shapes per batch size
        assert torch.equal(fast.generate(ids, 30, stop_token_ids=()), generate(tiny, ids, 30, stop_token_ids=()))

def test_generation_arguments_are_checked_alike(tiny):
    "FastQwen3.generate checks what generate checks: seeds per row, stop ids (one or many), nothing to do."
    ids = torch.randint(0, 1000, (2, 4))
    fast = FastQwen3(tiny, 20, 2)
    for run in (lambda **kw: generate(tiny, ids, 3, **kw), lambda **kw: fast.generate(ids, 3, **kw)):
        with pytest.raises(ValueError, match="one per row"):
            run(seed=[1, 2, 3], temperature=1.0)
        with pytest.raises(TypeError, match="stop_token_ids"):
            run(stop_token_ids="x")
        first = int(run(stop_token_ids=())[0, 4])
        assert torch.equal(run(stop_token_ids=first), run(stop_token_ids=(first,)))
    fast.kv_cache.fill_(7.0)
    assert torch.equal(fast.generate(ids, 0), ids) and (fast.kv_cache == 7.0).all()      # no prefill for no tokens

def test_replaced_weights_are_refused_not_mixed(tiny):
    "A FastQwen3 holds the tensors it fused: replacing the model's tensors afterwards must be refused, never mixed."
    ids = torch.randint(0, 1000, (1, 4))
    fast = FastQwen3(tiny, 16)
    other = {k: torch.randn_like(v) * 0.05 for k, v in tiny.state_dict().items()}
    tiny.load_state_dict(other)                                   # in place: the fused stacks see the new numbers
    assert torch.equal(fast.generate(ids, 6, stop_token_ids=()), generate(tiny, ids, 6, stop_token_ids=()))
    tiny.load_state_dict({k: v.clone() for k, v in other.items()}, assign=True)     # new tensors
    for call in (lambda: fast.generate(ids, 2), lambda: fast.forward(ids, torch.arange(4)), lambda: fast.prefill(ids)):
        with pytest.raises(ValueError, match="build a new FastQwen3"):
            call()
    fresh = FastQwen3(tiny, 16)                                    # rebuilding picks up the new tensors
    assert torch.equal(fresh.generate(ids, 6, stop_token_ids=()), generate(tiny, ids, 6, stop_token_ids=()))

def _bf16_and_float32(tiny):
    "The tiny model's weights rounded to bfloat16, and the same numbers held in float32 (the reference)."
    import copy
    m16 = copy.deepcopy(tiny).to(torch.bfloat16)
    return m16, copy.deepcopy(m16).float()

def test_computing_wide_gives_float32_greedy_tokens(tiny):
    "compute_dtype=float32 over bf16 weights: generate()'s tokens on the same numbers in float32, compiled or not."
    from torch._dynamo.utils import counters
    m16, m32 = _bf16_and_float32(tiny)
    ids = torch.randint(0, 1000, (2, 5))
    want = generate(m32, ids, 20, stop_token_ids=())
    eager = FastQwen3(m16, 25, 2, compute_dtype=torch.float32)
    assert eager.kv_cache.dtype == torch.float32 and m16.lm_head.weight.dtype == torch.bfloat16   # weights stay narrow
    assert torch.equal(eager.generate(ids, 20, stop_token_ids=()), want)
    from qwen3_lib.kernels import compiled_row_kernel
    compiled_row_kernel()                               # the probe's own graph (appendix A5) is not the step's
    torch._dynamo.reset(); counters.clear()
    fast = FastQwen3(m16, 25, 2, compile_layers=True, compute_dtype=torch.float32)
    assert torch.equal(fast.generate(ids, 20, stop_token_ids=()), want)
    assert counters["stats"]["unique_graphs"] == 3                        # the mode is traced into the same 3 graphs

def test_computing_wide_logits_within_float32_rounding(tiny):
    """Teacher-forced steps over 24 positions: computing wide, the logits stay within 1e-5 of the largest logit of the
    float32 reference; bf16 activations (the default) are off by about 4e-3 on this model (llama.cpp, too, keeps
    activations in float32 over bf16 weights)."""
    m16, m32 = _bf16_and_float32(tiny)
    ids = torch.randint(0, 1000, (1, 24))
    with torch.inference_mode(): ref = m32(ids)[0]
    scale, err = ref.abs().max().item(), {}
    for name, dt in (("wide", torch.float32), ("bf16", None)):
        f = FastQwen3(m16, 24, compute_dtype=dt)
        with torch.inference_mode():
            got = torch.stack([f.step(ids[:, t:t + 1], f.positions[t:t + 1])[0] for t in range(24)])
            assert max_diff(f.prefill(ids), ref[-1]) <= 1e-5 * scale or name == "bf16"   # the prompt, wide too
        err[name] = max_diff(got, ref) / scale
    assert err["wide"] <= 1e-5 and err["bf16"] > 100 * err["wide"], err

def test_compute_dtype_is_checked(tiny):
    "Only the weights' dtype or a wider float: float16 over bf16 weights would narrow their range."
    m16, _ = _bf16_and_float32(tiny)
    for bad in (torch.float16, torch.int32, "float32"):
        with pytest.raises(ValueError, match=r"compute_dtype must be the weights' dtype \(torch.bfloat16\)"):
            FastQwen3(m16, 8, compute_dtype=bad)
    assert FastQwen3(m16, 8, compute_dtype=torch.bfloat16).wide is False

def test_computing_wide_refuses_quantized_layers(tiny):
    "Quantized codes multiply in their kernels' dtype (chapter 14): refused before the model is touched."
    from qwen3_lib.quant import quantize
    m = quantize(_bf16_and_float32(tiny)[0], "int8")
    before = [t.data_ptr() for t in m.parameters()]
    with pytest.raises(ValueError, match="quantized codes .* leave compute_dtype unset"):
        FastQwen3(m, 8, compute_dtype=torch.float32)
    assert [t.data_ptr() for t in m.parameters()] == before

def test_by_row_blocks_is_the_whole_product_a_block_at_a_time():
    "Eager wide products and int8 in groups widen a few rows at a time: the same numbers as widening all at once."
    import torch.nn.functional as F
    from qwen3_lib.kernels import by_row_blocks
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(1000, 96, generator=g).to(torch.bfloat16), torch.randn(3, 5, 96, generator=g)
    calls = []
    def widen(i, j):
        calls.append((i, j)); return w[i:j].float()
    y = by_row_blocks(x, 1000, widen, block_bytes=96 * 4 * 64)            # 64 rows of float32 a block
    assert y.shape == (3, 5, 1000) and (y - F.linear(x, w.float())).abs().max() <= 1e-5
    assert calls[0] == (0, 64) and calls[-1] == (960, 1000) and len(calls) == 16
    assert by_row_blocks(x, 1000, widen, block_bytes=1).shape == (3, 5, 1000) and calls[-1] == (992, 1000)  # 16 rows
