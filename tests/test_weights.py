"load_pretrained / save_pretrained against transformers, and every way a checkpoint can be broken."
import json, shutil
from pathlib import Path
import pytest, torch, transformers
from safetensors.torch import load_file, save_file
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
from qwen3_lib.weights import load_pretrained, save_pretrained
from qwen3_lib.errors import CheckpointError
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
    with pytest.raises(FileNotFoundError, match="QWEN3_WEIGHTS") as e:
        load_pretrained()
    assert "hf download Qwen/Qwen3-0.6B --local-dir" in str(e.value)      # the pinned huggingface_hub's CLI

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

# --- a directory that held an older checkpoint ---------------------------------------------------
def _sharded_copy(root, tmp_path, name="old"):
    d = tmp_path / name; shutil.copytree(root / "sharded", d); return d

def test_save_over_a_sharded_checkpoint_replaces_it(hf_ckpt, tmp_path):
    "The old index would shadow the new model.safetensors: it and its shards go, other files stay."
    _, root = hf_ckpt
    d = _sharded_copy(root, tmp_path)
    (d / "tokenizer.json").write_text("{}"); (d / "README.md").write_text("notes")
    old_shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    torch.manual_seed(7)
    new = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    with pytest.warns(UserWarning, match="model.safetensors.index.json") as w:
        save_pretrained(new, d)
    assert all(n in str(w[0].message) for n in old_shards)
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                   "model.safetensors", "tokenizer.json"]
    ref = transformers.Qwen3ForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(load_pretrained(d, progress=False)(IDS), new(IDS))
        assert max_diff(ref(IDS).logits, new(IDS)) <= 1e-4

def test_save_over_a_single_file_checkpoint_and_a_broken_index(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = tmp_path / "single"; shutil.copytree(root / "single", d)
    new = Qwen3ForCausalLM(Qwen3Config.tiny(tie_word_embeddings=False)).eval()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # nothing stale: no warning
        save_pretrained(new, d)
    (d / "model.safetensors.index.json").write_text("{not json")
    outside = tmp_path / "outside.safetensors"; save_file({"x": torch.zeros(1)}, outside)
    with pytest.warns(UserWarning, match="index.json"):
        save_pretrained(new, d)
    assert not (d / "model.safetensors.index.json").exists() and outside.exists()
    with torch.no_grad():
        assert torch.equal(load_pretrained(d, progress=False)(IDS), new(IDS))
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_pretrained(new, outside)

def test_index_naming_a_file_outside_is_not_deleted_on_save(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = _sharded_copy(root, tmp_path)
    outside = tmp_path / "keep.safetensors"; save_file({"x": torch.zeros(1)}, outside)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.norm.weight"] = "../keep.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.warns(UserWarning):
        save_pretrained(Qwen3ForCausalLM(Qwen3Config.tiny()), d)
    assert outside.exists() and not (d / "model.safetensors.index.json").exists()

def test_two_checkpoints_in_one_directory_are_refused(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = _sharded_copy(root, tmp_path)
    shutil.copy(root / "single" / "model.safetensors", d)
    with pytest.raises(CheckpointError, match="two checkpoints.*model.safetensors.*index"):
        load_pretrained(d, progress=False)

# --- contradictions inside a checkpoint -----------------------------------------------------------
def test_untied_checkpoint_with_a_string_false_is_an_error_not_a_tie(tmp_path):
    m = Qwen3ForCausalLM(Qwen3Config.tiny(tie_word_embeddings=False))
    save_pretrained(m, tmp_path)
    c = json.loads((tmp_path / "config.json").read_text()); c["tie_word_embeddings"] = "false"
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="config.json: tie_word_embeddings must be true or false, got 'false'"):
        load_pretrained(tmp_path, progress=False)

@pytest.mark.parametrize("name", ["single", "sharded"])
def test_tied_config_with_a_different_head_keeps_it_untied_as_transformers_does(hf_ckpt, tmp_path, name):
    ref, root = hf_ckpt
    d = tmp_path / name; shutil.copytree(root / name, d)
    f = d / "model.safetensors" if name == "single" else sorted(d.glob("model-*.safetensors"))[-1]
    sd = load_file(f); head = ref.model.embed_tokens.weight.detach().clone()
    head[500, 3] += 1e-3                                          # one value differs
    sd["lm_head.weight"] = head; save_file(sd, f)
    if name == "sharded":
        idx = json.loads((d / "model.safetensors.index.json").read_text())
        idx["weight_map"]["lm_head.weight"] = f.name
        (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.warns(UserWarning) as w:
        m = load_pretrained(d, progress=False)
    msg = str(w[0].message)
    for words in ["lm_head.weight", "model.embed_tokens.weight", "tie_word_embeddings", "false", "in row 500",
                  "largest |difference| 0.001"]:
        assert words in msg, (words, msg)
    assert not m.cfg.tie_word_embeddings and m.lm_head.weight is not m.model.embed_tokens.weight
    assert torch.equal(m.lm_head.weight, head)
    theirs = transformers.Qwen3ForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        assert max_diff(m(IDS), theirs(IDS).logits) <= 1e-5

def test_tied_head_equal_in_another_dtype_is_accepted(hf_ckpt, tmp_path):
    ref, root = hf_ckpt
    d = tmp_path / "eq"; shutil.copytree(root / "single", d)
    sd = load_file(d / "model.safetensors")
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].bfloat16()
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].float()          # same values, other dtype
    save_file(sd, d / "model.safetensors")
    m = load_pretrained(d, dtype=torch.float32, progress=False)
    assert torch.equal(m.lm_head.weight, sd["lm_head.weight"])

def test_tied_head_in_a_pickled_checkpoint_is_checked_too(tmp_path):
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    save_pretrained(m, tmp_path); (tmp_path / "model.safetensors").unlink()
    sd = {k: v.clone() for k, v in m.state_dict().items()}; sd["lm_head.weight"] += 1
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="lm_head.weight differs"):
        back = load_pretrained(tmp_path, progress=False)
    assert torch.equal(back.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(back.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]          # a .bin holds both names for one tensor
    torch.save(sd, tmp_path / "pytorch_model.bin")
    back = load_pretrained(tmp_path, progress=False)
    assert back.lm_head.weight is back.model.embed_tokens.weight

def test_a_tensor_in_two_files_names_both(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = _sharded_copy(root, tmp_path)
    shards = sorted(d.glob("model-*.safetensors"))
    sd = load_file(shards[0]); sd["model.norm.weight"] = torch.ones(64); save_file(sd, shards[0])
    with pytest.raises(CheckpointError) as e:
        load_pretrained(d, progress=False)
    assert "model.norm.weight" in str(e.value) and "two weight files" in str(e.value)
    holder = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
    assert shards[0].name in str(e.value) and holder in str(e.value)

def test_index_and_shards_must_agree(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = _sharded_copy(root, tmp_path)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    wm = idx["weight_map"]
    k = "model.norm.weight"; other = next(v for v in sorted(set(wm.values())) if v != wm[k])
    wm[k] = other
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match=f"holds tensor '{k}', but the shard index puts it in {other}"):
        load_pretrained(d, progress=False)
    del wm[k]
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="does not list it"):
        load_pretrained(d, progress=False)

# --- paths --------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["{outside}", "../outside.safetensors", "../../etc/passwd", "/etc/shadow",
                                    "sub/model.safetensors", "..", "", "C:\\\\x.safetensors", 7, None])
def test_index_naming_a_file_outside_the_directory_is_refused_unopened(hf_ckpt, tmp_path, monkeypatch, target):
    _, root = hf_ckpt
    d = _sharded_copy(root, tmp_path)
    outside = tmp_path / "outside.safetensors"                      # a valid file: it must not be loaded
    shutil.copy(root / "single" / "model.safetensors", outside)
    if target == "{outside}": target = str(outside)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.norm.weight"] = target
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    import qwen3_lib.checkpoint as C
    def never(*a, **k): raise AssertionError("a weight file was opened")
    monkeypatch.setattr(C, "safe_open", never)
    with pytest.raises(CheckpointError, match="not a file name in the checkpoint directory"):
        load_pretrained(d, progress=False)

def test_symlinked_shards_inside_the_directory_load(hf_ckpt, tmp_path):
    "The Hugging Face cache: snapshots/<rev>/<file> are symlinks to ../../blobs/<hash>."
    ref, root = hf_ckpt
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir(); snap.mkdir(parents=True)
    for i, f in enumerate(sorted((root / "sharded").iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    m = load_pretrained(snap, dtype=torch.float32, progress=False)
    with torch.no_grad():
        assert max_diff(m(IDS), ref(IDS).logits) <= 1e-4

def test_a_file_instead_of_a_directory(hf_ckpt):
    _, root = hf_ckpt
    with pytest.raises(NotADirectoryError, match="is a file, not a checkpoint directory"):
        load_pretrained(root / "single" / "model.safetensors", progress=False)

# --- dtype ----------------------------------------------------------------------------------------
def test_dtype_by_name_and_bad_dtypes(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    for name, want in (("bfloat16", torch.bfloat16), ("torch.float16", torch.float16), (torch.float64, torch.float64)):
        assert load_pretrained(root / "single", dtype=name, progress=False).lm_head.weight.dtype == want
    for bad, err in (("bf16", ValueError), (torch.int8, ValueError), (3, TypeError), (["float32"], TypeError)):
        with pytest.raises(err, match="dtype must be a floating-point torch.dtype or its name"):
            load_pretrained(root / "single", dtype=bad, progress=False)

def test_unknown_dtype_in_config_is_an_error_not_float32(hf_ckpt, tmp_path):
    _, root = hf_ckpt
    d = tmp_path / "d"; shutil.copytree(root / "single", d)
    c = json.loads((d / "config.json").read_text()); c["dtype"] = "bfloat17"
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="dtype must be one of .*got 'bfloat17'"):
        load_pretrained(d, progress=False)

# --- which files are weights ----------------------------------------------------------------------
def test_pickled_checkpoint_next_to_trainer_files(tmp_path):
    "training_args.bin (a pickled TrainingArguments), optimizer.pt, rng_state.pth: never opened."
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    save_pretrained(m, tmp_path); (tmp_path / "model.safetensors").unlink()
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    import argparse
    torch.save(argparse.Namespace(lr=1e-4), tmp_path / "training_args.bin")   # refused by weights_only, if opened
    torch.save({"state": {}}, tmp_path / "optimizer.pt"); torch.save({"rng": 1}, tmp_path / "rng_state.pth")
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path, progress=False)(IDS), m(IDS))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights.*optimizer.pt, rng_state.pth, training_args.bin are not model weight"):
        load_pretrained(tmp_path, progress=False)

def test_pickled_values_must_be_float_tensors(tmp_path):
    m = Qwen3ForCausalLM(Qwen3Config.tiny())
    save_pretrained(m, tmp_path); (tmp_path / "model.safetensors").unlink()
    sd = dict(m.state_dict()); sd["model.norm.weight"] = 3
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="'model.norm.weight' is a int, not a floating-point weight tensor"):
        load_pretrained(tmp_path, progress=False)

def test_layer_count_is_checked_before_a_big_meta_model_is_built(hf_ckpt, tmp_path, monkeypatch):
    _, root = hf_ckpt
    d = tmp_path / "d"; shutil.copytree(root / "single", d)
    c = json.loads((d / "config.json").read_text()); c["num_hidden_layers"] = 10_000
    (d / "config.json").write_text(json.dumps(c))
    import qwen3_lib.weights as W, qwen3_lib.checkpoint as C
    built = []
    class Recording(W.Qwen3ForCausalLM):
        def __init__(self, cfg, *a, **k):
            built.append(cfg.num_hidden_layers); super().__init__(cfg, *a, **k)
    monkeypatch.setattr(W, "Qwen3ForCausalLM", Recording)
    monkeypatch.setattr(C, "Qwen3ForCausalLM", Recording)
    with pytest.raises(CheckpointError, match="num_hidden_layers = 10,000, but the checkpoint holds 2 layer"):
        load_pretrained(d, progress=False)
    assert built == []                                     # refused before any model, meta or not, was made
    c["num_hidden_layers"] = 2; (d / "config.json").write_text(json.dumps(c))
    load_pretrained(d, progress=False)
    assert built == [1, 2]                                 # the plan's one-layer skeleton, then the model itself
