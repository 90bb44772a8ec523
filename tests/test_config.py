import json
import pytest, transformers
from qwen3_lib import Qwen3Config, param_counts, weight_bytes, kv_cache_bytes

HF4 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
       "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
       "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1000000, "rope_scaling": None,
       "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
       "sliding_window": None, "max_window_layers": 28, "attention_bias": False, "attention_dropout": 0.0,
       "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645, "transformers_version": "4.51.0"}
HF5 = {**{k: v for k, v in HF4.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")},
       "rope_parameters": {"rope_type": "default", "rope_theta": 1000000}, "dtype": "bfloat16",
       "layer_types": ["full_attention"] * 28}

def test_defaults_are_qwen3_06b():
    c = Qwen3Config()
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (151936, 1024, 3072, 28)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (16, 8, 128)
    assert (c.max_position_embeddings, c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings) == (40960, 1e6, 1e-6, True)

@pytest.mark.parametrize("d", [HF4, HF5], ids=["transformers4", "transformers5"])
def test_from_hf_dict_both_forms(d):
    assert Qwen3Config.from_hf(d) == Qwen3Config()

def test_from_hf_path_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF5))
    assert Qwen3Config.from_hf(tmp_path) == Qwen3Config.from_hf(tmp_path / "config.json") == Qwen3Config()
    assert Qwen3Config.from_hf(str(tmp_path)) == Qwen3Config()

@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_from_hf_roundtrip_through_transformers(dtype):
    c = Qwen3Config.tiny(rope_theta=12345.0, tie_word_embeddings=False, dtype=dtype)
    hf = transformers.Qwen3Config(**c.to_hf())
    assert str(hf.to_dict()["dtype"]).removeprefix("torch.") == dtype
    back = Qwen3Config.from_hf(hf.to_dict())
    assert back.dtype == dtype and back == c

def test_missing_keys_mean_what_transformers_means():
    ref = transformers.Qwen3Config()
    c = Qwen3Config.from_hf({"model_type": "qwen3"})
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(c, f) == getattr(ref, f), f
    assert c.rope_theta == ref.rope_parameters["rope_theta"]

@pytest.mark.parametrize("bad, word", [
    ({"use_sliding_window": True}, "sliding"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "qwen3_moe"}, "qwen3_moe"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
])
def test_unsupported_settings_are_refused(bad, word):
    with pytest.raises(ValueError, match=word):
        Qwen3Config.from_hf({**HF4, **bad})

def test_unsupported_rope_in_v5_form():
    with pytest.raises(ValueError, match="yarn"):
        Qwen3Config.from_hf({**HF5, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}})

def test_harmless_keys_are_accepted():
    assert Qwen3Config.from_hf({**HF5, "use_cache": True, "initializer_range": 0.02, "sliding_window": 4096,
                                "max_window_layers": 28}) == Qwen3Config()

def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen3Config.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        Qwen3Config.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json"):
        Qwen3Config.from_hf(tmp_path)

def test_invalid_values():
    with pytest.raises(ValueError, match="multiple"):
        Qwen3Config(num_attention_heads=16, num_key_value_heads=5)
    with pytest.raises(ValueError, match="hidden_size"):
        Qwen3Config(hidden_size=0)

def test_parameter_count_matches_transformers():
    import torch
    for c in (Qwen3Config(), Qwen3Config(tie_word_embeddings=False), Qwen3Config.tiny()):
        with torch.device("meta"):
            ref = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**c.to_hf()))
        assert param_counts(c)["total"] == sum(p.numel() for p in ref.parameters())
    assert param_counts(Qwen3Config())["total"] == 596_049_920
    assert param_counts(Qwen3Config())["per layer"] == 15_730_944

def test_kv_cache_bytes():
    import torch
    assert kv_cache_bytes(Qwen3Config()) == 114_688
    assert kv_cache_bytes(Qwen3Config(), 40960) == int(4.375 * 2**30)
    assert kv_cache_bytes(Qwen3Config(), dtype=torch.float32) == 2 * 114_688

# --- malformed values: a ValueError that names the key --------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ({"tie_word_embeddings": "false"}, ["tie_word_embeddings", "true or false", "'false'"]),
    ({"tie_word_embeddings": "no"}, ["tie_word_embeddings", "'no'"]),
    ({"tie_word_embeddings": 1}, ["tie_word_embeddings", "got 1"]),
    ({"tie_word_embeddings": None}, ["tie_word_embeddings", "None"]),
    ({"rope_parameters": "default"}, ["rope_parameters", "an object"]),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "1e6"}}, ["rope_parameters.rope_theta", "a number"]),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}}, ["rope_theta", "positive"]),
    ({"hidden_size": None}, ["hidden_size", "an integer", "None"]),
    ({"hidden_size": "1024"}, ["hidden_size", "'1024'"]),
    ({"hidden_size": 1024.0}, ["hidden_size", "1024.0"]),
    ({"num_hidden_layers": True}, ["num_hidden_layers", "True"]),
    ({"vocab_size": -3}, ["vocab_size", "positive"]),
    ({"head_dim": None}, ["head_dim", "None"]),
    ({"rms_norm_eps": None}, ["rms_norm_eps", "a number"]),
    ({"rms_norm_eps": float("nan")}, ["rms_norm_eps", "finite"]),
    ({"attention_bias": "false"}, ["attention_bias", "true or false"]),
    ({"layer_types": "full_attention"}, ["layer_types", "a list"]),
    ({"layer_types": [["full_attention"]]}, ["layer_types", "full_attention"]),
    ({"model_type": ["qwen3"]}, ["model_type", "a string"]),
    ({"dtype": "float8"}, ["dtype", "float8", "bfloat16"]),
    ({"dtype": 16}, ["dtype", "a string"]),
    ({"max_position_embeddings": 2**31}, ["max_position_embeddings", "2,147,483,648", "1,048,576", "RoPE"]),
    ({"max_position_embeddings": 0}, ["max_position_embeddings", "positive"]),
    ({"num_key_value_heads": 0}, ["num_key_value_heads", "positive"]),
])
def test_malformed_values_name_the_key(bad, words):
    with pytest.raises(ValueError) as e:
        Qwen3Config.from_hf({**HF5, **bad})
    for w in words:
        assert w in str(e.value), (w, str(e.value))

def test_json_booleans_and_nulls_that_mean_default():
    assert Qwen3Config.from_hf({**HF5, "tie_word_embeddings": False}).tie_word_embeddings is False
    assert Qwen3Config.from_hf({**HF5, "num_key_value_heads": None}).num_key_value_heads == 16    # transformers: = heads
    assert Qwen3Config.from_hf({**HF4, "rope_scaling": None, "torch_dtype": None}).dtype == "float32"
    assert Qwen3Config.from_hf({**HF5, "dtype": "float16"}).dtype == "float16"

def test_the_file_is_named_with_the_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**HF5, "tie_word_embeddings": "false"}))
    with pytest.raises(ValueError, match=r"config\.json: tie_word_embeddings must be true or false"):
        Qwen3Config.from_hf(tmp_path)

def test_direct_construction_is_checked_too():
    for bad in (dict(tie_word_embeddings="false"), dict(rope_theta=float("inf")), dict(dtype="int8"),
                dict(max_position_embeddings=2**21), dict(hidden_size=2**20 + 1), dict(rms_norm_eps=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Qwen3Config.tiny(**bad)
    assert Qwen3Config.tiny(max_position_embeddings=2**20).max_position_embeddings == 2**20

def test_positions_times_head_dim_is_bounded_before_any_rope_table_is_built():
    "Each size passes its own bound (2**20); together they would ask for two float32 RoPE tables of 4 GiB each."
    import pytest
    from qwen3_lib import Qwen3Config
    with pytest.raises(ValueError, match=r"max_position_embeddings x head_dim = 1,048,576 x 1,024 RoPE table entries"):
        Qwen3Config.tiny(max_position_embeddings=2**20, head_dim=2**10)
    Qwen3Config(max_position_embeddings=131072)              # Qwen3 with YaRN's longest context still fits
