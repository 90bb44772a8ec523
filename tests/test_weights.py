"load_pretrained / save_pretrained against transformers, and every way a checkpoint can be broken."
import json, shutil
import pytest, torch, transformers
from safetensors.torch import load_file, save_file
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
from qwen3_lib.weights import load_pretrained, save_pretrained, CheckpointError
from conftest import hf_config, max_diff

@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    "A tiny random Qwen3ForCausalLM saved by transformers: one file and sharded."
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    ref = transformers.Qwen3ForCausalLM(hf_config(Qwen3Config.tiny())).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith("norm.weight"): p.normal_(1.0, 0.2)
    ref.save_pretrained(root / "single")
    ref.save_pretrained(root / "sharded", max_shard_size="100KB")
    return ref, root

IDS = torch.tensor([[1, 5, 900, 42, 7, 0, 999], [3, 3, 3, 3, 3, 3, 3]])

@pytest.mark.parametrize("name", ["single", "sharded"])
def test_transformers_checkpoint_loads_with_same_logits(hf_ckpt, name):
    ref, root = hf_ckpt
    assert len(list((root / name).glob("*.safetensors"))) == (1 if name == "single" else 6)
    m = load_pretrained(root / name, dtype=torch.float32, progress=False)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    with torch.no_grad():
        assert max_diff(m(IDS), ref(IDS).logits) <= 1e-4

def test_our_checkpoint_loads_in_transformers(tmp_path):
    torch.manual_seed(1)
    for tie in (True, False):
        m = Qwen3ForCausalLM(Qwen3Config.tiny(tie_word_embeddings=tie)).eval()
        save_pretrained(m, tmp_path / str(tie))
        keys = set(load_file(tmp_path / str(tie) / "model.safetensors"))
        assert ("lm_head.weight" in keys) == (not tie)
        ref = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / str(tie), attn_implementation="eager").eval()
        back = load_pretrained(tmp_path / str(tie), progress=False)
        with torch.no_grad():
            assert max_diff(m(IDS), ref(IDS).logits) <= 1e-4
            assert torch.equal(m(IDS), back(IDS))

def test_transformers4_config_and_extra_tied_head(hf_ckpt, tmp_path):
    "The published 0.6B file carries lm_head.weight although tied, with a transformers-4 config.json."
    ref, root = hf_ckpt
    d = tmp_path / "v4"; shutil.copytree(root / "single", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]; cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    cfg.pop("layer_types", None); cfg["rope_scaling"] = None
    (d / "config.json").write_text(json.dumps(cfg))
    sd = load_file(d / "model.safetensors"); sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, d / "model.safetensors")
    m = load_pretrained(d, dtype=torch.float32, progress=False)
    with torch.no_grad():
        assert max_diff(m(IDS), ref(IDS).logits) <= 1e-4

def test_bfloat16_load_converts_on_the_way(hf_ckpt):
    _, root = hf_ckpt
    m = load_pretrained(root / "single", dtype=torch.bfloat16, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    ref = load_file(root / "single" / "model.safetensors")
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v.to(torch.bfloat16)) for k, v in ref.items())
    m32 = load_pretrained(root / "single", dtype=torch.float32, progress=False)     # same dtype: bytes read in place
    assert all(torch.equal(m32.state_dict()[k], v) for k, v in ref.items())
    assert m.model.rotary_emb.cos.dtype == torch.float32
    assert torch.equal(m.model.rotary_emb.cos, Qwen3ForCausalLM(Qwen3Config.tiny()).model.rotary_emb.cos)

def _broken(root, tmp_path, edit):
    d = tmp_path / "broken"; shutil.copytree(root / "single", d); edit(d); return d

def _edit_sd(fn):
    def edit(d):
        sd = load_file(d / "model.safetensors"); fn(sd); save_file(sd, d / "model.safetensors")
    return edit

@pytest.mark.parametrize("edit, words", [
    (_edit_sd(lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight")), ["model.layers.1.mlp.up_proj.weight", "missing"]),
    (_edit_sd(lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(3))), ["model.extra.weight", "unexpected"]),
    (_edit_sd(lambda sd: sd.__setitem__("model.norm.weight", torch.ones(7))), ["model.norm.weight", "(7,)", "(64,)"]),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]), ["model.safetensors"]),
    (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64), ["model.safetensors"]),
    (lambda d: (d / "model.safetensors").unlink(), ["no weights"]),
])
def test_broken_checkpoints_name_the_problem(hf_ckpt, tmp_path, edit, words):
    _, root = hf_ckpt
    with pytest.raises(CheckpointError) as e:
        load_pretrained(_broken(root, tmp_path, edit), progress=False)
    for w in words:
        assert w in str(e.value), (w, str(e.value))

def test_untied_checkpoint_requires_lm_head(tmp_path):
    m = Qwen3ForCausalLM(Qwen3Config.tiny(tie_word_embeddings=False))
    save_pretrained(m, tmp_path)
    sd = load_file(tmp_path / "model.safetensors"); sd.pop("lm_head.weight"); save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_pretrained(tmp_path, progress=False)

def test_missing_shard_and_bad_index(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = tmp_path / "s"; shutil.copytree(root / "sharded", d)
    next(iter(sorted(d.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(d, progress=False)
    (d / "model.safetensors.index.json").write_text("{")
    with pytest.raises(CheckpointError, match="index"):
        load_pretrained(d, progress=False)

def test_config_problems_name_the_file(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = _broken(root, tmp_path, lambda d: (d / "config.json").write_text("{oops"))
    with pytest.raises(ValueError, match="config.json"):
        load_pretrained(d, progress=False)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(d, progress=False)

def test_missing_directory_and_env(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    monkeypatch.delenv("QWEN3_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="QWEN3_WEIGHTS"):
        load_pretrained()

def test_pickled_weights_load_only_as_plain_tensors(tmp_path):
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    save_pretrained(m, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    back = load_pretrained(tmp_path, progress=False)
    with torch.no_grad():
        assert torch.equal(back(IDS), m(IDS))

    class Evil:                                              # an object a weights-only load must refuse
        def __reduce__(self): return (print, ("unpickled!",))
    torch.save({"model.norm.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_pretrained(tmp_path, progress=False)

def test_download_helper_offline_message_and_success(tmp_path, monkeypatch):
    import huggingface_hub
    from qwen3_lib.weights import download
    def offline(*a, **k): raise OSError("network is unreachable")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConnectionError, match="QWEN3_WEIGHTS"):
        download("Qwen/Qwen3-0.6B", tmp_path)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **k: calls.append((repo, k)))
    assert download("Qwen/Qwen3-0.6B", tmp_path / "w") == tmp_path / "w"
    assert calls[0][0] == "Qwen/Qwen3-0.6B" and "*.safetensors" in calls[0][1]["allow_patterns"]
