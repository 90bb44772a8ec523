"The whole model against transformers' Qwen3ForCausalLM, and the input checks."
import pytest, torch, transformers
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, ContextLengthError
from conftest import hf_twin, randomize_norms, max_diff

@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_tiny_model_vs_transformers(tie):
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny(tie_word_embeddings=tie)).eval()
    randomize_norms(m)
    ref = hf_twin(m)
    ids = torch.randint(0, 1000, (3, 17))
    with torch.no_grad():
        assert max_diff(m(ids), ref(ids).logits) <= 1e-4
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tie

# The full-size model against transformers is chapter 06's proof (run by nbval); here its shape and keys only,
# on the meta device (nothing allocated).
def test_full_model_parameters_and_keys():
    with torch.device("meta"):
        m = Qwen3ForCausalLM(Qwen3Config())
        ref = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**Qwen3Config().to_hf()))
    assert sum(p.numel() for p in m.parameters()) == 596_049_920
    assert set(m.state_dict()) == set(ref.state_dict())
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert "model.layers.27.self_attn.q_norm.weight" in m.state_dict()
    assert m.model.layers[0].self_attn.q_proj.weight.shape == (2048, 1024)
    assert m.model.layers[0].self_attn.o_proj.weight.shape == (1024, 2048)

def test_bfloat16_model_runs_and_tracks_float32():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        ref = m(ids)
        out = m.to(torch.bfloat16)(ids)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert max_diff(out, ref) <= 0.05 * ref.abs().max().item()

def test_logits_depend_only_on_the_past():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    a = torch.randint(0, 1000, (1, 10)); b = a.clone(); b[0, 6:] = 3
    with torch.no_grad():
        assert torch.equal(m(a)[:, :6], m(b)[:, :6])

# --- bad input -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config.tiny()).eval()

@pytest.mark.parametrize("bad, err, words", [
    ([[1, 2, 3]], TypeError, ["torch.Tensor", "list"]),
    (torch.tensor([[1.0, 2.0]]), TypeError, ["torch.long", "float32", ".long()"]),
    (torch.tensor([[True, False]]), TypeError, ["torch.long", "bool"]),
    (torch.tensor([1, 2, 3]), ValueError, ["(batch, seq_len)", "(3,)"]),
    (torch.zeros(1, 0, dtype=torch.long), ValueError, ["empty prompt", "(1, 0)"]),
    (torch.tensor([[]]), ValueError, ["empty prompt", "(1, 0)"]),            # float32, but the problem is emptiness
    (torch.zeros(0, 4, dtype=torch.long), ValueError, ["batch size 0", "(0, 4)"]),
    (torch.tensor([]), ValueError, ["no token ids", "(0,)"]),
    (torch.tensor([[5, 1000, 7]]), ValueError, ["1000", "(0, 1)", "[0, 1000)"]),
    (torch.tensor([[3], [-2]]), ValueError, ["-2", "(1, 0)"]),
])
def test_bad_input_errors(tiny, bad, err, words):
    with pytest.raises(err) as e:
        tiny(bad)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    with torch.no_grad():
        assert tiny(torch.tensor([[1, 2]])).shape == (1, 2, 1000)   # still usable

def test_too_long_fails_before_allocating(tiny):
    "40,961 positions are refused before any activation exists: the scores alone would be 4 heads x 40,961^2 floats."
    from qwen3_lib.tools.memory import cpu_peak_bytes
    ids = torch.zeros(1, 40961, dtype=torch.long)
    errors = []
    def call():
        try:
            tiny(ids)
        except ContextLengthError as e:
            errors.append(e)
    peak = cpu_peak_bytes(call)
    assert len(errors) == 1 and isinstance(errors[0], IndexError)
    assert "40,960" in str(errors[0]) and "40,961" in str(errors[0])
    assert peak < 1_000_000, f"{peak:,} bytes allocated before refusing"       # one embedding lookup would be 10 MB

def test_exactly_the_limit_is_accepted_by_the_check():
    from qwen3_lib.model import check_input_ids
    check_input_ids(torch.zeros(1, 40960, dtype=torch.long), Qwen3Config())
    with pytest.raises(ContextLengthError):
        check_input_ids(torch.zeros(1, 10, dtype=torch.long), Qwen3Config(), past=40951)

def test_other_integer_dtypes_work(tiny):
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(tiny(ids.int()), tiny(ids))

@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.uint16, torch.uint32, torch.uint64])
def test_narrow_or_unsigned_ids_are_a_type_error_not_a_wrapped_range(tiny, dtype):
    "uint8 200 compared with vocab_size 1000 in uint8 would wrap; int16 would reach the embedding. Both: TypeError."
    with pytest.raises(TypeError, match=f"{dtype}.*long"):
        tiny(torch.tensor([[1, 200]]).to(dtype))
    with torch.no_grad():
        assert tiny(torch.tensor([[1, 200]])).shape == (1, 2, 1000)

def test_int32_ids_range_checked_in_python_ints():
    from qwen3_lib.model import check_input_ids
    cfg = Qwen3Config.tiny(vocab_size=2**20)
    check_input_ids(torch.tensor([[2**20 - 1]], dtype=torch.int32), cfg)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        check_input_ids(torch.tensor([[2**31 - 1]], dtype=torch.int32), cfg)
    with pytest.raises(ValueError, match="-2147483648"):
        check_input_ids(torch.tensor([[-2**31]], dtype=torch.int32), cfg)
