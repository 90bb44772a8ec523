"Chapter 14 (qwen3_lib.quant) and appendix A7 (qwen3_lib.quant_checks), on miniature models: quantized = dequantized reference, packed bytes, every consumer, GGUF round trips."
import copy, importlib.util
from pathlib import Path
import pytest, torch, torch.nn.functional as F
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, Qwen3Tokenizer, generate, FastQwen3, Chat, CheckpointError
from qwen3_lib.attention import Linear
from qwen3_lib.quant import (quantize_int8, quantize_int4, dequantize_int4, pack_int4, unpack_int4, QuantLinear,
                             quantize, quantized_bytes, export_gguf, load_gguf, gguf_vocab)

TINY = Qwen3Config.tiny(vocab_size=1024)             # int4 packs rows in blocks of 64

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(TINY, dtype=torch.bfloat16).eval()

@pytest.fixture(scope="module")
def full_vocab_model():
    "A tiny model with the whole vocabulary, so that the tokenizer fits in its embedding."
    torch.manual_seed(1)
    return Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=151_936)).eval()

@pytest.fixture(scope="module")
def gguf_model():
    torch.manual_seed(1)
    return Qwen3ForCausalLM(TINY).eval()

def test_int8_codes_and_error_bound():
    w = torch.randn(128, 96) * 0.02
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and s.shape == (128,)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-8).all()

def test_int4_codes_error_bound_and_packing_matches_pytorch():
    w = torch.randn(128, 256) * 0.02
    q, s, z = quantize_int4(w, 32)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and s.shape == z.shape == (128, 8)
    assert ((dequantize_int4(q, s, z, 32) - w).abs() <= s.repeat_interleave(32, 1) / 2 + 1e-7).all()
    p = pack_int4(q)
    assert p.shape == (128, 128) and p.is_contiguous()
    assert torch.equal(p, torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.int(), 1))
    assert torch.equal(unpack_int4(p), q)

def test_int8_groups_codes_error_bound_and_layout():
    from qwen3_lib.kernels import interleave_rows, deinterleave_rows
    w = torch.randn(128, 96) * 0.02
    q, s = quantize_int8(w, 32)
    assert q.dtype == torch.int8 and s.shape == (128, 3) and int(q.view(128, 3, 32).abs().amax(-1).min()) == 127
    assert ((q.float() * s.repeat_interleave(32, 1) - w).abs() <= s.repeat_interleave(32, 1) / 2 + 1e-8).all()
    per_row = (quantize_int8(w)[0].float() * quantize_int8(w)[1][:, None] - w).abs().mean()
    assert (q.float() * s.repeat_interleave(32, 1) - w).abs().mean() < per_row       # finer scales, smaller error
    side = interleave_rows(q)
    assert side.shape == (8, 96, 16) and torch.equal(side[1, 5], q[16:32, 5]) and torch.equal(deinterleave_rows(side), q)
    lin = Linear(96, 128); lin.weight.data.copy_(w)
    ql = QuantLinear(lin, 8, 32)
    assert ql.qweight.shape == (8, 96, 16) and ql.scales.shape == (8, 3, 16)
    assert torch.equal(ql.dequantize(), (q.float() * s.repeat_interleave(32, 1)))          # float32 weight: exact

def test_block_row_product_is_the_dequantized_product():
    from qwen3_lib.kernels import interleave_rows, block_row_product
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (48, 256), dtype=torch.int8, generator=g)
    for group in (32, 64, 128):
        s, x = torch.rand(48, 256 // group, generator=g), torch.randn(2, 1, 256, generator=g, dtype=torch.float64)
        exact = x[:1] @ (q.double() * s.double().repeat_interleave(group, 1)).T            # (1, 1, 48)
        got = block_row_product(x[:1], interleave_rows(q), interleave_rows(s))
        assert got.dtype == torch.float32 and got.shape == (1, 1, 48)
        assert (got.double() - exact).abs().max() <= 1e-5 * exact.abs().max()

def test_grouped_int8_compiled_row_is_the_dequantized_product():
    "A one-row product in a compiled graph multiplies the codes where they lie; eagerly the weight is widened first."
    torch.manual_seed(0)
    lin = Linear(256, 320, dtype=torch.bfloat16)
    torch.nn.init.normal_(lin.weight, std=0.02)
    ql = QuantLinear(lin, 8, 32)
    x = torch.randn(1, 1, 256, dtype=torch.bfloat16)
    from qwen3_lib.kernels import deinterleave_rows
    codes, scales = deinterleave_rows(ql.qweight).double(), deinterleave_rows(ql.scales).double()
    exact = x.double() @ (codes * scales.repeat_interleave(32, 1)).T                # unrounded: codes times scales
    compiled = torch.compile(lambda x: ql(x), fullgraph=True, dynamic=False)(x)
    eager = ql(x)
    spread = x.double().abs() @ (codes * scales.repeat_interleave(32, 1)).abs().T   # sum of |products|
    assert compiled.dtype == eager.dtype == torch.bfloat16
    assert ((compiled.double() - exact).abs() <= 2 ** -8 * exact.abs()).all()          # float32 sums, rounded once
    assert ((eager.double() - exact).abs() <= 2 ** -8 * (exact.abs() + spread)).all()  # and each weight rounded
    for got in (torch.compile(lambda x: ql(x), fullgraph=True, dynamic=False)(x.float()), ql(x.float())):
        assert (got.double() - exact).abs().max() <= 1e-5 * exact.abs().max()           # float32 rows: exact sums

def test_grouped_int8_eager_widens_block_by_block_in_the_stored_layout():
    "A layer larger than one block of by_row_blocks: every block's rows land where they belong, several rows at once."
    torch.manual_seed(0)
    lin = Linear(1024, 4112, dtype=torch.bfloat16)                  # 8.4 MB widened: three blocks, the last short
    torch.nn.init.normal_(lin.weight, std=0.02)
    ql = QuantLinear(lin, 8, 64)
    from qwen3_lib.kernels import deinterleave_rows
    codes, scales = deinterleave_rows(ql.qweight).double(), deinterleave_rows(ql.scales).double()
    dense = codes * scales.repeat_interleave(64, 1)
    assert (dense - lin.weight.double()).abs().max() <= scales.max() / 2 + 1e-6    # the codes are the weight's
    x = torch.randn(3, 1024, dtype=torch.float32)
    assert (ql(x).double() - x.double() @ dense.T).abs().max() <= 1e-5 * (x.double() @ dense.T).abs().max()

@pytest.mark.parametrize("bits,g", [(8, None), (8, 64), (4, 64)])
def test_quant_linear_is_the_dequantized_product(bits, g):
    torch.manual_seed(0)
    lin = Linear(128, 192, dtype=torch.bfloat16)
    torch.nn.init.normal_(lin.weight, std=0.02)
    ql, x = QuantLinear(lin, bits, g), torch.randn(2, 3, 128, dtype=torch.bfloat16)
    ref = F.linear(x.float(), ql.dequantize().float())
    assert ql(x).shape == (2, 3, 192)
    assert (ql(x).float() - ref).abs().max() <= 1e-2 * ref.abs().max()
    assert torch.equal(ql(x[0, :1]), ql(x[0, :1].clone()))                 # one row: the decode case
    with pytest.raises(TypeError, match="dequantize"):
        ql.weight

@pytest.mark.parametrize("mode,g", [("int8", None), ("int8", 32), ("int4", 32), ("int4", 64)])
def test_bytes_in_memory_are_the_arithmetic(model, mode, g):
    m = quantize(copy.deepcopy(model), mode, g)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in m.state_dict().values()}
    assert sum(storages.values()) == quantized_bytes(TINY, mode, g)
    assert sum(isinstance(x, QuantLinear) for x in m.modules()) == 7 * TINY.num_hidden_layers + 1

def test_accuracy_on_the_tiny_model(model):
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = copy.deepcopy(model).float()(ids).flatten(0, 1)
        cos = {mode: F.cosine_similarity(ref, quantize(copy.deepcopy(model), mode)(ids).float().flatten(0, 1)).mean()
               for mode in ("int8", "int4")}
    assert cos["int8"] >= 0.999 and cos["int4"] >= 0.98

def test_every_consumer_takes_a_quantized_model(model):
    m = quantize(copy.deepcopy(model), "int8")
    out = generate(m, torch.tensor([[1, 2, 3]]), 4, stop_token_ids=())
    assert out.shape == (1, 7)
    rows = generate(m, [[1, 2, 3], [4, 5, 6, 7, 8]], 3, stop_token_ids=())   # padded batch (chapter 08e)
    assert [len(r) for r in rows] == [6, 8]
    assert rows[0][-3:].tolist() == generate(m, torch.tensor([[1, 2, 3]]), 3, stop_token_ids=())[0, 3:].tolist()
    for mode, g in (("int8", None), ("int8", 32), ("int4", None)):     # FastQwen3: each projection multiplies alone
        q = quantize(copy.deepcopy(model), mode, g)
        ids = torch.tensor([[1, 2, 3, 4]])
        assert torch.equal(FastQwen3(q, 16).generate(ids, 6, stop_token_ids=()), generate(q, ids, 6, stop_token_ids=()))

def test_grouped_int8_compiled_steps_keep_generates_tokens_and_logits(model):
    "int8 in groups of 32: the compiled step (codes multiplied in place) against generate (weights widened first)."
    f32 = quantize(copy.deepcopy(model).float(), "int8", 32)               # float32: the same arithmetic to rounding
    ids = torch.tensor([[5, 17, 300, 2, 900]])
    fast = FastQwen3(f32, 32, compile_layers=True)
    assert torch.equal(fast.generate(ids, 12, stop_token_ids=()), generate(f32, ids, 12, stop_token_ids=()))
    b16 = quantize(copy.deepcopy(model), "int8", 32)
    fast = FastQwen3(b16, 32, compile_layers=True)
    with torch.inference_mode():
        steps = torch.stack([fast.step(ids[:, t:t + 1], fast.positions[t:t + 1])[0] for t in range(5)]).double()
        ref = copy.deepcopy(model).float()(ids)[0].double()                  # the float weights, in float32
        eager = b16(ids)[0].double()
    cos = F.cosine_similarity(steps, ref, dim=-1)
    assert cos.min() >= 0.999 and (steps - eager).abs().max() <= 0.05 * eager.abs().max()

def test_chat_takes_a_quantized_model(full_vocab_model):
    chat = Chat(quantize(copy.deepcopy(full_vocab_model), "int8"), Qwen3Tokenizer(), max_new_tokens=3)
    parts = list(chat.send("hi"))
    assert parts and all(kind in ("reasoning", "answer") for kind, _ in parts)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]

def test_quantize_refuses_before_changing_anything(model):
    m = copy.deepcopy(model)
    for args, msg in [(("int3",), "int8"), (("int4", 128), "multiple of group_size"), (("int8", 0), "positive"),
                      (("int8", 48), "32, 64, 128 or 256"), (("int8", 128), "multiple of group_size 128")]:
        with pytest.raises(ValueError, match=msg):
            quantize(m, *args)
    assert not any(isinstance(x, QuantLinear) for x in m.modules())
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(m, "int8"), "int8")

@pytest.fixture(scope="module")
def gguf_files(gguf_model, tmp_path_factory):
    "The model alone (no vocabulary: 151,936 tokens take GGUFReader half a minute to parse), once in each dtype."
    tmp = tmp_path_factory.mktemp("gguf")
    return {dtype: export_gguf(gguf_model, None, tmp / f"m-{dtype}.gguf", dtype) for dtype in ("f32", "bf16", "q8_0")}

@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
def test_gguf_round_trip(gguf_model, gguf_files, dtype):
    import gguf
    path = gguf_files[dtype]
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert r.fields["qwen3.attention.head_count_kv"].contents() == 2 and r.fields["qwen3.rope.freq_base"].contents() == 1e6
    names = {t.name: t for t in r.tensors}
    assert "output.weight" not in names and len(names) == 2 + 11 * 2          # tied head: token_embd only
    assert names["blk.0.attn_q.weight"].tensor_type.name == dtype.upper()
    assert names["blk.0.attn_q_norm.weight"].tensor_type.name == "F32"
    ids = torch.randint(0, 1024, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, back = gguf_model(ids), load_gguf(path)(ids)
    if dtype == "f32":
        assert torch.equal(back, ours)
    else:
        assert F.cosine_similarity(back.flatten(0, 1), ours.flatten(0, 1)).min() > 0.999

def test_vocabulary_as_gguf_stores_it():
    import gguf
    tok = Qwen3Tokenizer()
    tokens, types, merges = gguf_vocab(tok, 151_936)
    assert len(tokens) == len(types) == 151_936 and len(merges) == 151_387
    assert tokens[9707] == "Hello" and tokens[151_645] == "<|im_end|>" and tokens[-1] == "[PAD151935]"
    assert types[151_645] == gguf.TokenType.CONTROL and types[151_667] == gguf.TokenType.USER_DEFINED   # </think>
    assert types[0] == gguf.TokenType.NORMAL and types[151_700] == gguf.TokenType.UNUSED
    assert merges[0] == "Ġ Ġ"
    with pytest.raises(ValueError, match="151,669 tokens but the embedding only 1,024"):
        export_gguf(Qwen3ForCausalLM(TINY), tok, "never-written.gguf")

def test_load_gguf_names_what_is_wrong(gguf_files, tmp_path):
    import gguf
    r = gguf.GGUFReader(gguf_files["f32"])
    w = gguf.GGUFWriter(tmp_path / "bad.gguf", "qwen3")
    for f in r.fields.values():
        if not f.name.startswith(("GGUF.", "general.architecture")):
            w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name != "blk.1.ffn_down.weight":
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(CheckpointError, match="blk.1.ffn_down.weight"):
        load_gguf(tmp_path / "bad.gguf")

def test_export_refuses_a_quantized_model(gguf_model, tmp_path):
    with pytest.raises(ValueError, match="packed layout"):
        export_gguf(quantize(copy.deepcopy(gguf_model), "int8"), None, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()

@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="opt-in: pip install llama-cpp-python")
def test_llama_cpp_runs_our_file(full_vocab_model, tmp_path):
    import llama_cpp
    prompt = torch.randint(0, 151_643, (1, 8), generator=torch.Generator().manual_seed(0))
    ours = generate(full_vocab_model, prompt, 16, stop_token_ids=())[0, 8:].tolist()
    path = export_gguf(full_vocab_model, Qwen3Tokenizer(), tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False)
    theirs = []
    for t in llm.generate(prompt[0].tolist(), temp=0.0, top_k=1):
        theirs.append(t)
        if len(theirs) == 16: break
    assert theirs == ours

def test_quantize_refuses_what_it_cannot_run(model):
    "Checked before any layer changes: a kernel's group sizes, dtypes, meta weights, experts and adapters."
    from qwen3_lib.moe import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from qwen3_lib.lora import add_lora
    for g in (1, 8, 16):
        with pytest.raises(ValueError, match="32, 64, 128 or 256"):
            quantize(copy.deepcopy(model), "int4", g)
    with pytest.raises(ValueError, match="float64.*model.to"):
        quantize(copy.deepcopy(model).double(), "int8")
    with pytest.raises(ValueError, match="meta device"):
        quantize(Qwen3ForCausalLM(TINY, device="meta"), "int8")
    with pytest.raises(ValueError, match="experts"):
        quantize(Qwen3MoeForCausalLM(Qwen3MoeConfig.tiny()).eval(), "int8")
    lora = add_lora(Qwen3ForCausalLM(TINY).eval())
    with pytest.raises(ValueError, match="merge_lora"):
        quantize(lora, "int8")
    with pytest.raises(ValueError, match="mode"):
        quantize(copy.deepcopy(model), ["int8"])
    assert all(type(m) is not QuantLinear for m in lora.modules())

def test_quant_linear_takes_any_layout_and_refuses_a_bias():
    torch.manual_seed(0)
    lin = Linear(64, 128).to(torch.bfloat16)
    x = torch.randn(3, 200, dtype=torch.bfloat16)[:, :64]                 # rows not dense
    for bits in (8, 4):
        q = QuantLinear(lin, bits)
        assert torch.equal(q(x), q(x.contiguous())) and torch.equal(q(x.T.contiguous().T), q(x.contiguous()))
    with pytest.raises(ValueError, match="bias"):
        QuantLinear(torch.nn.Linear(64, 128))

def test_a_quantized_model_is_neither_saved_as_a_checkpoint_nor_trained(model, tmp_path):
    from qwen3_lib import save_pretrained, load_pretrained
    from qwen3_lib.train import train
    save_pretrained(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    q = quantize(copy.deepcopy(model), "int8")
    with pytest.raises(TypeError, match="qweight.*float model.*export_gguf"):
        save_pretrained(q, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before        # the float checkpoint is untouched
    assert isinstance(load_pretrained(tmp_path), Qwen3ForCausalLM)
    with pytest.raises(TypeError, match="codes.*no gradient"):
        train(q, torch.randint(0, 1000, (200,)), steps=1, batch_size=1, seq_len=16, progress=False)

def test_export_refuses_adapters_odd_widths_and_a_wrong_tokenizer(tmp_path):
    from qwen3_lib.lora import add_lora
    with pytest.raises(ValueError, match="merge_lora"):
        export_gguf(add_lora(Qwen3ForCausalLM(TINY).eval()), None, tmp_path / "a.gguf")
    odd = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=1024, head_dim=6)).eval()
    with pytest.raises(ValueError, match="num_attention_heads x head_dim.*not a multiple of 32"):
        export_gguf(odd, None, tmp_path / "b.gguf", "q8_0")
    with pytest.raises(TypeError, match="Qwen3Tokenizer"):
        export_gguf(Qwen3ForCausalLM(TINY).eval(), "tok", tmp_path / "c.gguf")
    assert not any(tmp_path.iterdir())

def test_load_gguf_refuses_broken_files_by_name(gguf_model, tmp_path):
    "Cut short, empty, overlapping tensors or more layers claimed than stored: CheckpointError before any model."
    import struct, gguf
    data = export_gguf(gguf_model, None, tmp_path / "ok.gguf").read_bytes()
    for n in (0, 3, 24, 500, 2000, len(data) // 2, len(data) - 8):
        (tmp_path / "cut.gguf").write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="cut.gguf"):
            load_gguf(tmp_path / "cut.gguf")
    raw = bytearray(data)                                           # token_embd claims twice its rows
    i = raw.index(b"token_embd.weight") + len(b"token_embd.weight")
    struct.pack_into("<2Q", raw, i + 4, 64, 2048)
    (tmp_path / "grown.gguf").write_bytes(raw)
    with pytest.raises(CheckpointError, match="token_embd.weight run into"):
        load_gguf(tmp_path / "grown.gguf")
    r, w = gguf.GGUFReader(tmp_path / "ok.gguf"), gguf.GGUFWriter(tmp_path / "layers.gguf", "qwen3")
    for f in r.fields.values():
        if f.name.startswith(("GGUF.", "general.architecture")): continue
        value = 10_000 if f.name == "qwen3.block_count" else f.contents()
        w.add_key_value(f.name, value, f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(CheckpointError, match="10,000 layers.*holds tensors for 2"):
        load_gguf(tmp_path / "layers.gguf")
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")

def test_quantized_bytes_and_load_gguf_check_their_arguments(gguf_model, tmp_path):
    for mode, g in (("int3", 32), ("int4", 48), ("int4", 0)):
        with pytest.raises(ValueError, match="mode|group_size"):
            quantized_bytes(TINY, mode, g)
    with pytest.raises(TypeError, match="torch.dtype"):
        quantized_bytes(TINY, "int8", 32, True, "bfloat16")
    p = export_gguf(gguf_model, None, tmp_path / "m.gguf")
    assert load_gguf(p, "bfloat16").model.embed_tokens.weight.dtype == torch.bfloat16     # a dtype's name works too
    with pytest.raises(ValueError, match="dtype"):
        load_gguf(p, "float8")

# --- Hardening, round three: files written whole, GGUF metadata typed, quantized layers checked ------------------

def in_child(code: str) -> tuple:
    """Run code in a fresh Python (a fork of this one may hang on a lock a torch thread held) with path, a copy of the
    gguf_model fixture's weights, already made; -> (return code, or -signal; what it printed)."""
    import subprocess, sys
    prelude = ("import os, signal, errno, resource, torch, torch.nn.functional as F, gguf\n"
               "from qwen3_lib import Qwen3Config, Qwen3ForCausalLM\n"
               "from qwen3_lib.attention import Linear\n"
               "from qwen3_lib.quant import export_gguf, QuantLinear\n")
    p = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr[-2000:]

CHILD_EXPORT = """
torch.manual_seed(5)                                           # other weights than the file already there
model = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=1024)).eval()
try: export_gguf(model, None, PATH)
except OSError as e: print(type(e).__name__, e.errno, e)
"""

def test_a_full_disk_leaves_the_previous_gguf_as_it_was(gguf_model, tmp_path):
    "A size limit (as a full disk) stops the export in the child: OSError naming the file, errno kept, old bytes kept."
    import errno
    path = export_gguf(gguf_model, None, tmp_path / "m.gguf")
    before = path.read_bytes()
    code, text = in_child("signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"          # write() then fails: EFBIG
                          "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
                          + CHILD_EXPORT.replace("PATH", repr(str(path))))
    assert code == 0 and text.startswith(f"OSError {errno.EFBIG} "), text           # before: a raw OSError from numpy
    assert f"export_gguf could not write {path}: File too large (" in text and "the previous file there is unchanged" in text
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]

def test_a_killed_export_leaves_the_previous_gguf_and_no_half_file(gguf_model, tmp_path):
    import signal
    path = export_gguf(gguf_model, None, tmp_path / "m.gguf")
    before = path.read_bytes()
    code, text = in_child("def write_then_die(self, *a, **k):\n"
                          "    for f in self.fout: f.write(bytes(1000)); f.flush()\n"
                          "    os.kill(os.getpid(), signal.SIGKILL)\n"
                          "gguf.GGUFWriter.write_tensors_to_file = write_then_die\n"
                          + CHILD_EXPORT.replace("PATH", repr(str(path))))
    assert code == -signal.SIGKILL, text
    assert path.read_bytes() == before                                   # in place, this was a 562-byte stub
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".m.gguf.")] == ["m.gguf"]

def test_export_replaces_a_symlink_as_a_link(gguf_model, tmp_path):
    "As save_pretrained and os.replace do: the link is replaced by the new file, the file it pointed to is untouched."
    (tmp_path / "elsewhere.gguf").write_bytes(b"keep me")
    (tmp_path / "link.gguf").symlink_to(tmp_path / "elsewhere.gguf")
    export_gguf(gguf_model, None, tmp_path / "link.gguf")
    assert not (tmp_path / "link.gguf").is_symlink() and (tmp_path / "elsewhere.gguf").read_bytes() == b"keep me"
    assert torch.equal(load_gguf(tmp_path / "link.gguf").lm_head.weight, gguf_model.lm_head.weight)

def test_a_failed_cleanup_does_not_hide_the_error(gguf_model, tmp_path, monkeypatch):
    "A read-only file system refuses the temporary file's removal too: the error shown is still the first one."
    import errno, gguf
    path = export_gguf(gguf_model, None, tmp_path / "m.gguf")
    before = path.read_bytes()
    def full(self, *a, **k): raise OSError(errno.ENOSPC, "No space left on device")
    def read_only(self, *a, **k): raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError, match=r"could not write .*m.gguf: No space left on device; the previous file there "
                                      r"is unchanged \(the temporary file .* is left over: Read-only file system") as e:
        export_gguf(gguf_model, None, path)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before

def test_export_refuses_a_path_it_cannot_write_before_writing(gguf_model, tmp_path):
    import os
    with pytest.raises(IsADirectoryError, match="is a directory: name a file in it, e.g. .*model.gguf"):
        export_gguf(gguf_model, None, tmp_path)
    with pytest.raises(FileNotFoundError, match="the directory .*missing does not exist"):
        export_gguf(gguf_model, None, tmp_path / "missing" / "m.gguf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        export_gguf(gguf_model, None, tmp_path / "file" / "m.gguf")
    with pytest.raises(TypeError, match="path must be a file path"):
        export_gguf(gguf_model, None, 3)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_gguf(gguf_model, None, tmp_path / "m.gguf", ["f32"])            # a list: was a raw "unhashable type"
    with pytest.raises(ValueError, match="meta device"):
        export_gguf(Qwen3ForCausalLM(TINY, device="meta"), None, tmp_path / "m.gguf")
    with pytest.raises(TypeError, match="model must be a Qwen3ForCausalLM"):
        export_gguf({"weights": 1}, None, tmp_path / "m.gguf")
    if os.geteuid() != 0:                                                   # root may write anything
        (tmp_path / "ro.gguf").write_bytes(b"mine"); (tmp_path / "ro.gguf").chmod(0o444)
        with pytest.raises(PermissionError, match="read-only.*chmod u\\+w"):
            export_gguf(gguf_model, None, tmp_path / "ro.gguf")
        assert (tmp_path / "ro.gguf").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) in (["file"], ["file", "ro.gguf"])

def test_chat_template_in_the_gguf_is_the_one_the_tokenizer_uses(full_vocab_model, tmp_path):
    "The built-in template is written as Qwen3's Jinja source; llama.cpp's converter writes the checkpoint's template."
    from qwen3_lib.quant import QWEN3_CHAT_TEMPLATE
    reference = (Path(__file__).parent / "data" / "qwen3_chat_template.jinja").read_text()
    assert QWEN3_CHAT_TEMPLATE == reference
    builtin, jinja = Qwen3Tokenizer(), Qwen3Tokenizer(chat_template=QWEN3_CHAT_TEMPLATE)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    chats = [[{"role": "user", "content": "hi"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "<think>\nhm\n</think>\n\nhello"}, {"role": "user", "content": "more"}]]
    for msgs in chats:
        for kw in ({}, {"enable_thinking": False}, {"tools": tools}):
            assert builtin.apply_chat_template(msgs, **kw) == jinja.apply_chat_template(msgs, **kw)
    data = export_gguf(full_vocab_model, builtin, tmp_path / "a.gguf").read_bytes()
    assert b"tokenizer.chat_template" in data and QWEN3_CHAT_TEMPLATE.encode() in data     # none was written before
    named = Qwen3Tokenizer(chat_template={"default": QWEN3_CHAT_TEMPLATE, "tool_use": "{{ messages }}"})
    data = export_gguf(full_vocab_model, named, tmp_path / "b.gguf").read_bytes()
    assert b"tokenizer.chat_template.tool_use" in data and QWEN3_CHAT_TEMPLATE.encode() in data

def test_fim_tokens_are_control_tokens_as_llama_cpp_writes_them():
    "convert_hf_to_gguf.py: an added token that is special or looks it (<|...|>) is CONTROL, else USER_DEFINED."
    import gguf
    tok = Qwen3Tokenizer()
    tokens, types, _ = gguf_vocab(tok, 151_936)
    assert tokens[151_659:151_665] == ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                                       "<|repo_name|>", "<|file_sep|>"]
    assert all(t == gguf.TokenType.CONTROL for t in types[151_659:151_665])
    assert [types[i] for i in (151_657, 151_658, 151_665, 151_666, 151_667, 151_668)] == [gguf.TokenType.USER_DEFINED] * 6

def spoil(src, dst, keys: dict = (), extra: str = None):
    """A copy of the GGUF file src at dst with metadata keys replaced ({name: (value, type[, array's type])}, value
    None: dropped) and, given extra, one more F32 tensor of that name."""
    import numpy as np, gguf
    r, w, keys = gguf.GGUFReader(src), gguf.GGUFWriter(dst, "qwen3"), dict(keys)
    for f in r.fields.values():
        if f.name.startswith(("GGUF.", "general.architecture")) or f.name in keys: continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for name, (value, *types) in keys.items():
        if value is not None: w.add_key_value(name, value, *types)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    if extra: w.add_tensor(extra, np.zeros(128, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return dst

def test_load_gguf_checks_metadata_types_and_sizes_naming_key_and_file(gguf_files, tmp_path):
    import time, gguf
    T, src = gguf.GGUFValueType, gguf_files["f32"]
    cases = [({"qwen3.block_count": ("2", T.STRING)}, r"qwen3.block_count is of GGUF type STRING, not an integer"),
             ({"qwen3.block_count": (2**31, T.UINT32)}, r"qwen3.block_count is 2147483648, and must be between 1 and"),
             ({"qwen3.context_length": (-5, T.INT32)}, r"qwen3.context_length is -5, and must be between 1"),
             ({"qwen3.attention.head_count_kv": (True, T.BOOL)}, r"head_count_kv is of GGUF type BOOL"),
             ({"qwen3.attention.layer_norm_rms_epsilon": ("1e-6", T.STRING)}, r"epsilon is of GGUF type STRING"),
             ({"qwen3.rope.freq_base": (float("nan"), T.FLOAT32)}, r"freq_base is nan, and must be a positive finite"),
             ({"qwen3.attention.head_count": ([4, 2], T.ARRAY, T.UINT32)},
              r"qwen3.attention.head_count holds 2 per-layer values \(4, 2\) for 2 layers"),
             ({"qwen3.attention.head_count_kv": (3, T.UINT32)},
              r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\).*num_key_value_heads is "
              r"qwen3.attention.head_count_kv"),
             ({"qwen3.embedding_length": (65, T.UINT32)}, r"token_embd.weight has shape \(1024, 64\) in the file, the "
              r"metadata implies \(1024, 65\)"),
             ({"qwen3.rope.scaling.type": ("yarn", T.STRING)}, r"rope.scaling.type is 'yarn'"),
             ({"qwen3.attention.value_length": (16, T.UINT32)}, r"value_length differs from qwen3.attention.key_length")]
    for i, (keys, msg) in enumerate(cases):
        path = spoil(src, tmp_path / f"k{i}.gguf", keys)
        t = time.perf_counter()
        with pytest.raises(CheckpointError, match=f"k{i}.gguf: .*{msg}"):
            load_gguf(path)
        assert time.perf_counter() - t < 10                       # 2**31 layers: past two minutes, growing, before
    same = spoil(src, tmp_path / "per-layer.gguf", {"qwen3.attention.head_count": ([4, 4], T.ARRAY, T.UINT32)})
    assert torch.equal(load_gguf(same).lm_head.weight, load_gguf(src).lm_head.weight)   # llama.cpp's form, agreeing

def test_load_gguf_refuses_tensors_a_qwen3_model_has_no_place_for(gguf_files, tmp_path):
    "llama.cpp ('wrong number of tensors') and load_pretrained (unexpected keys) refuse them; so does load_gguf."
    path = spoil(gguf_files["f32"], tmp_path / "bias.gguf", extra="blk.0.attn_q.bias")
    with pytest.raises(CheckpointError, match=r"bias.gguf holds a tensor blk.0.attn_q.bias that a dense Qwen3 model"):
        load_gguf(path)

@pytest.mark.parametrize("kw,msg", [(dict(bits=3), "bits must be 8 \\(int8\\) or 4 \\(int4\\), got 3"),
                                    (dict(bits=8.0), "bits must be 8.*got 8.0"),
                                    (dict(bits=4, rows=48), "int4 cannot pack a 48 x 64 weight in groups of 32: .*rows "
                                                            "48 a multiple of 64; use bits=8, or another group_size"),
                                    (dict(bits=4, group_size=48), "groups of 48: it needs group_size 32, 64, 128 or 256"),
                                    (dict(bits=8, rows=40), "int8 cannot keep a 40 x 64 weight in groups of 32: .*rows "
                                                            "40 a multiple of 16; use group_size=None"),
                                    (dict(bits=8, group_size=48), "int8 cannot keep .* groups of 48"),
                                    (dict(bits=8, dtype=torch.float64), "64 x 64 torch.float64: linear.to"),
                                    (dict(bits=8, cols=0), "non-empty.*got 64 x 0")])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_quant_linear_refuses_what_it_cannot_hold(kw, msg):
    "bits=3 computed int4 under a repr saying 3; 48 rows gave a raw reshape error; float64 failed only at forward."
    kw = {"rows": 64, "cols": 64, "dtype": torch.float32, "group_size": 32, **kw}
    lin = Linear(kw["cols"], kw["rows"], dtype=kw["dtype"])
    with pytest.raises(ValueError, match=msg):
        QuantLinear(lin, kw["bits"], kw["group_size"])

def test_int8_kernel_is_kept_from_widths_it_crashes_on():
    "PyTorch's CPU int8 kernel segfaults on bfloat16 rows whose width is not a multiple of 16: widen instead."
    code, text = in_child("torch.manual_seed(0)\n"
                          "q = QuantLinear(Linear(40, 64, dtype=torch.bfloat16), 8)\n"
                          "x = torch.randn(3, 40, dtype=torch.bfloat16)\n"
                          "ref = F.linear(x.float(), q.dequantize().float())\n"
                          "print(float((q(x).float() - ref).abs().max() / ref.abs().max()))\n")
    assert code == 0 and float(text.split()[0]) < 1e-2, text            # before: garbage, or -11 (SIGSEGV)

def test_float16_scales_do_not_underflow():
    "Rows of tiny float16 weights: their int8 scale (and an int4 group's) rounded to 0, zeroing them; now kept."
    torch.manual_seed(0)
    w = (torch.randn(64, 64) * torch.logspace(-7, -1, 64)[:, None]).half()     # row maxima from ~1e-7 to ~0.3
    naive = (w.float().abs().amax(1).clamp(min=1e-12) / 127).half()           # the old scale
    assert (naive == 0).sum() > 0                                             # those rows read back as zeros
    q, s = quantize_int8(w)
    back = q.float() * s.float()[:, None]
    assert (s > 0).all() and ((back - w.float()).abs() <= s.float()[:, None] / 2 + 1e-12).all()
    assert (back.abs().amax(1) > 0).all()
    q4, s4, z4 = quantize_int4(w, 32)
    assert (s4 > 0).all() and (dequantize_int4(q4, s4, z4, 32).abs().amax(1) > 0).all()
