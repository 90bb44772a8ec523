"""Chapters 12 (qwen3_lib.train) and 13 (qwen3_lib.lora) and their checks in appendix A1: loss and gradients against transformers, the schedule,
training that learns, the loop's evaluation, gradient accumulation and resumable checkpoint, the cached trained model,
memory arithmetic against measurement (float32 and bfloat16), LoRA (merge, PEFT's format, PEFT itself)."""
import copy, json, math
import pytest, torch, torch.nn.functional as F
from conftest import hf_twin, randomize_norms
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, save_pretrained, ContextLengthError, CheckpointError
from qwen3_lib.batching import left_pad
from qwen3_lib.train import (IGNORE_INDEX, lm_loss, mask_labels, lr_at, random_windows, train, evaluate, training_bytes,
                             CompactVocab, stdlib_corpus, measured_training_bytes, activation_values)
from qwen3_lib.lora import LoRALinear, LORA_TARGETS, add_lora, merge_lora, lora_layers, save_lora, load_lora

MID = Qwen3Config.tiny(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=32)

def parity(cfg, rows, prompt=2):
    torch.manual_seed(0)
    ours = Qwen3ForCausalLM(cfg)
    randomize_norms(ours)
    ref = hf_twin(ours).train()
    ids, mask = left_pad(rows, pad_token_id=0)
    labels = mask_labels(ids, mask, prompt_lengths=[prompt] * len(rows))
    loss = lm_loss(ours(ids, attention_mask=mask), labels)
    ref_loss = ref(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0), labels=labels).loss
    loss.backward(); ref_loss.backward()
    theirs = dict(ref.named_parameters())
    assert set(theirs) == {n for n, _ in ours.named_parameters()}
    rel = {n: ((p.grad - theirs[n].grad).abs().max() / theirs[n].grad.abs().max()).item() for n, p in ours.named_parameters()}
    return abs(loss.item() - ref_loss.item()), rel

@pytest.mark.parametrize("cfg", [Qwen3Config.tiny(), MID], ids=["tiny", "mid"])
def test_loss_and_every_gradient_equal_transformers(cfg):
    torch.manual_seed(1)
    rows = [torch.randint(0, cfg.vocab_size, (n,)).tolist() for n in (24, 17, 9)]
    loss_diff, rel = parity(cfg, rows)
    assert loss_diff < 1e-5
    assert max(rel.values()) < 1e-5, max(rel.items(), key=lambda kv: kv[1])
    assert "model.embed_tokens.weight" in rel          # the tied matrix: lookup and head both feed its gradient

def test_loss_is_plain_cross_entropy_over_shifted_labels():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    labels = ids.clone(); labels[0, 3] = IGNORE_INDEX
    keep = [(b, t) for b in range(2) for t in range(4) if labels[b, t + 1] != IGNORE_INDEX]
    by_hand = -sum(F.log_softmax(logits[b, t], -1)[labels[b, t + 1]] for b, t in keep) / len(keep)
    assert torch.allclose(lm_loss(logits, labels), by_hand, atol=1e-6)
    assert lm_loss(logits.bfloat16(), labels).dtype == torch.float32

def test_fresh_model_loss_is_near_ln_vocab():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=151_936))
    ids = torch.randint(0, 151_643, (2, 32))
    with torch.no_grad():
        assert abs(lm_loss(m(ids), ids).item() - math.log(151_936)) < 0.05

def test_mask_labels_drops_padding_and_prompts():
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]], pad_token_id=0)
    labels = mask_labels(ids, mask, prompt_lengths=[1, 1])
    assert labels.tolist() == [[-100, 6, 7, 8], [-100, -100, -100, 10]]
    assert torch.equal(mask_labels(ids), ids)
    assert mask_labels(ids, mask, prompt_lengths=torch.tensor([0, 2])).tolist() == [[5, 6, 7, 8], [-100, -100, -100, -100]]

@pytest.mark.parametrize("bad", [dict(attention_mask=torch.ones(3, 4)), dict(prompt_lengths=[1]),
                                 dict(prompt_lengths=[1, -1]), dict(prompt_lengths=[1.5, 1]), dict(prompt_lengths="12")])
def test_mask_labels_refuses(bad):
    with pytest.raises(ValueError):
        mask_labels(torch.zeros(2, 4, dtype=torch.long), **bad)

def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1) and lr_at(500, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(0, 1, 2.0, 0) == pytest.approx(2.0)

def test_random_windows_are_consecutive_slices():
    ids = torch.arange(1000)
    w = random_windows(ids, 6, 16, torch.Generator().manual_seed(3))
    assert w.shape == (6, 17) and torch.equal(w - w[:, :1], torch.arange(17).expand(6, 17))
    assert torch.equal(w, random_windows(ids, 6, 16, torch.Generator().manual_seed(3)))

def test_training_learns_a_repeating_sequence_and_is_reproducible():
    torch.set_num_threads(1)
    ids = torch.arange(40).repeat(50)                                # 0, 1, ..., 39, 0, 1, ...: fully predictable
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=64))
        losses = train(m, ids, 60, batch_size=8, seq_len=32, lr=1e-2, warmup=5, progress=False)
        runs.append(losses)
    assert runs[0] == runs[1]
    assert losses[0] > 3.5 and losses[-1] < 0.5 and evaluate(m, ids, 32) < 0.5
    assert not m.training

def test_train_trains_only_what_requires_grad_and_calls_back():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny())
    m.requires_grad_(False); m.model.norm.weight.requires_grad_(True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seen = []
    train(m, torch.randint(0, 1000, (300,)), 3, batch_size=2, seq_len=16, callback=lambda s, l: seen.append((s, len(l))),
          progress=False)
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["model.norm.weight"] and seen == [(0, 1), (1, 2), (2, 3)]

@pytest.mark.parametrize("kw, err", [(dict(ids=torch.randint(0, 1000, (300,)).float()), TypeError),   # as the model's forward
                                     (dict(ids=torch.full((300,), 1000)), ValueError),
                                     (dict(ids=torch.full((300,), -1)), ValueError),
                                     (dict(ids=torch.randint(0, 1000, (2, 300))), ValueError),
                                     (dict(steps=0), ValueError), (dict(steps=True), ValueError),
                                     (dict(batch_size=2.0), ValueError), (dict(seq_len=300), ValueError),
                                     (dict(seq_len=50_000), ContextLengthError), (dict(lr=0.0), ValueError),
                                     (dict(lr=float("inf")), ValueError), (dict(lr="3e-3"), ValueError),
                                     (dict(warmup=-1), ValueError)])
def test_train_refuses_bad_arguments_before_any_step(kw, err):
    m = Qwen3ForCausalLM(Qwen3Config.tiny())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    args = dict(ids=torch.randint(0, 1000, (300,)), steps=2, batch_size=2, seq_len=16)
    with pytest.raises(err):
        train(m, **{**args, **kw}, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())

def test_train_refuses_a_frozen_model():
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(m, torch.randint(0, 1000, (300,)), 1, progress=False)

def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = Qwen3ForCausalLM(Qwen3Config.tiny())
    b = copy.deepcopy(a); b.model.gradient_checkpointing = True
    ids = torch.randint(0, 1000, (2, 24))
    for m in (a, b):
        m.train(); lm_loss(m(ids), ids).backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), n
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))                     # inference never checkpoints

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_arithmetic_equals_measurement(checkpointing, dtype):
    torch.manual_seed(0)
    cfg = Qwen3Config.tiny(vocab_size=512, num_hidden_layers=3)
    m = Qwen3ForCausalLM(cfg).to(dtype)
    m.model.gradient_checkpointing = checkpointing
    ids = torch.randint(0, 512, (3, 20))
    assert measured_training_bytes(m, ids) == training_bytes(cfg, ids.numel(), dtype, checkpointing=checkpointing, rows=3)

def test_bfloat16_activations_keep_the_norms_and_attention_statistics_in_float32():
    cfg = Qwen3Config()
    a, ckpt = activation_values(cfg), activation_values(cfg, checkpointing=True)
    d, q, k, f = 1024, 2048, 1024, 3072
    assert a["model"] + a["float32"] == 6 * d + 2 + 4 * q + 4 * k + 2 * 16 + 8 + 4 * f     # every value, once
    assert a["float32"] == 2 * (d + 1) + (q + 16) + (k + 8) + 16 and ckpt == dict(model=d, float32=0)
    f32, b16 = training_bytes(cfg, 4096), training_bytes(cfg, 4096, torch.bfloat16)
    assert 0.5 * f32["activations"] < b16["activations"] < 0.7 * f32["activations"]    # above half: float32 stays

def test_memory_arithmetic_for_lora_and_mixed_precision():
    cfg = Qwen3Config()
    n = 596_049_920
    full = training_bytes(cfg, 0, torch.bfloat16, master=True)
    assert full["weights"] == 6 * n and full["gradients"] == 2 * n and full["optimizer"] == 8 * n
    plain = training_bytes(cfg, 0, torch.bfloat16)                    # PyTorch's AdamW on bfloat16 weights
    assert plain["weights"] == 2 * n and plain["optimizer"] == 4 * n
    lora = training_bytes(cfg, 0, torch.bfloat16, trainable=1000)
    assert lora["weights"] == 2 * n and lora["gradients"] == 2000 and lora["optimizer"] == 4000
    one = training_bytes(cfg, 1, rows=0)["activations"]
    assert 3.9e6 < one < 4.2e6                                 # about 4 MB a token in float32
    assert training_bytes(cfg, 1, rows=0, checkpointing=True)["activations"] < one / 5

def test_lora_memory_arithmetic_equals_measurement():
    torch.manual_seed(0)
    cfg = Qwen3Config.tiny(vocab_size=512)
    m = add_lora(Qwen3ForCausalLM(cfg), r=4, targets=("q_proj", "v_proj"))
    trained = sum(p.numel() for p in m.parameters() if p.requires_grad)
    ids = torch.randint(0, 512, (2, 16))
    measured = measured_training_bytes(m, ids)
    arithmetic = training_bytes(cfg, ids.numel(), trainable=trained, adapter_values=8, rows=2)
    assert measured["gradients"] == arithmetic["gradients"] and measured["optimizer"] == arithmetic["optimizer"]
    assert 0.5 * arithmetic["activations"] < measured["activations"] <= arithmetic["activations"]   # an upper bound
    assert measured["weights"] == arithmetic["weights"] + 4 * trained   # the adapters are weights too

def test_compact_vocab_round_trip_and_refusal():
    v = CompactVocab(torch.tensor([500, 7, 151_000, 7, 42]))
    assert v.table.tolist() == [7, 42, 500, 151_000] and v.size == 64
    assert v.encode([42, 151_000]).tolist() == [1, 3] and v.decode([1, 3]).tolist() == [42, 151_000]
    with pytest.raises(ValueError, match="not in this vocabulary"):
        v.encode([8])
    with pytest.raises(ValueError, match="not in this vocabulary"):
        v.encode([200_000])

def test_stdlib_corpus_is_the_files_and_their_hash():
    import hashlib
    text, sha = stdlib_corpus(("colorsys.py",))
    assert "def rgb_to_hsv" in text and sha == hashlib.sha256(text.encode()).hexdigest()

def lora_model(targets=("q_proj", "v_proj"), r=4, seed=0):
    torch.manual_seed(seed)
    m = add_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), r=r, alpha=8, targets=targets)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.weight.normal_(0, 0.05)              # as if trained: B away from zero
    return m.eval()

def test_lora_counts_starts_equal_and_freezes_the_rest():
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    m = add_lora(copy.deepcopy(base), r=4, targets=LORA_TARGETS)
    c = base.cfg
    q, kv, d, f = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size, c.intermediate_size
    per_layer = 4 * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))
    trained = [n for n, p in m.named_parameters() if p.requires_grad]
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == c.num_hidden_layers * per_layer
    assert all(".lora_A." in n or ".lora_B." in n for n in trained)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        assert torch.equal(m(ids), base(ids))
    assert set(m.state_dict()) >= {"model.layers.0.self_attn.q_proj.base_layer.weight",
                                   "model.layers.0.mlp.down_proj.lora_B.weight"}

def test_lora_forward_is_the_low_rank_update():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 24, bias=False)
    layer = LoRALinear(base, r=3, alpha=6)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 16)
    expected = x @ (base.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight).T
    assert torch.allclose(layer(x), expected, atol=1e-5)

def test_merge_unmerge_and_merge_lora():
    m = lora_model()
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        ref = m(ids)
        w = m.model.layers[1].self_attn.v_proj.base_layer.weight.clone()
        for layer in lora_layers(m).values(): layer.merge(); layer.merge()        # twice: merged once
        assert (m(ids) - ref).abs().max() < 1e-5
        for layer in lora_layers(m).values(): layer.unmerge(); layer.unmerge()
        assert torch.allclose(m.model.layers[1].self_attn.v_proj.base_layer.weight, w, atol=1e-7)
        plain = merge_lora(copy.deepcopy(m))
        assert not lora_layers(plain) and type(plain.model.layers[0].self_attn.q_proj).__name__ == "Linear"
        assert (plain(ids) - ref).abs().max() < 1e-5
        assert set(plain.state_dict()) == set(Qwen3ForCausalLM(Qwen3Config.tiny(), device="meta").state_dict())

def test_lora_trains_only_adapters():
    m = lora_model()
    frozen = {k: v.clone() for k, v in m.state_dict().items() if "lora_" not in k}
    train(m, torch.randint(0, 1000, (400,)), 3, batch_size=2, seq_len=16, progress=False)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in frozen.items())

@pytest.mark.parametrize("kw, match", [(dict(r=0), "r must"), (dict(r=2.0), "r must"), (dict(r=65), "exceeds"),
                                       (dict(alpha=0), "alpha"), (dict(alpha=float("nan")), "alpha"),
                                       (dict(targets="q_proj"), "regular expression"),
                                       (dict(targets=()), "targets must be projection names"),
                                       (dict(targets=("qproj",)), "unknown LoRA target")])
def test_add_lora_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        add_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), **kw)

def test_add_lora_twice_is_refused():
    m = lora_model()
    with pytest.raises(ValueError, match="already has"):
        add_lora(m)

def test_save_lora_writes_peft_format_and_load_lora_reads_it(tmp_path):
    m = lora_model(targets=("q_proj", "k_proj", "down_proj"))
    save_lora(m, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["target_modules"] == ["down_proj", "k_proj", "q_proj"]
    from safetensors.torch import load_file
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys and len(keys) == 2 * 3 * 2
    torch.manual_seed(0)
    again = load_lora(Qwen3ForCausalLM(Qwen3Config.tiny()).eval(), tmp_path / "adapter")
    ids = torch.randint(0, 1000, (1, 10))
    with torch.no_grad():
        assert torch.equal(again(ids), m(ids))

def test_peft_loads_our_adapter_onto_transformers_qwen3(tmp_path):
    peft = pytest.importorskip("peft")
    import transformers
    m = lora_model(targets=LORA_TARGETS)
    base = merge_lora(copy.deepcopy(m))
    plain = copy.deepcopy(m)
    for name, layer in lora_layers(plain).items():                 # the base model: adapters removed unmerged
        parent, child = name.rsplit(".", 1)
        setattr(plain.get_submodule(parent), child, layer.base_layer)
    save_pretrained(plain, tmp_path / "base")
    save_lora(m, tmp_path / "adapter")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    theirs = peft.PeftModel.from_pretrained(ref, tmp_path / "adapter").eval()
    ids = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        ours = m(ids)
        assert (theirs(ids).logits - ours).abs().max() < 1e-5
        assert (theirs.merge_and_unload()(ids).logits - base(ids)).abs().max() < 1e-5

@pytest.mark.parametrize("edit, match", [({"use_dora": True}, "use_dora"), ({"use_rslora": True}, "use_rslora"),
                                         ({"bias": "some"}, "bias"), ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
                                         ({"peft_type": "IA3"}, "not a LoRA"), ({"target_modules": "q_proj"}, "regular expression"),
                                         ({"r": None}, "r must")])
def test_load_lora_refuses_what_it_does_not_compute(tmp_path, edit, match):
    save_lora(lora_model(), tmp_path)
    f = tmp_path / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **edit}))
    with pytest.raises(ValueError, match=match):
        load_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), tmp_path)

def test_load_lora_names_a_missing_or_misshapen_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), tmp_path)
    save_lora(lora_model(r=4), tmp_path)
    f = tmp_path / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "r": 2}))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), tmp_path)

def test_save_lora_without_adapters_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_lora(Qwen3ForCausalLM(Qwen3Config.tiny()), tmp_path)

# The training loop (chapter 12): evaluation, gradient accumulation, a checkpoint to resume from

SEQ = torch.arange(40).repeat(50)                                # 0, 1, ..., 39, 0, 1, ...

def toy_run(steps=3, seed=0, **kw):
    "A fresh tiny model (seed) trained on SEQ -> (its TrainLog, the model)."
    torch.manual_seed(seed)
    m = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=64))
    args = dict(batch_size=8, seq_len=32, lr=1e-2, warmup=2, progress=False)
    return train(m, SEQ, steps, **{**args, **kw}), m

def weights_equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

@pytest.mark.parametrize("accumulate", [2, 8])
def test_gradient_accumulation_is_the_larger_batch(accumulate):
    (big, a), (micro, b) = toy_run(), toy_run(accumulate=accumulate)
    assert len(big) == len(micro) == 3
    assert max(abs(x - y) for x, y in zip(big, micro)) < 1e-5                    # the same loss ...
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-5   # ... and step
    (_, c) = toy_run(batch_size=2)                                               # a smaller batch is another step
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), c.parameters())) > 1e-3

def test_eval_ids_are_evaluated_before_the_first_step_every_n_steps_and_after_the_last():
    log, m = toy_run(12, eval_ids={"head": SEQ[:400], "tail": SEQ[-400:]}, eval_every=5)
    assert list(log.evals) == ["head", "tail"]
    assert [s for s, _ in log.evals["tail"]] == [0, 5, 10, 12]
    assert log.evals["tail"][-1][1] == evaluate(m, SEQ[-400:], 32, 8)            # the model as it ended
    assert log.evals["tail"][0][1] > log.evals["tail"][-1][1] + 1
    plain, m2 = toy_run(12)
    assert plain == log and weights_equal(m, m2) and plain.evals == {}          # evaluating changes no step

class Stop(Exception):
    "Raised by a callback: a run killed after some step."

def stop_after(k):
    def callback(step, log):
        if step + 1 == k: raise Stop
    return callback

@pytest.mark.parametrize("stop", [5, 8])          # between two checkpoints (steps 4 and 5 are done again); at the end
def test_a_resumed_run_ends_equal_to_the_uninterrupted_run(tmp_path, stop):
    evals = dict(eval_ids={"tail": SEQ[-400:]}, eval_every=2)
    whole, m_whole = toy_run(8, **evals)
    with pytest.raises(Stop):
        toy_run(8, checkpoint=tmp_path, checkpoint_every=3, callback=stop_after(stop), **evals)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["step"] == {5: 3, 8: 8}[stop] and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ("trained.safetensors", "optimizer.safetensors", "trainer_state.json"))
    resumed, m_resumed = toy_run(8, seed=1, checkpoint=tmp_path, checkpoint_every=3, resume=True, **evals)
    assert weights_equal(m_whole, m_resumed)                  # seed 1's weights were all replaced
    assert resumed == whole and resumed.evals == whole.evals

def test_a_checkpoint_holds_adamw_state_and_no_pickle(tmp_path):
    from safetensors.torch import load_file
    log, m = toy_run(2, checkpoint=tmp_path)
    moments = load_file(tmp_path / "optimizer.safetensors")
    names = [n for n, _ in m.named_parameters()]
    assert set(moments) == {f"{n}.{k}" for n in names for k in ("exp_avg", "exp_avg_sq", "step")}
    assert moments[f"{names[0]}.step"].item() == 2.0
    assert set(load_file(tmp_path / "trained.safetensors")) == set(names)
    assert all(f.read_bytes()[:2] != b"\x80\x02" for f in tmp_path.iterdir())    # no pickle protocol header

def damage(d, what):
    if what == "json": (d / "trainer_state.json").write_text("{")
    elif what == "truncated": f = d / "optimizer.safetensors"; f.write_bytes(f.read_bytes()[:100])
    elif what == "missing": (d / "trained.safetensors").unlink()
    elif what == "two saves":
        other = d.parent / "other"; toy_run(2, lr=2e-2, checkpoint=other)
        (d / "optimizer.safetensors").write_bytes((other / "optimizer.safetensors").read_bytes())

@pytest.mark.parametrize("what, match", [("json", "trainer_state.json"), ("truncated", "optimizer.safetensors"),
                                         ("missing", "trained.safetensors"), ("two saves", "different saves")])
def test_resume_refuses_a_damaged_checkpoint_naming_the_file(tmp_path, what, match):
    d = tmp_path / "run"
    toy_run(2, checkpoint=d)
    damage(d, what)
    torch.manual_seed(5)
    m = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=64))
    before = copy.deepcopy(m)
    with pytest.raises(CheckpointError, match=match):
        train(m, SEQ, 3, batch_size=8, seq_len=32, lr=1e-2, warmup=2, progress=False, checkpoint=d, resume=True)
    assert weights_equal(m, before)

@pytest.mark.parametrize("kw, match", [(dict(lr=2e-2), "lr = 0.01"), (dict(steps=4), "steps"),
                                       (dict(ids=SEQ.flip(0)), "SHA-256"),
                                       (dict(model=Qwen3Config.tiny(vocab_size=64, intermediate_size=96)), "trained.safetensors")])
def test_resume_refuses_another_runs_checkpoint(tmp_path, kw, match):
    toy_run(2, checkpoint=tmp_path)
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(kw.pop("model", Qwen3Config.tiny(vocab_size=64)))
    args = dict(ids=SEQ, steps=2, batch_size=8, seq_len=32, lr=1e-2, warmup=2, progress=False)
    with pytest.raises(CheckpointError, match=match):
        train(m, **{**args, **kw}, checkpoint=tmp_path, resume=True)

def test_resume_without_a_checkpoint_says_how_to_start_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="without resume=True"):
        toy_run(2, checkpoint=tmp_path / "none", resume=True)

@pytest.mark.parametrize("kw, err", [(dict(accumulate=3), ValueError), (dict(accumulate=0), ValueError),
                                     (dict(eval_every=5), ValueError), (dict(eval_every=0, eval_ids={"a": SEQ}), ValueError),
                                     (dict(eval_ids=[SEQ]), TypeError), (dict(eval_ids={"a": SEQ + 100}), ValueError),
                                     (dict(eval_ids={"a": SEQ[:10]}), ValueError), (dict(resume=True), ValueError),
                                     (dict(checkpoint_every=2), ValueError), (dict(resume="yes", checkpoint="x"), ValueError)])
def test_train_refuses_bad_loop_arguments_before_any_step(kw, err):
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny(vocab_size=64))
    before = copy.deepcopy(m)
    with pytest.raises(err):
        train(m, SEQ, 2, batch_size=8, seq_len=32, progress=False, **kw)
    assert weights_equal(m, before)

# The corpus's three splits and the book's trained tiny model (chapter 12)

def test_stdlib_splits_hold_out_every_tenth_block_of_the_training_files_and_the_other_files_whole(tok):
    from qwen3_lib.train import stdlib_splits
    files = ("colorsys.py", "bisect.py", "glob.py")
    s = stdlib_splits(tok, files, other=("glob.py",), block=50)
    whole = {f: stdlib_splits(tok, (f,), other=(f,))["other"] for f in files}     # each file, tokenized alone
    blocks = [(i // 50 % 10 == 9, whole[f][i:i + 50]) for f in files[:2] for i in range(0, len(whole[f]), 50)]
    assert torch.equal(s["other"], whole["glob.py"])
    assert torch.equal(s["within"], torch.cat([b for held, b in blocks if held]))
    assert torch.equal(s["train"], torch.cat([b for held, b in blocks if not held]))
    assert 0.05 < len(s["within"]) / (len(s["within"]) + len(s["train"])) < 0.1     # a tenth of whole blocks
    assert all(v.dtype == torch.long for v in stdlib_splits(tok, ("bisect.py",), other=()).values())   # 'other' empty

@pytest.fixture
def tiny_schedule(monkeypatch, tmp_path):
    "A schedule of two steps and a counter of trainings, for tiny_python with its cache in tmp_path."
    import qwen3_lib.train as T
    monkeypatch.setitem(T.SCHEDULES, "test", dict(steps=2, batch_size=2, seq_len=16, eval_every=None))
    trained = []
    real = T.train_tiny_python
    monkeypatch.setattr(T, "train_tiny_python", lambda *a, **k: trained.append(1) or real(*a, **k))
    monkeypatch.setenv("QWEN3_CACHE", str(tmp_path / "cache"))
    return T, trained

def test_tiny_python_trains_once_for_callers_at_once_then_reads_the_cache(tiny_schedule, tmp_path):
    import threading
    T, trained = tiny_schedule
    got = []
    callers = [threading.Thread(target=lambda: got.append(T.tiny_python("test", progress=False))) for _ in range(2)]
    for c in callers: c.start()
    for c in callers: c.join()
    assert len(trained) == 1 and len(got) == 2                    # the second caller waited, then read the entry
    (a, vocab_a), (b, vocab_b) = got
    assert weights_equal(a, b) and torch.equal(vocab_a.table, vocab_b.table) and not a.training
    entry = tmp_path / "cache" / "tiny-python-test"
    assert {p.name for p in entry.iterdir()} == {"config.json", "model.safetensors", "vocab.json", "training.json"}
    again, _ = T.tiny_python("test", progress=False)
    assert len(trained) == 1 and weights_equal(again, a)
    fresh = T.tiny_python_model(vocab_a.size)                   # the recipe trained it: it moved from its start
    assert not weights_equal(fresh, a) and vocab_a.size == a.cfg.vocab_size

def test_tiny_python_is_the_recipe_and_retrains_for_another(tiny_schedule, tmp_path):
    T, trained = tiny_schedule
    rng = torch.get_rng_state()
    model, vocab = T.tiny_python("test", progress=False)
    assert torch.equal(torch.get_rng_state(), rng)               # the caller's random state is left as it was
    tok = T.Qwen3Tokenizer()
    v, splits = T.compact_splits(tok, T.stdlib_splits(tok, block=17))          # a block: one window
    by_hand = T.tiny_python_model(v.size)
    T.train(by_hand, splits["train"], 2, 2, 16, lr=3e-3, warmup=20, progress=False)
    assert weights_equal(by_hand, model) and torch.equal(v.table, vocab.table)
    T.SCHEDULES["test"]["steps"] = 3                              # another recipe: the entry is trained again
    T.tiny_python("test", progress=False)
    assert len(trained) == 2
    (tmp_path / "cache" / "tiny-python-test" / "model.safetensors").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="training it again"):
        T.tiny_python("test", progress=False)
    assert len(trained) == 3
    with pytest.raises(ValueError, match="schedule must be one of"):
        T.tiny_python("fast")

def test_cache_tiny_python_keeps_what_tiny_python_returns(tiny_schedule, tmp_path):
    T, trained = tiny_schedule
    model, vocab = T.tiny_python("test", progress=False)
    model.model.norm.weight.data += 1                              # as if trained otherwise: kept, then read back
    T.cache_tiny_python(model, vocab, T.TrainLog([1.0, 0.5]), "test")
    again, _ = T.tiny_python("test", progress=False)
    assert len(trained) == 1 and weights_equal(again, model)
    assert json.loads((tmp_path / "cache" / "tiny-python-test" / "training.json").read_text())["losses"] == [1.0, 0.5]
