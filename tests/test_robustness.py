"""Property-based robustness (hypothesis): generated malformed configs, safetensors headers, shard indexes, id
tensors of every dtype and shape, cache sizes and sampling settings. Only the library's documented exceptions may
come out (ValueError and its CheckpointError, TypeError, ContextLengthError), and the model and its cache stay
usable afterwards. Each test has a fixed example count; conftest.py loads the derandomised "ci" profile, so every
run tries the same examples. To explore: HYPOTHESIS_PROFILE=dev HYPOTHESIS_SCALE=20 (new examples, 20 times as many)."""
import json, math, os, shutil, struct, tempfile
from pathlib import Path
from unittest import mock
import pytest, torch
from hypothesis import assume, given, settings, example, strategies as st
from safetensors.torch import load_file, save_file
import qwen3_lib.checkpoint as W
from qwen3_lib import (Qwen3Config, Qwen3ForCausalLM, ContextLengthError, KVCache, CheckpointError, generate,
                       save_pretrained, load_pretrained)
from qwen3_lib.config import MAX_SIZE, DTYPES, JSON_TYPES as _JSON_TYPES
from qwen3_lib.generate import check_sampling

MICRO = Qwen3Config.tiny(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, max_position_embeddings=24, dtype="float32")
V, P = MICRO.vocab_size, MICRO.max_position_embeddings
DOCUMENTED = (ValueError, TypeError, ContextLengthError)          # CheckpointError is a ValueError

def examples(n: int):
    "n examples per run; HYPOTHESIS_SCALE=k tries k times as many (with HYPOTHESIS_PROFILE=dev, new ones each run)."
    return settings(max_examples=n * int(os.environ.get("HYPOTHESIS_SCALE", "1")))

@pytest.fixture(scope="module")
def micro():
    "A micro model, a probe input and its logits: after every example the model must still give exactly these."
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(MICRO).eval()
    probe = torch.tensor([[1, 5, 9], [2, 2, 63]])
    with torch.no_grad():
        return m, probe, m(probe)

def still_usable(micro):
    m, probe, expected = micro
    with torch.no_grad():
        assert torch.equal(m(probe), expected)

# --- configs --------------------------------------------------------------------------------------
HF5 = {**Qwen3Config().to_hf(), "layer_types": ["full_attention"] * 28, "bos_token_id": 151643}
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats() | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)
NEAR = st.sampled_from([0, 1, 2, 3, 7, 8, 16, 2**20, 2**20 + 1, 2**31, -1, 1.5, 1e6, "8", "bfloat16", "default"])
KEYS = sorted(_JSON_TYPES) + ["rope_parameters.rope_theta", "rope_parameters.rope_type", "rope_scaling.type"]
INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings")
NAMES = tuple(_JSON_TYPES) + ("RoPE",)

def _edit(d: dict, key: str, value=None, drop=False):
    outer, _, inner = key.partition(".")
    if inner:
        if not isinstance(d.get(outer), dict): d[outer] = {}
        d = d[outer]; key = inner
    if drop: d.pop(key, None)
    else: d[key] = value

@examples(200)
@example(edits={"tie_word_embeddings": "false"}, drop=frozenset())
@example(edits={"max_position_embeddings": 2**31}, drop=frozenset())
@example(edits={"rope_parameters": "default"}, drop=frozenset())
@given(edits=st.dictionaries(st.sampled_from(KEYS), JSON | NEAR, max_size=4),
       drop=st.frozensets(st.sampled_from(KEYS), max_size=3))
def test_any_config_dict_gives_a_sane_config_or_a_value_error_naming_the_key(edits, drop):
    d = json.loads(json.dumps(HF5))
    for k in drop: _edit(d, k, drop=True)
    for k, v in edits.items(): _edit(d, k, v)
    try:
        c = Qwen3Config.from_hf(d)
    except ValueError as e:
        assert any(n in str(e) for n in NAMES), str(e)
        return
    for f in INTS:
        v = getattr(c, f)
        assert type(v) is int and 1 <= v <= MAX_SIZE, (f, v)
    assert all(type(v) is float and 0 < v < math.inf for v in (c.rope_theta, c.rms_norm_eps))
    assert type(c.tie_word_embeddings) is bool and c.dtype in DTYPES
    assert Qwen3Config.from_hf(c.to_hf()) == c
    if c.num_hidden_layers <= 4:
        Qwen3ForCausalLM(c, device="meta")                   # what was accepted can be built (shapes only)

@examples(40)
@example(raw=b'{"hidden_size": NaN}')
@example(raw=b"\xff\xfe{}")
@given(raw=st.binary(max_size=48) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_config_file_gives_a_config_or_a_value_error(tmp_path_factory, raw):
    d = tmp_path_factory.getbasetemp() / "config-fuzz"; d.mkdir(exist_ok=True)
    (d / "config.json").write_bytes(raw)
    try:
        Qwen3Config.from_hf(d)
    except ValueError as e:
        assert "config.json" in str(e)

# --- checkpoints: safetensors headers ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(micro, tmp_path_factory):
    "The micro model saved in the Hugging Face layout; its state dict; the file's header and data."
    d = tmp_path_factory.mktemp("micro")
    save_pretrained(micro[0], d)
    raw = (d / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return d, load_file(d / "model.safetensors"), json.loads(raw[8:8 + n]), raw[8 + n:]

ST_DTYPE = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X", ""])
ENTRY = st.fixed_dictionaries({"dtype": ST_DTYPE, "shape": st.lists(st.integers(-1, 40), max_size=3),
                               "data_offsets": st.lists(st.integers(-1, 3000), max_size=3)})
MUTATION = st.one_of(
    st.tuples(st.just("entry"), st.integers(0, 20), ENTRY),
    st.tuples(st.just("field"), st.integers(0, 20), st.sampled_from(["dtype", "shape", "data_offsets"]), JSON | ENTRY),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("add"), st.sampled_from(["lm_head.weight", "model.layers.1.mlp.up_proj.weight", "x", ""]), ENTRY),
    st.tuples(st.just("meta"), JSON),
    st.tuples(st.just("length"), st.integers(-20, 20) | st.sampled_from([2**63, 2**64 - 1, 10**9])),
    st.tuples(st.just("data"), st.integers(-50, 50)),
    st.tuples(st.just("flip"), st.integers(0, 2000), st.integers(1, 255)))

def _write_mutated(ckpt, mutations, d: Path):
    src, _, header, data = ckpt
    shutil.copy(src / "config.json", d / "config.json")
    header, names, delta, cut, flips = json.loads(json.dumps(header)), sorted(k for k in header if k != "__metadata__"), 0, 0, []
    for m in mutations:
        kind = m[0]
        if kind == "entry": header[names[m[1] % len(names)]] = m[2]
        elif kind == "field" and isinstance(header.get(names[m[1] % len(names)]), dict):
            header[names[m[1] % len(names)]][m[2]] = m[3]
        elif kind == "drop": header.pop(names[m[1] % len(names)], None)
        elif kind == "add": header[m[1]] = m[2]
        elif kind == "meta": header["__metadata__"] = m[1]
        elif kind == "length": delta = m[1]
        elif kind == "data": cut = m[1]
        elif kind == "flip": flips.append(m[1:])
    text = json.dumps(header).encode()
    body = data[:len(data) + cut] if cut < 0 else data + bytes(cut)
    raw = bytearray(struct.pack("<Q", max(0, min(2**64 - 1, len(text) + delta)) if delta < 2**62 else delta) + text + body)
    for pos, x in flips:
        raw[pos % len(raw)] ^= x
    (d / "model.safetensors").write_bytes(bytes(raw))

@examples(80)
@example(mutations=[("length", 2**63)])
@example(mutations=[("field", 0, "dtype", "I64")])
@example(mutations=[("data", -1)])
@example(mutations=[])
@given(mutations=st.lists(MUTATION, max_size=3))
def test_any_safetensors_header_gives_the_weights_or_a_checkpoint_error(micro, ckpt, mutations):
    with tempfile.TemporaryDirectory() as tmp:
        _write_mutated(ckpt, mutations, Path(tmp))
        try:
            m = load_pretrained(tmp, progress=False)
        except CheckpointError:
            return
        if not mutations:
            assert all(torch.equal(v, ckpt[1][k]) for k, v in m.state_dict().items() if k in ckpt[1])
        assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in micro[0].state_dict().items()}
        with torch.no_grad():
            assert m(micro[1]).shape == (2, 3, V)

# --- checkpoints: shard indexes -------------------------------------------------------------------
HOSTILE = st.sampled_from(["{outside}", "../outside.safetensors", "/etc/passwd", "/nonexistent.safetensors",
                           "sub/a.safetensors", "..", ".", "", "a.safetensors/", "a\\b.safetensors", "a\0.safetensors",
                           "missing.safetensors", "config.json"]) | JSON

@examples(60)
@example(split=[True] * 8, changes=[(0, "{outside}")], duplicate=None, symlinks=False)
@example(split=[True, False] * 4, changes=[], duplicate=None, symlinks=True)
@example(split=[True, False] * 4, changes=[], duplicate=3, symlinks=False)
@given(split=st.lists(st.booleans(), min_size=1, max_size=12), changes=st.lists(st.tuples(st.integers(0, 20), HOSTILE), max_size=2),
       duplicate=st.none() | st.integers(0, 20), symlinks=st.booleans())
def test_any_shard_index_gives_the_weights_or_a_checkpoint_error_opening_only_its_own_files(micro, ckpt, split, changes,
                                                                                            duplicate, symlinks):
    src, sd, _, _ = ckpt
    names = sorted(sd)
    shard_of = {k: "a.safetensors" if split[i % len(split)] else "b.safetensors" for i, k in enumerate(names)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp); d, blobs = tmp / "snapshot", tmp / "blobs"; d.mkdir(); blobs.mkdir()
        save_file(sd, tmp / "outside.safetensors")                 # valid weights outside: must never be read
        shutil.copy(src / "config.json", d / "config.json")
        for shard in ("a.safetensors", "b.safetensors"):
            part = {k: sd[k] for k in names if shard_of[k] == shard}
            if duplicate is not None and shard == "a.safetensors":
                k = names[duplicate % len(names)]; part[k] = sd[k]         # a tensor in a (too)
            if not part: continue
            where = blobs / shard if symlinks else d / shard            # the Hugging Face cache: links to ../blobs
            save_file(part, where)
            if symlinks: (d / shard).symlink_to(Path("..") / "blobs" / shard)
        weight_map = dict(shard_of)
        for i, target in changes:
            weight_map[names[i % len(names)]] = str(tmp / "outside.safetensors") if target == "{outside}" else target
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        opened, real_safe_open = [], W.safe_open
        def rec_safe_open(f, *a, **k): opened.append(Path(f)); return real_safe_open(f, *a, **k)
        def rec_open(f, *a, **k): opened.append(Path(f)); return open(f, *a, **k)
        with mock.patch.object(W, "safe_open", rec_safe_open), mock.patch.object(W, "open", rec_open, create=True):
            try:
                m = load_pretrained(d, progress=False)
            except CheckpointError:
                m = None
        assert all(p.parent == d for p in opened), opened        # never a file outside the directory
        if m is not None:                                         # loaded: then exactly the saved weights
            assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items() if k in sd)
            assert not changes or all(t == weight_map[names[i % len(names)]] == shard_of[names[i % len(names)]]
                                      for i, t in changes)

# --- token ids ------------------------------------------------------------------------------------
ALL_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64, torch.uint64,
              torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.complex64]

def _expected_error(ids, vals, past=0, cache_batch=None, new_tokens=0):
    "The exception check_input_ids (and the cache, and generate's room check) must raise, or None."
    if ids.numel() == 0: return ValueError
    if ids.dtype not in (torch.int32, torch.int64): return TypeError
    if ids.dim() != 2: return ValueError
    if past + ids.shape[1] > P: return ContextLengthError
    if any(not 0 <= v < V for v in vals): return ValueError
    if cache_batch is not None and ids.shape[0] != cache_batch: return ValueError
    if ids.shape[1] + new_tokens > P: return ContextLengthError
    return None

@examples(100)
@example(dtype=torch.uint8, shape=[1, 2], cache_batch=1, data=None)
@example(dtype=torch.float32, shape=[1, 0], cache_batch=1, data=None)
@given(dtype=st.sampled_from(ALL_DTYPES), shape=st.lists(st.integers(0, 4), max_size=3) | st.tuples(st.integers(1, 2), st.integers(20, 26)).map(list),
       cache_batch=st.integers(1, 3), data=st.data())
def test_any_id_tensor_gives_logits_or_a_documented_error_and_leaves_model_and_cache_usable(micro, dtype, shape,
                                                                                           cache_batch, data):
    m = micro[0]
    n = math.prod(shape)
    vals = data.draw(st.lists(st.integers(-3, V + 3), min_size=n, max_size=n)) if data else [200] * n
    ids = torch.tensor(vals, dtype=torch.int64).reshape(shape).to(dtype)
    vals = ids.reshape(-1).tolist() if ids.dtype in (torch.int32, torch.int64) else vals
    torch.manual_seed(1)
    first = torch.randint(0, V, (cache_batch, 2))
    cache = KVCache(MICRO, batch_size=cache_batch, max_seq_len=P)
    with torch.no_grad():
        m(first, kv_cache=cache)
        kept = [t[:, :, :2].clone() for t in cache.k + cache.v]
        for kw, expected in ((dict(), _expected_error(ids, vals)),
                             (dict(kv_cache=cache), _expected_error(ids, vals, past=2, cache_batch=cache_batch))):
            if expected is None:
                out = m(ids, **kw)
                assert out.shape == (*ids.shape, V) and out.isfinite().all()
            else:
                with pytest.raises(expected):
                    m(ids, **kw)
                assert cache.length == 2                           # nothing written, nothing advanced
        if cache.length == 2:
            assert all(torch.equal(a, b[:, :, :2]) for a, b in zip(kept, cache.k + cache.v))
            nxt = torch.randint(0, V, (cache_batch, 1))               # the cache goes on exactly as a full pass
            full = m(torch.cat([first, nxt], 1))[:, -1]
            assert (m(nxt, kv_cache=cache)[:, -1] - full).abs().max() <= 1e-5
    expected = _expected_error(ids, vals, new_tokens=3)
    if expected is None:
        out = generate(m, ids, 3)
        assert out.shape == (ids.shape[0], ids.shape[1] + 3) and torch.equal(out[:, :ids.shape[1]].long(), ids.long())
        assert 0 <= int(out.min()) and int(out.max()) < V
    else:
        with pytest.raises(expected):
            generate(m, ids, 3)
    still_usable(micro)

@examples(30)
@given(x=st.none() | st.text(max_size=3) | st.lists(st.integers(0, 63), max_size=3) | JSON)
def test_anything_that_is_not_a_tensor_is_a_type_error(micro, x):
    with pytest.raises(TypeError, match="torch.Tensor"):
        micro[0](x)
    still_usable(micro)

# --- the cache's size -----------------------------------------------------------------------------
@examples(40)
@example(batch_size=2**64, max_seq_len=None)
@example(batch_size=2**20, max_seq_len=1)
@given(batch_size=st.integers(-2, 4) | JSON, max_seq_len=st.none() | st.integers(-2, P + 2) | JSON)
def test_any_cache_size_gives_that_cache_or_a_value_error(batch_size, max_seq_len):
    try:
        c = KVCache(MICRO, batch_size=batch_size, max_seq_len=max_seq_len, device="meta")
    except ValueError as e:
        assert "batch_size" in str(e) or "max_seq_len" in str(e)
        return
    want = P if max_seq_len is None else max_seq_len
    assert c.k[0].shape == (batch_size, 1, want, 8) and type(batch_size) is int and 1 <= batch_size <= MAX_SIZE
    assert 1 <= want <= P

# --- sampling settings ----------------------------------------------------------------------------
# A micro model whose embedding has padding rows past the tokenizer's 151,669 ids, as Qwen3-0.6B's has: generation
# masks them with -inf, which is where an infinite temperature turns into NaN.
PADDED = Qwen3Config.tiny(**{**{f: getattr(MICRO, f) for f in INTS}, "vocab_size": 151_680})

@pytest.fixture(scope="module")
def padded():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(PADDED).eval()
    probe = torch.tensor([[1, 5, 9], [2, 2, 151_000]])
    with torch.no_grad():
        return m, probe, m(probe)

def _generate_checked(model, **kw):
    "generate() gives valid ids, or a documented error that check_sampling (the up-front check) raises too."
    m, probe, _ = model
    try:
        out = generate(m, probe, 3, seed=0, **kw)
    except DOCUMENTED as e:
        with pytest.raises(type(e)):                     # refused up front, by the check, not inside sampling
            check_sampling(**kw)
    else:
        assert out.dtype == torch.long and out.shape == (2, 6) and torch.equal(out[:, :3], probe)
        assert 0 <= int(out.min()) and int(out.max()) < min(m.cfg.vocab_size, 151_669)
    still_usable(model)

EXTREMES = [dict(temperature=1e-300), dict(temperature=5e-324), dict(temperature=1e-40), dict(temperature=math.inf),
            dict(temperature=1e300),
            dict(temperature=1.0, top_k=math.inf), dict(temperature=1.0, top_p=1e-300)]

NUM = (st.floats() | st.integers(-3, 10**6) |
       st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-45, 1e-38, 1e-30, 1e300, math.inf, -math.inf, math.nan, 1, 2.0, 0.5]))

@examples(120)
@example(temperature=1e-30, top_k=1, top_p=1e-30)
@example(temperature=1e30, top_k=10**6, top_p=1.0)
@example(temperature=math.nan, top_k=None, top_p=None)
@given(temperature=NUM | st.booleans() | st.none() | st.text(max_size=2), top_k=st.none() | NUM | st.booleans(),
       top_p=st.none() | NUM)
def test_any_sampling_settings_give_valid_ids_or_an_error_from_the_check(micro, temperature, top_k, top_p):
    _generate_checked(micro, temperature=temperature, top_k=top_k, top_p=top_p)

@pytest.mark.parametrize("kw", EXTREMES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_extreme_sampling_settings(padded, kw):
    _generate_checked(padded, **kw)
