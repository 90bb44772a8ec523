"Each building block against transformers' Qwen3 module or a torch built-in (float32 <= 1e-4)."
import pytest, torch, torch.nn.functional as F
from transformers.models.qwen3 import modeling_qwen3 as hf
from qwen3_lib import Qwen3Config, ContextLengthError
from qwen3_lib.norm import RMSNorm
from qwen3_lib.rope import RotaryEmbedding, apply_rotary
from qwen3_lib.attention import attention_explicit, attention_sdpa, Qwen3Attention
from qwen3_lib.block import Qwen3MLP, Qwen3DecoderLayer
from qwen3_lib.attention import causal_mask, repeat_kv
from conftest import hf_config, randomize_norms, max_diff

TOL = 1e-4
FULL, TINY = Qwen3Config(), Qwen3Config.tiny()

def additive_mask(T, S):
    return torch.zeros(T, S).masked_fill(~causal_mask(T, S), torch.finfo(torch.float32).min)[None, None]

# --- RMSNorm ---------------------------------------------------------------------------------
def test_rmsnorm_float32_vs_torch_and_transformers():
    torch.manual_seed(0)
    n = RMSNorm(1024); randomize_norms(n)
    ref = hf.Qwen3RMSNorm(1024, eps=1e-6); ref.load_state_dict(n.state_dict())
    x = torch.randn(3, 7, 1024) * 5
    with torch.no_grad():
        assert max_diff(n(x), F.rms_norm(x, (1024,), n.weight, eps=1e-6)) <= 1e-5
        assert max_diff(n(x), ref(x)) <= 1e-6

def test_rmsnorm_bfloat16_identical_to_transformers():
    torch.manual_seed(1)
    n = RMSNorm(128); randomize_norms(n)
    ref = hf.Qwen3RMSNorm(128, eps=1e-6); ref.load_state_dict(n.state_dict())
    n, ref = n.bfloat16(), ref.bfloat16()
    x = (torch.randn(4, 16, 128) * 3).bfloat16()
    with torch.no_grad():
        out = n(x)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, ref(x))

# --- RoPE ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rope():
    return RotaryEmbedding(FULL.head_dim, FULL.max_position_embeddings, FULL.rope_theta)

def test_rope_tables_equal_transformers_at_every_position(rope):
    ref = hf.Qwen3RotaryEmbedding(hf_config(FULL))
    cos, sin = ref(torch.zeros(1, dtype=torch.float32), torch.arange(40960)[None])
    assert rope.cos.shape == (40960, 128) and rope.cos.dtype == torch.float32
    assert max_diff(cos[0], rope.cos) <= 1e-6 and max_diff(sin[0], rope.sin) <= 1e-6

def test_rope_rotation_at_last_position(rope):
    torch.manual_seed(0)
    q, k = torch.randn(2, 16, 3, 128), torch.randn(2, 8, 3, 128)
    c, s = rope(40957, 3)                                           # positions 40957..40959
    rc, rs = hf.Qwen3RotaryEmbedding(hf_config(FULL))(q, torch.arange(40957, 40960)[None])
    hq, hk = hf.apply_rotary_pos_emb(q, k, rc, rs)
    assert max_diff(apply_rotary(q, c, s), hq) <= 1e-5 and max_diff(apply_rotary(k, c, s), hk) <= 1e-5

def test_rope_past_the_table_raises(rope):
    rope(40959, 1)                                                   # the last position is fine
    with pytest.raises(ContextLengthError, match="40,960") as e:
        rope(40000, 961)
    assert isinstance(e.value, IndexError) and "40,961" in str(e.value)

def test_rope_tables_stay_float32_when_model_is_cast(rope):
    r = RotaryEmbedding(16, 100, 10000.0)
    ref = r.cos.clone()
    r.to(torch.bfloat16)
    assert r.cos.dtype == torch.float32 and torch.equal(r.cos, ref)

# --- attention -------------------------------------------------------------------------------
class _HFModuleStub:
    num_key_value_groups, training = 2, False

@pytest.mark.parametrize("T,S", [(6, 6), (1, 9), (4, 10)])
def test_gqa_explicit_sdpa_and_transformers_agree(T, S):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 16, T, 128), torch.randn(2, 8, S, 128), torch.randn(2, 8, S, 128)
    ours, w = attention_explicit(q, k, v)
    ref, _ = hf.eager_attention_forward(_HFModuleStub, q, k, v, additive_mask(T, S), scaling=128 ** -0.5)
    assert max_diff(ours, attention_sdpa(q, k, v)) <= 1e-5
    assert max_diff(ours, ref.transpose(1, 2)) <= 1e-5
    assert torch.allclose(w.sum(-1), torch.ones(()))                # rows are distributions

def test_repeat_kv_matches_repeat_interleave():
    x = torch.randn(2, 8, 5, 16)
    assert torch.equal(repeat_kv(x, 2), x.repeat_interleave(2, dim=1))

def test_causal_mask_hides_the_future():
    m = causal_mask(3, 5)                                           # 2 cached positions, 3 new
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]

@pytest.mark.parametrize("cfg", [TINY, FULL], ids=["tiny", "full"])
def test_qwen3_attention_vs_transformers(cfg):
    torch.manual_seed(0)
    ours = Qwen3Attention(cfg)
    with torch.no_grad():
        for p in ours.parameters(): p.normal_(0, 0.02)
    randomize_norms(ours)
    ref = hf.Qwen3Attention(hf_config(cfg), layer_idx=0).eval()
    ref.load_state_dict(ours.state_dict())
    rope = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
    T = 9
    x = torch.randn(2, T, cfg.hidden_size)
    for start in (0, cfg.max_position_embeddings - T):
        cos, sin = rope(start, T)
        with torch.no_grad():
            assert max_diff(ours(x, cos, sin), ref(x, (cos[None], sin[None]), additive_mask(T, T))[0]) <= TOL

def test_qwen3_attention_bfloat16_close_to_transformers():
    torch.manual_seed(0)
    ours = Qwen3Attention(FULL)
    with torch.no_grad():
        for p in ours.parameters(): p.normal_(0, 0.02)
    randomize_norms(ours)
    ref = hf.Qwen3Attention(hf_config(FULL), layer_idx=0).eval()
    ref.load_state_dict(ours.state_dict())
    ours, ref = ours.bfloat16(), ref.bfloat16()
    rope = RotaryEmbedding(128, 40960, 1e6)
    cos, sin = rope(0, 12)
    x = torch.randn(1, 12, 1024).bfloat16()
    with torch.no_grad():
        a = ours(x, cos, sin)
        b = ref(x, (cos[None].bfloat16(), sin[None].bfloat16()), additive_mask(12, 12).bfloat16())[0]
    assert a.dtype == torch.bfloat16
    # bf16 has 8 mantissa bits; fused and eager kernels round differently. Documented tolerance: 2% of max.
    assert max_diff(a, b) <= 2e-2 * b.abs().max().item()

def test_qk_norm_has_one_gain_per_head_dim_and_runs_before_rope():
    assert Qwen3Attention(FULL).q_norm.weight.shape == Qwen3Attention(FULL).k_norm.weight.shape == (128,)
    torch.manual_seed(0)
    a = Qwen3Attention(TINY)
    with torch.no_grad():     # unit gains commute with RoPE's rotations (the RMS of a head is rotation-invariant); these do not
        a.q_norm.weight.uniform_(0.2, 3.0); a.k_norm.weight.uniform_(0.2, 3.0)
    B, T, hd = 2, 7, TINY.head_dim
    x = torch.randn(B, T, TINY.hidden_size)
    cos, sin = RotaryEmbedding(hd, 40960, 1e6)(100, T)
    def by_hand(norm_first):
        q, k, v = (p(x).view(B, T, -1, hd).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        if norm_first: q, k = a.q_norm(q), a.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if not norm_first: q, k = a.q_norm(q), a.k_norm(k)
        return a.output(attention_explicit(q, k, v)[0])
    with torch.no_grad():
        ours, before, after = a(x, cos, sin), by_hand(True), by_hand(False)
        a.q_proj.weight.mul_(7.0); a.k_proj.weight.mul_(3.0)
        rescaled = a(x, cos, sin)
    assert max_diff(ours, before) <= 1e-5
    assert max_diff(before, after) > 1e-2          # so the line above tells the two orders apart
    assert max_diff(ours, rescaled) <= 1e-5        # the norm removes the scale of q and k

# --- MLP and block ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [TINY, FULL], ids=["tiny", "full"])
def test_mlp_and_block_vs_transformers(cfg):
    torch.manual_seed(0)
    block = Qwen3DecoderLayer(cfg)
    with torch.no_grad():
        for p in block.parameters(): p.normal_(0, 0.02)
    randomize_norms(block)
    ref = hf.Qwen3DecoderLayer(hf_config(cfg), layer_idx=0).eval()
    ref.load_state_dict(block.state_dict())
    ref_mlp = hf.Qwen3MLP(hf_config(cfg)); ref_mlp.load_state_dict(block.mlp.state_dict())
    T = 11
    x = torch.randn(2, T, cfg.hidden_size)
    cos, sin = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)(0, T)
    with torch.no_grad():
        assert max_diff(block.mlp(x), ref_mlp(x)) <= TOL
        out = ref(x, attention_mask=additive_mask(T, T), position_embeddings=(cos[None], sin[None]))
        assert max_diff(block(x, cos, sin), out) <= TOL

def test_mlp_is_swiglu():
    torch.manual_seed(0)
    m = Qwen3MLP(TINY)
    x = torch.randn(3, TINY.hidden_size)
    expected = (F.silu(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    with torch.no_grad():
        assert max_diff(m(x), expected) <= 1e-6

def test_a_16bit_row_on_a_cpu_has_a_gradient(monkeypatch):
    "linear() takes torch.mv for one 16-bit row only when no gradient is wanted; with one, F.linear (with a backward)."
    from qwen3_lib import kernels
    from qwen3_lib.attention import Linear
    monkeypatch.setitem(kernels._chosen, "kernel", "mv")                 # as on a CPU where torch.mv is faster
    lin = Linear(16, 8).to(torch.bfloat16)
    x = torch.randn(1, 1, 16, dtype=torch.bfloat16, requires_grad=True)
    lin(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None and x.grad.shape == x.shape
