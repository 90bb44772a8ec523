"Chapter 11: Qwen3's mixture-of-experts models against transformers; configs, counts, dispatch, checkpoints, errors."
import pytest, torch, transformers
from safetensors.torch import load_file, save_file
from qwen3_lib import Qwen3Config, param_counts, generate, KVCache, CheckpointError
from qwen3_lib.fast import decode_bytes_per_token
from qwen3_lib.moe import (Qwen3MoeConfig, Qwen3MoeForCausalLM, Qwen3MoeSparseMoeBlock, moe_param_counts,
                           dispatch_naive, checkpoint_tensors, load_moe_pretrained, save_moe_pretrained,
                           expected_experts, moe_decode_bytes_per_token, _dense_part)
from conftest import max_diff, randomize_norms

# The published config.json files of Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B (transformers-4 form).
A3B = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048,
       "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
       "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
       "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 40960, "max_window_layers": 48,
       "rope_theta": 1000000.0, "rope_scaling": None, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
       "torch_dtype": "bfloat16", "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
       "use_sliding_window": False, "sliding_window": None, "output_router_logits": False,
       "router_aux_loss_coef": 0.001, "bos_token_id": 151643, "eos_token_id": 151645, "transformers_version": "4.51.0"}
A22B = {**A3B, "hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_hidden_layers": 94,
        "max_window_layers": 94, "num_attention_heads": 64}

CFGS = {"dense layer 0, renormalised": Qwen3MoeConfig.tiny(num_hidden_layers=3, mlp_only_layers=[0]),
        "sparse step 2, not renormalised": Qwen3MoeConfig.tiny(num_hidden_layers=4, decoder_sparse_step=2, norm_topk_prob=False)}
IDS = torch.tensor([[1, 5, 900, 42, 7, 0, 999], [3, 3, 3, 3, 3, 3, 3]])

def make(cfg, seed=0):
    torch.manual_seed(seed)
    m = Qwen3MoeForCausalLM(cfg).eval()
    randomize_norms(m)
    return m

def hf_twin(model):
    ref = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**model.cfg.to_hf(), attn_implementation="eager"))
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()

def routed(m, ids):
    "Logits and, per sparse layer, the (N, k) experts its router chose."
    seen = []
    hooks = [r.register_forward_hook(lambda mod, args, res: seen.append(res[2]))
             for r in m.modules() if type(r).__name__ == "Qwen3MoeTopKRouter"]
    with torch.no_grad():
        out = m(ids)
    for h in hooks: h.remove()
    return getattr(out, "logits", out), seen

@pytest.fixture(scope="module")
def pair():
    m = make(CFGS["dense layer 0, renormalised"])
    return m, hf_twin(m)

@pytest.mark.parametrize("name", CFGS)
def test_logits_and_router_choices_equal_transformers(name):
    m = make(CFGS[name])
    ref = hf_twin(m)
    ours, ra = routed(m, IDS)
    theirs, rb = routed(ref, IDS)
    assert max_diff(ours, theirs) <= 1e-4
    assert len(ra) == len(rb) == sum(map(m.cfg.is_sparse, range(m.cfg.num_hidden_layers))) == 2
    assert all(torch.equal(a, b) for a, b in zip(ra, rb))
    assert {type(l.mlp).__name__ for l in m.model.layers} == {"Qwen3MLP", "Qwen3MoeSparseMoeBlock"}

def test_greedy_generation_equals_transformers(pair):
    m, ref = pair
    mine = generate(m, IDS, 8, stop_token_ids=())
    theirs = ref.generate(IDS, attention_mask=torch.ones_like(IDS), do_sample=False, max_new_tokens=8,
                          min_new_tokens=8, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, theirs)

def test_kv_cache_step_equals_full_forward(pair):
    m, _ = pair
    cache = KVCache(m.cfg, batch_size=2, max_seq_len=IDS.shape[1])
    with torch.no_grad():
        m(IDS[:, :-1], kv_cache=cache)
        step = m(IDS[:, -1:], kv_cache=cache)
        assert max_diff(step[:, -1], m(IDS)[:, -1]) <= 1e-5

@pytest.mark.parametrize("n", [1, 3, 64])
def test_grouped_dispatch_equals_naive(n):
    torch.manual_seed(n)
    block = Qwen3MoeSparseMoeBlock(Qwen3MoeConfig.tiny(num_experts=16, num_experts_per_tok=4))
    for p in block.parameters(): torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(n, 64)
    with torch.no_grad():
        _, w, e = block.gate(x)
        assert max_diff(block.experts(x, e, w), dispatch_naive(block.experts, x, e, w)) <= 1e-5
        assert block(x.view(1, n, 64)).shape == (1, n, 64)
    with pytest.raises(ValueError, match="gate_up_weight"):
        block(x, gate_up_weight=torch.zeros(1))

def test_published_configs_and_parameter_counts_equal_transformers():
    assert Qwen3MoeConfig.from_hf(A3B) == Qwen3MoeConfig()
    want = {"30B-A3B": (A3B, 30_532_122_624, 3_353_032_704), "235B-A22B": (A22B, 235_093_634_560, 22_190_763_520)}
    for name, (d, total, active) in want.items():
        c = Qwen3MoeConfig.from_hf(d)
        with torch.device("meta"):
            ref = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**c.to_hf()))
        assert sum(p.numel() for p in ref.parameters()) == moe_param_counts(c)["total"] == total, name
        experts = [m for m in ref.modules() if type(m).__name__ == "Qwen3MoeExperts"]
        unused = len(experts) * (c.num_experts - c.num_experts_per_tok) * (experts[0].gate_up_proj[0].numel() +
                                                                           experts[0].down_proj[0].numel())
        assert total - unused == moe_param_counts(c)["active"] == active, name

def test_parameter_counts_of_mixed_layers():
    for c in CFGS.values():
        assert sum(p.numel() for p in Qwen3MoeForCausalLM(c, device="meta").parameters()) == moe_param_counts(c)["total"]

def test_config_roundtrip_through_transformers():
    c = Qwen3MoeConfig.tiny(num_hidden_layers=3, mlp_only_layers=[0], rope_theta=1234.0, decoder_sparse_step=2)
    d = transformers.Qwen3MoeConfig(**c.to_hf()).to_dict()              # writes num_local_experts
    assert "num_local_experts" in d
    assert Qwen3MoeConfig.from_hf(d) == c

def test_missing_keys_mean_what_transformers_means():
    ref, c = transformers.Qwen3MoeConfig(), Qwen3MoeConfig.from_hf({"model_type": "qwen3_moe"})
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "num_experts",
              "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step"):
        assert getattr(c, f) == getattr(ref, f), f
    assert c.head_dim == ref.hidden_size // ref.num_attention_heads and c.mlp_only_layers == ()
    assert c.rope_theta == ref.rope_parameters["rope_theta"]

@pytest.mark.parametrize("make_bad, word", [
    (lambda: Qwen3MoeConfig.from_hf({**A3B, "model_type": "qwen3"}), "Qwen3Config.from_hf"),
    (lambda: Qwen3MoeConfig.from_hf({**A3B, "use_sliding_window": True}), "sliding"),
    (lambda: Qwen3MoeConfig.from_hf({**A3B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}), "yarn"),
    (lambda: Qwen3MoeConfig.from_hf({**A3B, "hidden_act": "gelu"}), "hidden_act"),
    (lambda: Qwen3Config.from_hf(A3B), "qwen3_lib.moe.Qwen3MoeConfig"),
    (lambda: Qwen3MoeConfig(num_experts=4, num_experts_per_tok=8), "cannot exceed"),
    (lambda: Qwen3MoeConfig(num_experts=0), "Qwen3Config"),
    (lambda: Qwen3MoeConfig(decoder_sparse_step=0), "decoder_sparse_step"),
    (lambda: Qwen3MoeConfig(mlp_only_layers=[48]), "mlp_only_layers"),
    (lambda: Qwen3MoeConfig(num_attention_heads=32, num_key_value_heads=5), "multiple"),
])
def test_bad_configs_are_refused_by_name(make_bad, word):
    with pytest.raises(ValueError, match=word):
        make_bad()

def test_dense_arithmetic_and_model_refuse_moe_configs():
    with pytest.raises(TypeError, match="moe_param_counts"):
        param_counts(Qwen3MoeConfig.tiny())
    with pytest.raises(TypeError, match="Qwen3MoeConfig"):
        Qwen3MoeForCausalLM(Qwen3Config.tiny())

@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory, pair):
    "A tiny Qwen3 MoE checkpoint written by transformers: one file and sharded."
    m, ref = pair
    root = tmp_path_factory.mktemp("moe_ckpt")
    ref.save_pretrained(root / "single")
    ref.save_pretrained(root / "sharded", max_shard_size="100KB")
    return m, ref, root

@pytest.mark.parametrize("name", ["single", "sharded"])
def test_transformers_checkpoint_loads_with_same_logits(hf_ckpt, name):
    m, ref, root = hf_ckpt
    keys = set().union(*(load_file(f) for f in (root / name).glob("*.safetensors")))
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys                 # transformers writes per expert
    back = load_moe_pretrained(root / name, dtype=torch.float32, progress=False)
    with torch.no_grad():
        assert torch.equal(back(IDS), m(IDS))
        assert max_diff(back(IDS), ref(IDS).logits) <= 1e-4

def test_our_checkpoint_loads_in_transformers(pair, tmp_path):
    m, _ = pair
    save_moe_pretrained(m, tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert keys == set(checkpoint_tensors(m)) and not any("gate_up_proj" in k for k in keys)
    ref = transformers.Qwen3MoeForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    back = load_moe_pretrained(tmp_path, progress=False)
    with torch.no_grad():
        assert max_diff(m(IDS), ref(IDS).logits) <= 1e-4
        assert torch.equal(m(IDS), back(IDS))

def test_fused_layout_and_bfloat16(hf_ckpt, tmp_path):
    m, ref, root = hf_ckpt
    (tmp_path / "config.json").write_text((root / "single" / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(load_moe_pretrained(tmp_path, progress=False)(IDS), m(IDS))
    b16 = load_moe_pretrained(root / "single", dtype=torch.bfloat16, progress=False)
    assert b16.model.layers[1].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    assert torch.equal(b16.model.layers[1].mlp.experts.down_proj, m.model.layers[1].mlp.experts.down_proj.bfloat16())

@pytest.mark.parametrize("edit, word", [
    (lambda sd: sd.pop("model.layers.2.mlp.experts.5.up_proj.weight"), "missing"),
    (lambda sd: sd.update({"model.layers.1.mlp.gate.weight": torch.zeros(9, 64)}), "shape"),
    (lambda sd: sd.update({"model.layers.1.mlp.experts.8.up_proj.weight": torch.zeros(32, 64)}), "unexpected"),
    (lambda sd: sd.update({"model.layers.1.mlp.experts.gate_up_proj": torch.zeros(8, 64, 64)}), "both fused"),
])
def test_broken_checkpoints_fail_before_allocating(hf_ckpt, tmp_path, edit, word):
    _, _, root = hf_ckpt
    (tmp_path / "config.json").write_text((root / "single" / "config.json").read_text())
    sd = load_file(root / "single" / "model.safetensors"); edit(sd)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=word):
        load_moe_pretrained(tmp_path, progress=False)

def test_expected_experts_and_decode_bytes():
    assert expected_experts(128, 8, 1) == pytest.approx(8)
    assert expected_experts(128, 8, 10_000) == pytest.approx(128)
    c = Qwen3MoeConfig()
    pc = moe_param_counts(c)
    assert moe_decode_bytes_per_token(c) == (pc["active"] - c.vocab_size * c.hidden_size) * 2
    assert moe_decode_bytes_per_token(c, batch_size=10_000) * 10_000 == pytest.approx(
        (pc["total"] - c.vocab_size * c.hidden_size) * 2, rel=1e-9)
    dense = Qwen3MoeConfig(mlp_only_layers=range(48))
    assert moe_decode_bytes_per_token(dense, context=40_960) == decode_bytes_per_token(_dense_part(dense), context=40_960)

def test_moe_config_values_are_type_checked_with_the_key():
    from qwen3_lib.moe import Qwen3MoeConfig
    base = Qwen3MoeConfig.tiny().to_hf()
    for key, value in (("norm_topk_prob", "false"), ("norm_topk_prob", 1), ("mlp_only_layers", 3), ("num_experts_per_tok", 2.0)):
        with pytest.raises(ValueError, match=key):
            Qwen3MoeConfig.from_hf({**base, key: value})
