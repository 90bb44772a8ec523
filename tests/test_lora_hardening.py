"""Training and LoRA where an adversarial probe found gaps (chapters 12 and 13, their checks in appendix A1): id dtypes,
stale gradients, clipping, evaluate's arguments, left padding; add_lora/load_lora against PEFT 0.21's rules for
target_modules, its variants and its defaults. Each refusal leaves the model as it was."""
import copy, json, math, warnings
import pytest, torch
from conftest import hf_twin
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
from qwen3_lib.batching import left_pad
from qwen3_lib.lora import LORA_VARIANTS
from qwen3_lib.kv_cache import KVCache
from qwen3_lib.train import lm_loss, mask_labels, train, evaluate
from qwen3_lib.lora import add_lora, load_lora, save_lora, lora_layers, LoRALinear

IDS = torch.randint(0, 1000, (300,), generator=torch.Generator().manual_seed(0))
SMALL = dict(steps=2, batch_size=2, seq_len=16, progress=False)

def model(seed=0):
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config.tiny())

def snapshot(m) -> dict:
    "Everything a refusal must leave as it was: every tensor, which ones train, and the module types."
    return dict(state={k: v.clone() for k, v in m.state_dict().items()},
                grad={n: p.requires_grad for n, p in m.named_parameters()},
                types=[(n, type(x).__name__) for n, x in m.named_modules()])

def unchanged(m, snap) -> bool:
    now = snapshot(m)
    return (now["grad"] == snap["grad"] and now["types"] == snap["types"] and now["state"].keys() == snap["state"].keys()
            and all(torch.equal(v, snap["state"][k]) for k, v in now["state"].items()))

# --- training -----------------------------------------------------------------------------------------------------

def test_int32_ids_train_as_int64_ids_do():
    # The model's forward takes int32 ids (check_input_ids); train, evaluate, mask_labels and lm_loss now take them
    # too (cross_entropy itself refuses int32 targets: they used to fail inside it).
    a, b = model(), model()
    assert train(a, IDS.int(), **SMALL) == train(b, IDS, **SMALL)
    assert evaluate(a, IDS.int(), 16) == evaluate(a, IDS, 16)
    labels = mask_labels(IDS[None, :8].int())
    assert labels.dtype == torch.int64 and torch.equal(labels, IDS[None, :8])
    logits = torch.randn(1, 8, 1000)
    assert torch.equal(lm_loss(logits, IDS[None, :8].int()), lm_loss(logits, IDS[None, :8]))

@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int8])
def test_narrow_ids_are_refused_by_their_dtype_not_as_outside_the_vocabulary(dtype):
    # uint8 ids 0..255 were refused as "outside the vocabulary" (1000 wrapped around in uint8). The model refuses
    # these dtypes (TypeError, convert with .long()); train, evaluate and mask_labels say the same.
    m = model(); snap = snapshot(m)
    ids = IDS.clamp(max=100).to(dtype)
    for call in (lambda: train(m, ids, **SMALL), lambda: evaluate(m, ids, 16), lambda: mask_labels(ids[None])):
        with pytest.raises(TypeError, match=rf"torch.long .*got dtype {dtype}"):
            call()
    assert unchanged(m, snap)

def test_mask_labels_never_writes_minus_100_into_a_narrow_dtype():
    with pytest.raises(TypeError):
        mask_labels(torch.tensor([[5, 6]], dtype=torch.uint8), torch.tensor([[0, 1]]))

def test_a_stale_gradient_does_not_join_the_first_step():
    # transformers' Trainer calls model.zero_grad() before its first step; so does train.
    a, b = model(), model()
    lm_loss(a(IDS[None, :32]), IDS[None, :32]).mul(100).backward()      # a backward() left over from earlier work
    assert a.model.norm.weight.grad is not None
    train(a, IDS, **SMALL); train(b, IDS, **SMALL)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))

@pytest.mark.parametrize("kw, match", [(dict(clip=-1.0), "clip"), (dict(clip=float("nan")), "clip"),
                                       (dict(clip=float("inf")), "clip"), (dict(clip="1"), "clip"),
                                       (dict(clip=True), "clip"), (dict(weight_decay=float("nan")), "weight_decay"),
                                       (dict(weight_decay=-0.1), "weight_decay"), (dict(weight_decay=None), "weight_decay"),
                                       (dict(autocast="yes"), "autocast")])
def test_clip_and_weight_decay_must_be_finite_and_not_negative(kw, match):
    # clip=-1 turned descent into ascent and clip or weight_decay NaN made every weight NaN, in place.
    m = model(); snap = snapshot(m)
    with pytest.raises(ValueError, match=match):
        train(m, IDS, **SMALL, **kw)
    assert unchanged(m, snap)

def test_a_callback_that_cannot_be_called_is_refused_before_the_first_step():
    m = model(); snap = snapshot(m)
    with pytest.raises(TypeError, match="callback"):
        train(m, IDS, **SMALL, callback="print")
    assert unchanged(m, snap)

def test_clip_none_and_zero_mean_no_clipping():
    # transformers' max_grad_norm: None or 0 clips nothing.
    runs = [train(model(), IDS, **SMALL, clip=c) for c in (None, 0, 0.0, 1e-6)]
    assert runs[0] == runs[1] == runs[2] and runs[3][1] != runs[0][1]

@pytest.mark.parametrize("kw, err", [(dict(seq_len=0), ValueError), (dict(seq_len=-1), ValueError),
                                     (dict(seq_len=2.0), ValueError), (dict(batch_size=0), ValueError),
                                     (dict(seq_len=300), ValueError), (dict(seq_len=50_000), IndexError),
                                     (dict(ids=IDS.float()), TypeError), (dict(ids=IDS[None]), ValueError),
                                     (dict(ids=torch.full((300,), 1000)), ValueError)])
def test_evaluate_checks_its_arguments(kw, err):
    # seq_len=0 returned NaN and seq_len=-1 raised ZeroDivisionError.
    args = dict(ids=IDS, seq_len=16, batch_size=4)
    with pytest.raises(err):
        evaluate(model(), **{**args, **kw})

def test_a_left_padded_row_scores_as_the_same_row_unpadded():
    # A padding position's logits predict nothing: mask_labels drops the first real token of a left-padded row, so
    # the row's loss is the unpadded row's (transformers' loss takes the labels it is given, and would score it).
    m = model().eval()
    rows = [IDS[:12].tolist(), IDS[20:27].tolist()]
    ids, mask = left_pad(rows, pad_token_id=0)
    labels = mask_labels(ids, mask)
    assert labels[1].tolist() == [-100] * 6 + rows[1][1:]
    with torch.no_grad():
        padded = lm_loss(m(ids[1:], attention_mask=mask[1:]), labels[1:])
        alone = lm_loss(m(torch.tensor([rows[1]])), torch.tensor([rows[1]]))
    assert abs(padded.item() - alone.item()) < 1e-5

@pytest.mark.parametrize("mask", [torch.full((1, 4), 2), torch.full((1, 4), 0.5)])
def test_mask_labels_refuses_a_mask_that_is_not_zeros_and_ones(mask):
    with pytest.raises(ValueError, match="1 for tokens and 0 for padding"):
        mask_labels(torch.zeros(1, 4, dtype=torch.long), mask)

def test_gradient_checkpointing_with_a_cache_still_fills_it_without_grad():
    # Generating from a model left in training mode: no backward, so no recomputation, and the cache is filled
    # (transformers checkpoints only when torch.is_grad_enabled() too).
    m = model(); m.train(); m.model.gradient_checkpointing = True
    cache, ids = KVCache(m.cfg, 1, 16), IDS[None, :5]
    with torch.no_grad():
        out = m(ids, kv_cache=cache)
        assert cache.length == 5 and torch.equal(out, m.eval()(ids))

def test_gradient_checkpointing_with_a_cache_is_refused_clearly():
    m = model(); m.train(); m.model.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient checkpointing"):
        m(IDS[None, :5], kv_cache=KVCache(m.cfg, 1, 16)).sum().backward()

# --- add_lora -----------------------------------------------------------------------------------------------------

def test_a_target_named_twice_is_adapted_once():
    # PEFT makes a set of target_modules; add_lora raised a raw AttributeError half-way and left the model frozen.
    once = add_lora(model(), targets=("q_proj",))
    twice = add_lora(model(), targets=("q_proj", "q_proj", "self_attn.q_proj"))
    assert list(lora_layers(twice)) == list(lora_layers(once)) and len(lora_layers(once)) == 2

@pytest.mark.parametrize("kw", [dict(r=0), dict(r=65), dict(alpha=-1.0), dict(alpha=float("inf")),
                                dict(targets=("q_proj", "qproj")), dict(targets=("lm_head",)), dict(targets=("mlp",)),
                                dict(targets=("q_proj", "model.embed_tokens")), dict(targets="q_proj"),
                                dict(targets=()), dict(targets=[1])])
def test_add_lora_refusals_leave_the_model_as_it_was(kw):
    m = model(); snap = snapshot(m)
    with pytest.raises(ValueError):
        add_lora(m, **kw)
    assert unchanged(m, snap)

@pytest.mark.parametrize("targets, n", [(("model.layers.1.mlp.down_proj",), 1), (("self_attn.q_proj", "mlp.up_proj"), 4),
                                        ("all-linear", 14), (r"model\.layers\.0\..*_proj", 7), (("q_proj", "nope"), None)])
def test_add_lora_matches_targets_as_peft_does(targets, n):
    if n is None:                        # PEFT would skip 'nope' silently; add_lora says a name matches nothing
        with pytest.raises(ValueError, match="unknown LoRA target 'nope'"):
            add_lora(model(), targets=targets)
        return
    assert len(lora_layers(add_lora(model(), targets=targets))) == n

# --- load_lora against PEFT ---------------------------------------------------------------------------------------

def peft_adapter(tmp_path, seed=0, **config):
    "A PEFT 0.21 adapter with random lora_A and lora_B on transformers' twin of model(seed), saved -> (dir, PEFT model)."
    peft = pytest.importorskip("peft")
    base = model(seed).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_twin(base), peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": False,
                                                                        **config}))
    theirs.save_pretrained(tmp_path)
    return tmp_path, theirs.eval()

@pytest.mark.parametrize("config", [dict(target_modules="all-linear"), dict(target_modules=["model.layers.0.self_attn.q_proj"]),
                                    dict(target_modules=["self_attn.q_proj", "mlp.down_proj"]),
                                    dict(target_modules=r".*\.(q|v)_proj"),
                                    dict(target_modules=["q_proj", "v_proj", "c_attn"]),       # PEFT skips c_attn
                                    dict(target_modules="all-linear", exclude_modules=["o_proj", "mlp.up_proj"]),
                                    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[1]),
                                    dict(target_modules=["q_proj"], layers_to_transform=0, layers_pattern="layers"),
                                    dict(target_modules=["q_proj"], bias="all"), dict(target_modules=["q_proj"], bias="lora_only")],
                         ids=["all-linear", "full-path", "suffixes", "regex", "unmatched-entry", "exclude",
                              "layers_to_transform", "layers_pattern", "bias-all", "bias-lora_only"])
def test_every_target_form_peft_accepts_loads_with_peft_logits(tmp_path, config):
    # Each form PEFT accepts (its matching rule: tuners_utils.check_target_module_exists; "all-linear" it saves as
    # full module paths), and bias/fan_in_fan_out that change nothing on Qwen3's bias-free nn.Linear projections.
    path, theirs = peft_adapter(tmp_path, **config)
    ours = load_lora(model().eval(), path)
    assert set(lora_layers(ours)) == {n.removeprefix("base_model.model.") for n, m in theirs.named_modules()
                                      if type(m).__name__ == "Linear" and hasattr(m, "lora_A")}
    ids = IDS[None, :16]
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids)).abs().max() < 1e-5

def test_fan_in_fan_out_on_these_layers_loads_like_peft(tmp_path):
    # PEFT sets fan_in_fan_out to False, with a warning, on an nn.Linear (tuners/lora/layer.py dispatch_default).
    peft = pytest.importorskip("peft")
    path, _ = peft_adapter(tmp_path, target_modules=["v_proj"])
    f = path / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "fan_in_fan_out": True}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(hf_twin(model()), path).eval()
    ours = load_lora(model().eval(), path)
    with torch.no_grad():
        assert (theirs(IDS[None, :16]).logits - ours(IDS[None, :16])).abs().max() < 1e-5

def test_a_repeated_target_module_loads_like_peft(tmp_path):
    # PEFT makes a set of target_modules; load_lora used to change the model and then fail with an AttributeError.
    path, theirs = peft_adapter(tmp_path, target_modules=["q_proj", "v_proj"])
    f = path / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "target_modules": ["q_proj", "v_proj", "q_proj"]}))
    ours = load_lora(model().eval(), path)
    with torch.no_grad():
        assert (theirs(IDS[None, :16]).logits - ours(IDS[None, :16])).abs().max() < 1e-5

def test_dropout_in_a_file_is_warned_about_and_eval_logits_are_peft_s(tmp_path):
    path, theirs = peft_adapter(tmp_path, target_modules=["q_proj"], lora_dropout=0.1)
    with pytest.warns(UserWarning, match="lora_dropout = 0.1 is not applied"):
        ours = load_lora(model().eval(), path)
    with torch.no_grad():
        assert (theirs(IDS[None, :16]).logits - ours(IDS[None, :16])).abs().max() < 1e-5

def test_missing_r_and_alpha_take_peft_s_defaults(tmp_path):
    path, theirs = peft_adapter(tmp_path, r=8, lora_alpha=8, target_modules=None)   # PEFT's targets for qwen3: q, v
    f = path / "adapter_config.json"
    d = json.loads(f.read_text()); del d["r"], d["lora_alpha"]; d["target_modules"] = None
    f.write_text(json.dumps(d))
    ours = load_lora(model().eval(), path)
    assert len(lora_layers(ours)) == 4
    with torch.no_grad():
        assert (theirs(IDS[None, :16]).logits - ours(IDS[None, :16])).abs().max() < 1e-5

def test_a_bfloat16_adapter_loads_onto_a_float32_model(tmp_path):
    m = add_lora(model(), targets=("q_proj",))
    with torch.no_grad():
        for layer in lora_layers(m).values(): layer.lora_B.weight.normal_(0, 0.05)
    save_lora(copy.deepcopy(m).to(torch.bfloat16), tmp_path)
    ours = load_lora(model().eval(), tmp_path)
    assert all(l.lora_A.weight.dtype == torch.float32 for l in lora_layers(ours).values())
    for name, l in lora_layers(ours).items():
        assert torch.equal(l.lora_B.weight, lora_layers(m)[name].lora_B.weight.bfloat16().float())

SAMPLE = dict(use_rslora=True, use_dora=True, lora_bias=True, rank_pattern={"q_proj": 2}, alpha_pattern={"q_proj": 2},
              modules_to_save=["lm_head"], layer_replication=[[0, 2]], megatron_config={"a": 1},
              alora_invocation_tokens=[5, 6], use_qalora=True, velora_config={"rank": 1}, monteclora_config={"n": 1},
              use_bdlora={"nblocks": 2}, arrow_config={"top_k": 1}, kasa_config={"beta": 1},
              target_parameters=["mlp.gate_proj.weight"], trainable_token_indices=[1, 2])

def edited(tmp_path, **edit):
    m = add_lora(model(), targets=("q_proj", "v_proj"))
    save_lora(m, tmp_path)
    f = tmp_path / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **edit}))
    return tmp_path

@pytest.mark.parametrize("key", sorted(LORA_VARIANTS))
def test_every_variant_peft_computes_differently_is_refused_by_name(tmp_path, key):
    # peft/tuners/lora/config.py: each of these makes PEFT compute something plain LoRA does not (for aLoRA: the
    # adapter applied only from the invocation tokens on); loaded without a word, the logits would differ from PEFT's.
    assert set(SAMPLE) == set(LORA_VARIANTS)
    m = model(); snap = snapshot(m)
    with pytest.raises(ValueError, match=rf"{key} = .* is a LoRA variant this library does not compute"):
        load_lora(m, edited(tmp_path, **{key: SAMPLE[key]}))
    assert unchanged(m, snap)

def test_activated_lora_from_peft_is_refused_by_name(tmp_path):
    path, _ = peft_adapter(tmp_path, target_modules=["q_proj"], alora_invocation_tokens=[5, 6])
    with pytest.raises(ValueError, match="alora_invocation_tokens = \\[5, 6\\] .*activated LoRA"):
        load_lora(model(), path)

@pytest.mark.parametrize("edit, err, match", [
    (dict(init_lora_weights="pissa"), ValueError, "init_lora_weights = 'pissa'"),
    (dict(init_lora_weights="olora"), ValueError, "changes the base weights"),
    (dict(init_lora_weights="mica"), ValueError, "freezes lora_B"),
    (dict(some_future_setting=True), ValueError, "unknown key some_future_setting"),
    (dict(r=0), ValueError, "r must"), (dict(r=2.5), ValueError, "r must"), (dict(lora_alpha=-16), ValueError, "alpha"),
    (dict(lora_alpha="16"), ValueError, "alpha"), (dict(lora_dropout=1.5), ValueError, "lora_dropout"),
    (dict(bias="some"), ValueError, "bias must be"), (dict(target_modules=["lm_head"]), ValueError, "not a projection"),
    (dict(target_modules=["c_attn"]), ValueError, "matches no projection"), (dict(target_modules=[]), ValueError, "targets must be"),
    (dict(target_modules=r"q_proj"), ValueError, "regular expression"), (dict(target_modules=5), ValueError, "target_modules"),
    (dict(exclude_modules=["q_proj", "v_proj"]), ValueError, "matches no projection"),
    (dict(layers_to_transform=[7]), ValueError, "matches no projection"), (dict(layers_to_transform="0"), ValueError, "layers_to")])
def test_load_lora_refusals_leave_the_model_as_it_was(tmp_path, edit, err, match):
    m = model(); snap = snapshot(m)
    with pytest.raises(err, match=match):
        load_lora(m, edited(tmp_path, **edit))
    assert unchanged(m, snap)

def test_init_variants_that_only_choose_starting_values_load(tmp_path):
    for init in (True, False, "gaussian", "orthogonal", "eva"):
        load_lora(model(), edited(tmp_path, init_lora_weights=init))

@pytest.mark.parametrize("bad, match", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"),
                                        ("int", "not floating-point")])
def test_corrupt_adapter_weights_are_refused_before_the_model_changes(tmp_path, bad, match):
    from safetensors.torch import load_file, save_file
    m = add_lora(model(), targets=("q_proj",)); save_lora(m, tmp_path)
    f = tmp_path / "adapter_model.safetensors"
    t = load_file(f)
    k = next(iter(t))
    t[k] = t[k].to(torch.int32) if bad == "int" else t[k].index_fill(0, torch.tensor([0]), bad)
    save_file(t, f)
    fresh = model(); snap = snapshot(fresh)
    with pytest.raises(ValueError, match=match):
        load_lora(fresh, tmp_path)
    assert unchanged(fresh, snap)

def test_an_adapter_on_one_layer_round_trips(tmp_path):
    m = add_lora(model(), targets=("model.layers.0.self_attn.q_proj",))
    save_lora(m, tmp_path)
    assert list(lora_layers(load_lora(model(), tmp_path))) == ["model.layers.0.self_attn.q_proj"]
