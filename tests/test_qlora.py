"""QLoRA (chapter 13): LoRA adapters on chapter 14's int8 and int4 layers. The adapters train and the codes do not;
the gradient reaches every adapter, through the frozen codes of the layers above it, and nothing else, equal to LoRA's
gradient on the dequantized float weights; the adapter is PEFT's file, which PEFT puts on transformers' Qwen3 holding
the dequantized weights with the same logits; merging quantizes the sum again and cannot be undone."""
import copy, warnings
import pytest, torch
from conftest import hf_twin
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
from qwen3_lib.quant import quantize, QuantLinear
from qwen3_lib.train import lm_loss, train
from qwen3_lib.lora import add_lora, load_lora, save_lora, merge_lora, lora_layers, LoRALinear, QLoRALinear

IDS = torch.randint(0, 1000, (400,), generator=torch.Generator().manual_seed(0))
X = IDS[None, :48]
MODES = ["int8", "int8 g32", "int4"]             # int8 with a scale per row, and per 32 inputs (chapter 14)

def float_model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config.tiny()).eval()

def quantized(mode: str) -> Qwen3ForCausalLM:
    return quantize(float_model(), mode.split()[0], None if mode == "int8" else 32, head=False)

def qlora(mode: str, targets="all-linear") -> Qwen3ForCausalLM:
    "The tiny model quantized (head float), adapters r=4, alpha=8 on `targets`; B random, so the adapters do something."
    m = add_lora(quantized(mode), r=4, alpha=8, targets=targets)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.weight.normal_(0, 0.1)
    return m

def codes(m) -> dict:
    return {n: b.clone() for n, b in m.named_buffers() if n.endswith(("qweight", "scales"))}

def dequantized(m) -> Qwen3ForCausalLM:
    "The float model whose projections hold what m's codes stand for (m's adapters left out)."
    dense = float_model()
    with torch.no_grad():
        for name, layer in lora_layers(m).items():
            dense.get_submodule(name).weight.copy_(layer.base_layer.dequantize())
    return dense

@pytest.mark.parametrize("mode", MODES)
def test_add_lora_on_codes_wraps_them_and_freezes_everything_else(mode):
    m = add_lora(quantized(mode), r=4, alpha=8, targets="all-linear")
    layers = lora_layers(m)
    assert len(layers) == 2 * 7 and all(type(l) is QLoRALinear and type(l.base_layer) is QuantLinear for l in layers.values())
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {n for n, _ in m.named_parameters() if ".lora_" in n}
    with torch.no_grad():                                        # B starts at zero: the quantized model, unchanged
        assert (m(X) - quantized(mode)(X)).abs().max() < 1e-4

@pytest.mark.parametrize("mode", MODES)
def test_the_gradient_reaches_only_the_adapters_and_equals_lora_on_the_dequantized_weights(mode):
    m = qlora(mode)
    ref = add_lora(dequantized(m), r=4, alpha=8, targets="all-linear")         # float LoRA with the same A and B
    with torch.no_grad():
        for name, layer in lora_layers(ref).items():
            for ab in ("lora_A", "lora_B"):
                getattr(layer, ab).weight.copy_(getattr(lora_layers(m)[name], ab).weight)
    for model in (m, ref):
        lm_loss(model(X), X).backward()
    assert {n for n, p in m.named_parameters() if p.grad is not None} == {n for n, _ in m.named_parameters() if ".lora_" in n}
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if p.grad is not None:                                  # layer 0's too: through every later layer's codes
            assert p.grad.abs().sum() > 0 and torch.allclose(p.grad, grads[n], atol=1e-5, rtol=1e-3), n

@pytest.mark.parametrize("mode", MODES)
def test_training_moves_the_adapters_and_not_the_codes(mode):
    m = qlora(mode)
    before_codes = codes(m)
    frozen = {n: p.clone() for n, p in m.named_parameters() if ".lora_" not in n}
    adapters = {n: p.clone() for n, p in m.named_parameters() if ".lora_" in n}
    losses = train(m, IDS, 4, batch_size=2, seq_len=16, lr=1e-2, progress=False)
    assert all(torch.equal(b, before_codes[n]) for n, b in codes(m).items())
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
    assert all(not torch.equal(p, adapters[n]) for n, p in m.named_parameters() if n in adapters)
    assert all(torch.isfinite(torch.tensor(losses)))

@pytest.mark.parametrize("mode", MODES)
def test_peft_puts_a_qlora_adapter_on_the_dequantized_model_with_the_same_logits(mode, tmp_path):
    peft = pytest.importorskip("peft")
    m = qlora(mode)
    train(m, IDS, 2, batch_size=2, seq_len=16, lr=1e-2, progress=False)
    save_lora(m, tmp_path / "adapter")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")                          # PEFT 0.21 reads a name transformers 5 deprecates
        theirs = peft.PeftModel.from_pretrained(hf_twin(dequantized(m)), tmp_path / "adapter").eval()
        ours = m(X)
        peft_diff = (theirs(X).logits - ours).abs().max().item()
        again = load_lora(quantized(mode), tmp_path / "adapter")
        assert all(type(l) is QLoRALinear for l in lora_layers(again).values())
        reload_diff = (again(X) - ours).abs().max().item()
        effect = (ours - quantized(mode)(X)).abs().max().item()
    assert peft_diff < 1e-4 and reload_diff < 1e-5 and effect > 1e-2       # equal, and the adapter changes the logits

@pytest.mark.parametrize("mode", MODES)
def test_merge_quantizes_the_sum_again_and_cannot_be_undone(mode):
    m = qlora(mode)
    merged = merge_lora(copy.deepcopy(m))
    assert not lora_layers(merged) and not any(isinstance(x, LoRALinear) for x in merged.modules())
    assert all(type(merged.get_submodule(n)) is QuantLinear for n in lora_layers(m))
    with torch.no_grad():
        adapted, after, base = m(X), merged(X), quantized(mode)(X)
    assert (after - adapted).abs().mean() < 0.25 * (base - adapted).abs().mean()   # most of the adapter survives
    layer = copy.deepcopy(next(iter(lora_layers(m).values())))
    layer.merge()
    with pytest.raises(ValueError, match="cannot be taken out"):
        layer.unmerge()

def test_a_float_layer_s_merge_still_unmerges_exactly():
    m = add_lora(float_model(), r=4, alpha=8, targets=("q_proj",))
    layer = next(iter(lora_layers(m).values()))
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.1)
    w = layer.base_layer.weight.clone()
    layer.merge(); layer.unmerge()
    assert type(layer) is LoRALinear and torch.allclose(layer.base_layer.weight, w, atol=1e-6)

@pytest.mark.parametrize("targets, head, match", [(("q_proj", "v_proj"), False, r"k_proj holds int8/int4 codes"),
                                                  ("all-linear", True, r"lm_head holds int8/int4 codes")])
def test_train_refuses_a_quantized_layer_no_gradient_can_pass(targets, head, match):
    m = add_lora(quantize(float_model(), "int8", head=head), r=4, alpha=8, targets=targets)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match=match + r".*no gradient.*head=False.*all-linear"):
        train(m, IDS, 1, batch_size=2, seq_len=16, progress=False)
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
