"""Appendix A2's armour: saves that are all or nothing (issue 23, item 1), and a tied config whose file also holds
lm_head.weight, equal and unequal, loaded as transformers 5 loads it (issue 23, item 8)."""
import errno, hashlib, json, os, shutil, subprocess, sys, tempfile, textwrap, warnings
from pathlib import Path
from unittest import mock
import pytest, torch, transformers
from safetensors.torch import load_file, save_file
import qwen3_lib.checkpoint as C
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
from qwen3_lib.errors import CheckpointError
from qwen3_lib.weights import load_pretrained, save_pretrained
from conftest import max_diff

IDS = torch.tensor([[1, 5, 900, 42, 7, 0, 999], [3, 3, 3, 3, 3, 3, 3]])

def model(seed, **kw):
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config.tiny(**kw)).eval()

@pytest.fixture(scope="module")
def old_new():
    return model(1), model(2)

def fingerprint(d: Path) -> dict:
    "Every entry of d: a file's bytes (hashed), a directory as such; temporary files would show up here too."
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in d.iterdir()}

def assert_old(d: Path, before: dict, old):
    assert fingerprint(d) == before
    with torch.no_grad():
        assert torch.equal(load_pretrained(d, progress=False)(IDS), old(IDS))

def old_checkpoint(tmp_path, old, layout):
    "A directory holding `old`: as we save it (one file), or sharded as transformers saves it."
    d = tmp_path / layout
    if layout == "single":
        save_pretrained(old, d)
    else:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**old.cfg.to_hf()))
        hf.load_state_dict(old.state_dict(), strict=False)         # its tied head is the embedding
        hf.save_pretrained(d, max_shard_size="100KB")
    (d / "tokenizer.json").write_text("{}")                        # not ours: must survive every save
    return d

# --- a save interrupted at every step -------------------------------------------------------------
class Faults:
    "Counts the save's I/O steps (writes, fsyncs, links, moves) and makes step `fail_at` fail as a full disk does."
    def __init__(self, fail_at=0):
        self.fail_at, self.steps = fail_at, []
    def wrap(self, label, real, partial=False):
        def step(*args, **kw):
            self.steps.append(label)
            if len(self.steps) != self.fail_at:
                return real(*args, **kw)
            if partial:                                            # part of the file reached the disk, then ENOSPC
                real(*args, **kw); os.truncate(args[0], min(100, os.path.getsize(args[0])))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return step
    def patches(self):
        return [mock.patch.object(C, "_write_file", self.wrap("write", C._write_file, partial=True)),
                mock.patch.object(C, "_fsync", self.wrap("fsync", C._fsync)),
                mock.patch("os.link", self.wrap("link", os.link)),
                mock.patch("os.replace", self.wrap("replace", os.replace))]
    def save(self, m, d):
        ps = self.patches()
        for p in ps: p.start()
        try:
            return save_pretrained(m, d)
        finally:
            for p in reversed(ps): p.stop()

@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_a_save_interrupted_at_every_step_leaves_the_old_checkpoint(tmp_path, old_new, layout):
    old, new = old_new
    probe = old_checkpoint(tmp_path / "probe", old, layout)
    counting = Faults()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                            # a sharded checkpoint's removal is announced
        counting.save(new, probe)
    assert counting.steps.count("write") == 2 and counting.steps.count("replace") == 2, counting.steps
    for i, label in enumerate(counting.steps, 1):                  # fail at each step of the save in turn
        d = old_checkpoint(tmp_path / f"at{i}", old, layout)
        before = fingerprint(d)
        if label == "link":                                        # no hard link: the old file is copied aside
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Faults(fail_at=i).save(new, d)
            assert not [p for p in d.iterdir() if p.name.startswith(".")]
            with torch.no_grad():
                assert torch.equal(load_pretrained(d, progress=False)(IDS), new(IDS))
            continue
        with pytest.raises(OSError) as e:
            Faults(fail_at=i).save(new, d)
        assert e.value.errno == errno.ENOSPC and "unchanged" in str(e.value), (i, label, str(e.value))
        assert_old(d, before, old)

def test_a_directory_in_the_way(tmp_path, old_new):
    old, new = old_new
    d = old_checkpoint(tmp_path, old, "sharded")
    (d / "model.safetensors").mkdir()                               # the old sharded checkpoint still loads
    before = fingerprint(d)
    with pytest.raises(IsADirectoryError, match="could not replace model.safetensors.*is a directory.*unchanged"):
        save_pretrained(new, d)
    assert_old(d, before, old)
    d = old_checkpoint(tmp_path, old, "single")
    weights = (d / "model.safetensors").read_bytes()
    (d / "config.json").unlink(); (d / "config.json").mkdir()
    before = fingerprint(d)
    with pytest.raises(IsADirectoryError, match="could not replace config.json.*is a directory"):
        save_pretrained(new, d)
    assert fingerprint(d) == before and (d / "model.safetensors").read_bytes() == weights

def test_a_full_disk(tmp_path, old_new):
    "A real full disk where the test may mount a small tmpfs (root, outside a restricted container)."
    old, new = old_new
    disk = tmp_path / "disk"; disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here; the fault-injection test covers a full disk")
    try:
        d = save_pretrained(old, disk / "ckpt")
        need = sum(f.stat().st_size for f in d.iterdir())
        outcomes = []
        for room in (0, 4096, need // 2, need - 4096, need + 8 * 4096):   # free space: none ... enough for a save
            filler = disk / "filler"
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            with open(filler, "wb") as fh:
                fh.truncate(0)
                if free > room: fh.write(b"\0" * (free - room))
            before = fingerprint(d)
            try:
                save_pretrained(new, d); outcomes.append("saved")
                with torch.no_grad():
                    assert torch.equal(load_pretrained(d, progress=False)(IDS), new(IDS))
                filler.unlink(); save_pretrained(old, d)
            except OSError as e:
                outcomes.append(e.errno)
                assert e.errno == errno.ENOSPC and "unchanged" in str(e)
                assert_old(d, before, old)
            filler.unlink(missing_ok=True)
        assert errno.ENOSPC in outcomes and "saved" in outcomes, outcomes
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)

DROP_AND_SAVE = textwrap.dedent("""
    import os, sys, torch
    from qwen3_lib import Qwen3Config, Qwen3ForCausalLM
    from qwen3_lib.weights import save_pretrained
    torch.manual_seed(2); new = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    if os.geteuid() == 0:                                   # everything is imported: now become `nobody`
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        save_pretrained(new, sys.argv[1])
    except OSError as e:
        print(type(e).__name__, e); sys.exit(3)
    print("saved")
""")

@pytest.mark.parametrize("what", ["config.json", "directory"])
def test_a_read_only_target_as_a_user_who_may_not_write_it(old_new, what):
    "As root nothing is read-only: the save runs in a subprocess that drops to `nobody` first."
    old, _ = old_new
    root = Path(tempfile.mkdtemp(dir="/tmp"))                      # pytest's tmp_path is closed to other users
    try:
        os.chmod(root, 0o755)
        d = save_pretrained(old, root / "ckpt")
        if os.geteuid() == 0:                                      # the checkpoint is the user's own
            for p in (d, *d.iterdir()): os.chown(p, 65534, 65534)
        if what == "config.json":
            os.chmod(d / "config.json", 0o444)
        else:
            os.chmod(d, 0o555)
        before = fingerprint(d)
        r = subprocess.run([sys.executable, "-c", DROP_AND_SAVE, str(d)], capture_output=True, text=True, cwd="/")
        if r.returncode not in (0, 3):
            pytest.skip(f"cannot run a save as another user here: {r.stderr.strip().splitlines()[-1:]}")
        assert r.returncode == 3, r.stdout
        assert r.stdout.startswith("PermissionError") and "unchanged" in r.stdout, r.stdout
        assert ("config.json is read-only" if what == "config.json" else "could not write model.safetensors") in r.stdout
        assert_old(d, before, old)
    finally:
        os.chmod(root / "ckpt", 0o755)
        shutil.rmtree(root)

def test_a_successful_save_leaves_no_temporary_files_and_keeps_other_files(tmp_path, old_new):
    old, new = old_new
    d = old_checkpoint(tmp_path, old, "sharded")
    with pytest.warns(UserWarning, match="removed the older sharded checkpoint"):
        save_pretrained(new, d)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                   "tokenizer.json"]
    umask = os.umask(0); os.umask(umask)
    for f in ("model.safetensors", "config.json"):                    # the user's umask, not safetensors' 0o600
        assert (d / f).stat().st_mode & 0o777 == 0o666 & ~umask

# --- a tied config whose file holds lm_head.weight too ---------------------------------------------
def tied_with_head(tmp_path, name, delta):
    "A tied checkpoint whose file also holds lm_head.weight: the embedding plus delta at [3, 5]."
    m = model(3)
    d = save_pretrained(m, tmp_path / name)
    sd = load_file(d / "model.safetensors")
    head = sd["model.embed_tokens.weight"].clone(); head[3, 5] += delta
    sd["lm_head.weight"] = head
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"] is True
    return d, sd

def test_tied_config_with_an_equal_head_in_the_file_is_tied_like_transformers(tmp_path):
    d, sd = tied_with_head(tmp_path, "equal", 0.0)
    theirs = transformers.Qwen3ForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # nothing to say
        ours = load_pretrained(d, progress=False)
    assert theirs.lm_head.weight is theirs.model.embed_tokens.weight      # transformers 5 ties them
    assert ours.lm_head.weight is ours.model.embed_tokens.weight and ours.cfg.tie_word_embeddings
    with torch.no_grad():
        assert max_diff(ours(IDS), theirs(IDS).logits) <= 1e-5

def test_tied_config_with_an_unequal_head_in_the_file_is_untied_like_transformers(tmp_path):
    d, sd = tied_with_head(tmp_path, "unequal", 0.75)
    theirs = transformers.Qwen3ForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with pytest.warns(UserWarning, match=r"largest \|difference\| 0.75, in row 3") as w:
        ours = load_pretrained(d, progress=False)
    assert "tie_word_embeddings" in str(w[0].message) and "as transformers does" in str(w[0].message)
    # transformers 5: "both are present in the checkpoints with different values, so we will NOT tie them"
    assert theirs.lm_head.weight is not theirs.model.embed_tokens.weight
    assert torch.equal(theirs.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(theirs.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    assert not ours.cfg.tie_word_embeddings and ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert torch.equal(ours.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(ours.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    with torch.no_grad():
        assert max_diff(ours(IDS), theirs(IDS).logits) <= 1e-5
    back = save_pretrained(ours, tmp_path / "resaved")                 # saved as what it is: untied, both matrices
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_pretrained(back, progress=False)
    assert torch.equal(again.lm_head.weight, sd["lm_head.weight"])

def test_a_head_equal_only_in_the_loaded_dtype_is_tied_as_transformers_compares_after_loading(tmp_path):
    d, sd = tied_with_head(tmp_path, "close", 1e-6)                   # lost when rounded to bfloat16
    emb = sd["model.embed_tokens.weight"]
    assert torch.equal(emb.bfloat16(), sd["lm_head.weight"].bfloat16()) and not torch.equal(emb, sd["lm_head.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = load_pretrained(d, dtype=torch.bfloat16, progress=False)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    theirs = transformers.Qwen3ForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
    assert theirs.lm_head.weight is theirs.model.embed_tokens.weight
    with pytest.warns(UserWarning, match="in row 3"):
        load_pretrained(d, dtype=torch.float32, progress=False)

def test_the_copy_path_refuses_a_head_it_cannot_untie(tmp_path):
    "Chapter 11 copies into views of an allocated model: a tied config's different file head is refused there."
    d, _ = tied_with_head(tmp_path, "unequal", 0.75)
    cfg = Qwen3Config.from_hf(d)
    found, loaded, kind, optional = C.plan_checkpoint(d, cfg)
    m = C._allocate(Qwen3ForCausalLM(cfg, device="meta"), "cpu")
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        C._copy_tensors(d, found, loaded, kind, m.state_dict(keep_vars=True), [k for k in found if k not in optional],
                        progress=False)

def test_a_tied_matrix_stored_only_under_the_heads_name_is_the_embedding_like_transformers(tmp_path):
    m = model(4)
    d = save_pretrained(m, tmp_path / "head_only")
    sd = load_file(d / "model.safetensors"); sd["lm_head.weight"] = sd.pop("model.embed_tokens.weight")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    theirs = transformers.Qwen3ForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    ours = load_pretrained(d, progress=False)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert torch.equal(ours.model.embed_tokens.weight, m.model.embed_tokens.weight)
    with torch.no_grad():
        assert torch.equal(ours(IDS), m(IDS)) and max_diff(ours(IDS), theirs(IDS).logits) <= 1e-5
