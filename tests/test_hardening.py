"""Hardening, round two: each input that once escaped as a raw error (overflow, AttributeError, silent truncation)
now gets a clear error naming the argument, before any large allocation."""
import pytest, torch
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, Qwen3Tokenizer, KVCache, generate, stream, preflight
from qwen3_lib.moe import Qwen3MoeConfig

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config.tiny()).eval()

IDS = torch.tensor([[1, 2, 3]])

@pytest.mark.parametrize("kw, err, word", [
    (dict(seed=1.5), TypeError, "seed"), (dict(seed=2**64), ValueError, "seed"), (dict(seed=[1, 2.0]), ValueError, "seed"),
    (dict(seed=True), TypeError, "seed"), (dict(stop_token_ids=2**64), ValueError, "stop_token_ids"),
    (dict(stop_token_ids=[-1]), ValueError, "stop_token_ids"), (dict(stop_token_ids="<|im_end|>"), TypeError, "stop"),
    (dict(pad_token_id=None), TypeError, "pad_token_id"), (dict(pad_token_id=-3), ValueError, "pad_token_id")])
def test_generation_settings_name_the_argument(tiny, kw, err, word):
    with pytest.raises(err, match=word):
        generate(tiny, IDS, 2, **kw)

def test_a_list_of_prompts_with_float_ids_is_refused_not_truncated(tiny):
    with pytest.raises(TypeError, match="integers"):
        generate(tiny, [[1.7, 2], [3]], 2)
    with pytest.raises(TypeError, match="integers"):
        generate(tiny, [[1, True], [3]], 2)
    rows = generate(tiny, [[1, 2], [3]], 2, stop_token_ids=())         # ints still work
    assert [len(r) for r in rows] == [4, 3]

def test_stream_takes_one_prompt_of_the_right_kind(tiny):
    tok = Qwen3Tokenizer()
    for bad in ([1, 2], None, 7):
        with pytest.raises(TypeError, match="stream takes one prompt"):
            list(stream(tiny, tok, bad, 2))

def test_ids_on_the_meta_device_are_refused(tiny):
    with pytest.raises(ValueError, match="meta device"):
        tiny(torch.zeros(1, 2, dtype=torch.long, device="meta"))

def test_a_wrong_or_mismatched_cache_is_named(tiny):
    with pytest.raises(TypeError, match="KVCache"):
        tiny(IDS, kv_cache=[])
    with pytest.raises(TypeError, match="KVCache"):
        tiny(IDS, kv_cache=object())
    other = KVCache(Qwen3Config.tiny(num_hidden_layers=3), 1, 8)
    with pytest.raises(ValueError, match=r"\(3, 2, 32\).*\(2, 2, 32\)"):
        tiny(IDS, kv_cache=other)
    other = KVCache(Qwen3Config.tiny(head_dim=16), 1, 8)
    with pytest.raises(ValueError, match="head_dim"):
        tiny(IDS, kv_cache=other)

@pytest.mark.parametrize("kw", [dict(seq_len=-5), dict(seq_len=0), dict(seq_len=2.5), dict(seq_len=100, batch_size=0)])
def test_preflight_refuses_sizes_that_are_not_sizes(kw):
    with pytest.raises(ValueError, match="preflight"):
        preflight(Qwen3Config(), **kw)

@pytest.mark.parametrize("kw", [dict(num_experts=2**30), dict(moe_intermediate_size=10**12),
                                dict(num_experts_per_tok=2**21), dict(decoder_sparse_step=2**40)])
def test_moe_sizes_are_bounded_like_the_dense_ones(kw):
    with pytest.raises(ValueError, match="is over 1,048,576"):
        Qwen3MoeConfig(**kw)

def test_an_expert_count_the_checkpoint_does_not_hold_is_refused_at_once(tmp_path, monkeypatch):
    import json
    from qwen3_lib import CheckpointError, moe
    d = moe.save_moe_pretrained(moe.Qwen3MoeForCausalLM(Qwen3MoeConfig.tiny()).eval(), tmp_path / "moe")
    cfg = json.loads((d / "config.json").read_text())
    def never(*a, **kw):
        raise AssertionError("the expected tensors were listed before the expert count was checked")
    monkeypatch.setattr(moe, "checkpoint_tensors", never)       # refused from the headers alone
    for experts in (2**20, 9):
        (d / "config.json").write_text(json.dumps(cfg | {"num_experts": experts}))
        with pytest.raises(CheckpointError, match=f"num_experts = {experts:,}.*holds 8 experts"):
            moe.load_moe_pretrained(d, progress=False)

def test_the_cli_refuses_new_tokens_no_context_holds_before_building_a_model(monkeypatch, capsys):
    from qwen3_lib import model as model_module
    from qwen3_lib.__main__ import main
    def never(*a, **kw):
        raise AssertionError("the model was built before --max-new-tokens was checked")
    monkeypatch.setattr(model_module, "Qwen3ForCausalLM", never)
    assert main(["generate", "Hi", "--max-new-tokens", "50000"]) == 1
    assert "leaves no room for a prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["chat", "--max-new-tokens", "10000000"])
    assert e.value.code == 2
