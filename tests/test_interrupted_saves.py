"""A checkpoint folder is exactly one save, or refused (appendix A2): saves killed with SIGKILL before each of their
file operations, two processes saving into one folder at once, the mark that tells one save from a mix, and the
clean-up that must never hide the error a failed save raises."""
import dataclasses, errno, json, os, shutil, signal
from pathlib import Path
from unittest import mock
import pytest, torch, transformers
import qwen3_lib.checkpoint as C
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
from qwen3_lib.errors import CheckpointError
from qwen3_lib.weights import load_pretrained, save_pretrained

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill and race tests fork")
IDS = torch.tensor([[1, 5, 900, 42, 7, 0, 999]])
FILE_OPS = ("replace", "link", "unlink", "fsync", "chmod", "rename", "truncate")

@pytest.fixture(scope="module")
def two():
    "Two models of equal shapes whose configs differ (rope_theta): a mix of one's weights and the other's config"
    "loads without a shape error and computes neither."
    cfg = Qwen3Config.tiny()
    torch.manual_seed(1); a = Qwen3ForCausalLM(cfg).eval()
    torch.manual_seed(2); b = Qwen3ForCausalLM(dataclasses.replace(cfg, rope_theta=cfg.rope_theta / 4)).eval()
    with torch.no_grad():
        return {"A": (a, a(IDS)), "B": (b, b(IDS))}

def what_loads(d: Path, refs, load=lambda d: load_pretrained(d, progress=False), word="save again") -> str:
    "What folder d loads as: the name of the reference whose logits it computes, 'refused' (interrupted), or 'MIX'."
    try:
        m = load(d)
    except CheckpointError as e:
        assert "interrupted" in str(e) and word in str(e), e
        return "refused"
    with torch.no_grad():
        y = m(IDS)
    return next((k for k, (_, ref) in refs.items() if torch.equal(y, ref)), "MIX")

def in_child(fn, die_at: int = 0) -> bool:
    """Run fn() in a forked child; with die_at=k, the child SIGKILLs itself just before its k-th file operation.
    True if the child was killed."""
    pid = os.fork()
    if pid == 0:
        try:
            count = [0]
            def wrap(real):
                def op(*a, **kw):
                    count[0] += 1
                    if count[0] == die_at: os.kill(os.getpid(), signal.SIGKILL)
                    return real(*a, **kw)
                return op
            with mock.patch.multiple(os, **{n: wrap(getattr(os, n)) for n in FILE_OPS}):
                fn()
        finally:
            os._exit(0)
    return os.WIFSIGNALED(os.waitpid(pid, 0)[1])

@pytest.mark.parametrize("old_layout", ["ours", "transformers"])
def test_a_save_killed_before_any_file_operation_loads_as_old_new_or_refused(tmp_path, two, old_layout):
    d = tmp_path / "ckpt"
    a, b = two["A"][0], two["B"][0]
    def save_old():
        if old_layout == "ours":
            save_pretrained(a, d)
        else:                                             # a checkpoint with no mark of ours (Hub, transformers)
            hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**a.cfg.to_hf()))
            hf.load_state_dict(a.state_dict(), strict=False); hf.save_pretrained(d)
    outcomes, k = [], 1
    while True:
        shutil.rmtree(d, ignore_errors=True); save_old()
        if not in_child(lambda: save_pretrained(b, d), die_at=k):
            break
        outcomes.append(what_loads(d, two)); k += 1
    assert what_loads(d, two) == "B"                       # the save that was not killed
    assert "MIX" not in outcomes, outcomes
    # the experiment is not empty: it killed the save before it began, after it was done, and in between, where
    # the folder held parts of two saves and was refused
    assert outcomes[0] == "A" and outcomes[-1] == "B" and "refused" in outcomes, outcomes
    save_pretrained(b, d)                                  # the next save clears what the killed ones left
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []

def test_two_processes_saving_into_one_folder_leave_one_whole_save(tmp_path, two):
    d = tmp_path / "race"
    for _ in range(8):
        pids = []
        for name in ("A", "B"):
            pid = os.fork()
            if pid == 0:
                try: save_pretrained(two[name][0], d)
                finally: os._exit(0)
            pids.append(pid)
        assert all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids)
        assert what_loads(d, two) in ("A", "B")

def test_the_lock_makes_a_second_saver_wait(tmp_path, two):
    "While one save holds the folder, another process's save does not start: it finishes only after release."
    import select
    d = tmp_path / "locked"; save_pretrained(two["A"][0], d)
    go_r, go_w = os.pipe(); done_r, done_w = os.pipe()
    pid = os.fork()                        # before the lock is taken: a child forked while it is held would share it
    if pid == 0:
        try:
            os.read(go_r, 1); save_pretrained(two["B"][0], d); os.write(done_w, b"done")
        finally: os._exit(0)
    with C.one_writer(d):
        os.write(go_w, b"!")
        assert select.select([done_r], [], [], 1.0)[0] == []      # still waiting after a second
        assert what_loads(d, two) == "A"
    assert os.read(done_r, 4) == b"done"; os.waitpid(pid, 0)
    assert what_loads(d, two) == "B"

def test_interleaved_moves_without_the_lock_are_refused_not_loaded(tmp_path, two):
    "The worst interleaving of two unlocked saves, played in one process: B's weights, then A's config."
    d = tmp_path / "interleaved"
    save_pretrained(two["A"][0], d)
    save_pretrained(two["B"][0], tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", d / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors and config.json were written by different saves"):
        load_pretrained(d, progress=False)

def test_a_hand_edited_config_still_loads_and_foreign_weights_are_not_compared(tmp_path, two):
    d = tmp_path / "edited"
    save_pretrained(two["A"][0], d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg[C.SAVE_KEY]                                   # transformers keeps the key as a plain attribute
    assert getattr(transformers.AutoConfig.from_pretrained(d), C.SAVE_KEY) == cfg[C.SAVE_KEY]
    (d / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": 4096}))
    assert load_pretrained(d, progress=False).cfg.max_position_embeddings == 4096
    # transformers reads our folder, and its own save of it (weights without a mark) loads here
    hf = transformers.Qwen3ForCausalLM.from_pretrained(d)
    hf.save_pretrained(tmp_path / "resaved")
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "resaved", progress=False)(IDS),
                           load_pretrained(d, progress=False)(IDS))

def test_a_header_naming_a_file_outside_the_folder_is_refused(tmp_path, two):
    d = tmp_path / "evil"
    save_pretrained(two["A"][0], d)
    from safetensors.torch import load_file, save_file
    t = load_file(d / "model.safetensors")
    save_file(t, d / "model.safetensors", metadata={"format": "pt", C.SAVE_KEY: "x",
                                                    C.JSON_SUMS: json.dumps({"../../etc/passwd": "0"})})
    with pytest.raises(CheckpointError, match="not in the directory"):
        load_pretrained(d, progress=False)

def test_a_cleanup_that_fails_does_not_hide_the_error_of_the_save(tmp_path, two):
    "A full disk at the write, then a read-only filesystem for the clean-up: the full disk is what the caller sees."
    d = tmp_path / "ro"; save_pretrained(two["A"][0], d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    real_write, real_unlink = C._write_file, Path.unlink
    def full(f, name, *a):
        real_write(f, name, *a); raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    with mock.patch.object(C, "_write_file", full), mock.patch.object(Path, "unlink", read_only):
        with pytest.raises(OSError) as e:
            save_pretrained(two["B"][0], d)
    assert e.value.errno == errno.ENOSPC and "No space left" in str(e.value)
    assert {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith(".")} == before
    save_pretrained(two["B"][0], d)                          # the left temporary file is cleared next time
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]

def test_save_pretrained_refuses_unmerged_lora_adapters_before_touching_the_folder(tmp_path, two):
    from qwen3_lib.lora import add_lora, merge_lora
    d = tmp_path / "lora"; save_pretrained(two["A"][0], d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    m = Qwen3ForCausalLM(two["A"][0].cfg).eval(); m.load_state_dict(two["A"][0].state_dict())
    add_lora(m)
    with pytest.raises(TypeError, match=r"LoRA adapters that are not merged .* merge_lora\(model\)"):
        save_pretrained(m, d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    save_pretrained(merge_lora(m), d)                        # merged, it is a plain checkpoint again
    assert what_loads(d, two) == "A"                         # lora_B starts at zero: the merge changed nothing

# --- adapters: save_lora is the same save, with PEFT's strict adapter_config.json checked by digest ------------------
def lora_pair():
    "Two adapters of equal shapes whose configs differ only in lora_alpha: a mix loads without a shape error."
    from qwen3_lib.lora import add_lora
    cfg = Qwen3Config.tiny()
    torch.manual_seed(0); base = Qwen3ForCausalLM(cfg).eval()
    out = {}
    for name, alpha, seed in (("A", 16, 3), ("B", 4, 4)):
        m = Qwen3ForCausalLM(cfg).eval(); m.load_state_dict(base.state_dict())
        add_lora(m, r=4, alpha=alpha)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad: p.normal_(0, 0.2)
            out[name] = (m, m(IDS))
    return base, out

def test_an_adapter_save_killed_before_any_file_operation_loads_as_old_new_or_refused(tmp_path):
    from qwen3_lib.lora import load_lora, save_lora
    base, ab = lora_pair()
    d = tmp_path / "adapter"
    def on_base(d):
        m = Qwen3ForCausalLM(base.cfg).eval(); m.load_state_dict(base.state_dict())
        return load_lora(m, d)
    loads = lambda: what_loads(d, ab, on_base, word="lora_alpha")
    outcomes, k = [], 1
    while True:
        shutil.rmtree(d, ignore_errors=True); save_lora(ab["A"][0], d)
        if not in_child(lambda: save_lora(ab["B"][0], d), die_at=k):
            break
        outcomes.append(loads()); k += 1
    assert loads() == "B" and "MIX" not in outcomes, outcomes
    assert outcomes[0] == "A" and outcomes[-1] == "B" and "refused" in outcomes, outcomes

def test_an_adapter_config_edited_outside_the_checked_keys_still_loads_and_peft_reads_it_without_warning(tmp_path):
    import warnings
    from qwen3_lib.lora import load_lora, save_lora
    base, ab = lora_pair()
    save_lora(ab["A"][0], tmp_path)
    f = tmp_path / "adapter_config.json"
    assert C.SAVE_KEY not in json.loads(f.read_text())          # PEFT warns at keys it does not know
    f.write_text(json.dumps(json.loads(f.read_text()) | {"base_model_name_or_path": "Qwen/Qwen3-0.6B"}))
    m = Qwen3ForCausalLM(base.cfg).eval(); m.load_state_dict(base.state_dict())
    load_lora(m, tmp_path)
    from peft import LoraConfig
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LoraConfig.from_pretrained(tmp_path).r == 4
