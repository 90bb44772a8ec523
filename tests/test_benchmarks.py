"The benchmark tool (qwen3_lib.tools.bench), its records (tools.records) and the programs in benchmarks/, on miniature models."
import importlib.util, json, re, subprocess, sys
from pathlib import Path
import pytest
from qwen3_lib import Qwen3Config, FastQwen3, __version__
from qwen3_lib.tools import bench
from qwen3_lib.tools.bench import run_benchmark, CONTENDERS
from qwen3_lib.tools.records import results_table, provenance, save_record, load_record, record_meta

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_variants
_spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "benchmarks" / "bench.py")   # not tools.bench
bench_cli = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bench_cli)

TINY = Qwen3Config.tiny(vocab_size=151_936)          # the real vocabulary: the benchmark draws token ids from it

def usage_error(main, argv, capsys) -> str:
    "What a program's main(argv) says on stderr when argparse refuses argv (exit status 2)."
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2, argv
    return capsys.readouterr().err

def test_benchmark_runs_and_reports():
    res = run_benchmark(TINY, "cpu", ("float32",), prompt_tokens=4, new_tokens=3, repeats=1, batch_sizes=(1,),
                        full_batch_sizes=(1,), prefill_lengths=(32,), compile=False, log=lambda s: None)
    assert [p["contender"] for p in res["prefill"]] == ["one pass", "chunks of 4,096", "split, chunks of 2,048",
                                                        "split, 1 KV head a call", "transformers"]
    quick = {c.name for c in CONTENDERS if not c.cuda_only and not c.compiled}
    assert {r["contender"] for r in res["decode"]} == quick and len(quick) == 3
    assert all(r["tokens_per_s"] > 0 and r["first_divergence"] is None for r in res["decode"])   # float32: same tokens
    assert res["meta"]["device_type"] == "cpu" and res["meta"]["transformers"]
    table = results_table(res, 1)
    assert "× transformers" in table and "| FastQwen3 | float32 |" in table and res["meta"]["date"] in table

def test_benchmark_skips_a_contender_that_cannot_be_built(monkeypatch):
    "A fast path that fails to build (say, a compiler error) is reported in 'skipped'; the other contenders still run."
    class Broken(FastQwen3):
        def __init__(self, *args, compile_layers=False, **kw):
            if compile_layers: raise RuntimeError("no compiler here")
            super().__init__(*args, **kw)
    monkeypatch.setattr(bench, "FastQwen3", Broken)
    res = run_benchmark(TINY, "cpu", ("float32",), prompt_tokens=4, new_tokens=3, repeats=1, compile=True,
                        transformers_too=False, log=lambda s: None)
    assert {r["contender"] for r in res["decode"]} == {"qwen3_lib generate (KVCache)", "FastQwen3"}
    assert any(s.startswith("FastQwen3, compile_layers:") and "no compiler here" in s for s in res["meta"]["skipped"])

def test_benchmark_cli_tiny(tmp_path, capsys):
    "benchmarks/bench.py, run as a program: the table on stdout, the JSON in --out; bad flags are a usage error."
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--tiny", "--new-tokens", "3", "--repeats", "1",
                        "--dtypes", "float32", "--no-transformers", "--no-compile", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["device_type"] == "cpu" and len(data["decode"]) == 2          # generate, FastQwen3
    assert "| FastQwen3 | float32 |" in r.stdout and f"wrote {out}" in r.stdout
    for bad, word in ((["--new-tokens", "1"], "new-tokens"), (["--repeats", "0"], "repeats"), (["--dtypes", "int8"], "dtypes")):
        assert word in usage_error(bench_cli.main, bad, capsys), bad

def test_variants_program_runs(tmp_path, capsys):
    "benchmarks/compare_variants.py (a GPU-session tool) runs on a CPU: times, checks and profiles each way."
    out = tmp_path / "v.json"
    compare_variants.main(["--device", "cpu", "--tiny", "--layers", "1", "--steps", "2", "--new-tokens", "4",
                           "--ways", "eager", "--out", str(out)])
    data = json.loads(out.read_text())
    v = data["variants"]["eager"]
    assert "error" not in v and v["ms_per_step"] > 0 and v["generate_tok_s"] > 0
    assert v["logits_rel_diff"] == 0 and v["kernels_per_step"] > 10 and v["options"] == {}
    assert v["top"][0]["name"] in ("aten::linear", "qwen3_lib::mv")          # the output head's product
    assert data["device_type"] == "cpu" and data["qwen3_lib"] and data["date"]
    assert "CUDA" in usage_error(compare_variants.main, ["--device", "cpu", "--ways", "layers+graph", "--out", str(out)], capsys)

def test_profile_program_runs(tmp_path):
    "benchmarks/profile_decode.py splits a tiny model's eager decode step by kind, per weight format."
    import profile_decode
    out = tmp_path / "p.json"
    assert profile_decode.main(["--tiny", "--steps", "2", "--no-compile", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["steps"]
    assert [(s["way"], s["compiled"]) for s in rows] == [("bf16", False), ("int8", False), ("int4 g32", False)]
    for s in rows:
        assert s["wall_ms_per_token"] > 0 and s["products"] > 0 and s["products_GBps_in_step"] > 0
        assert {t["kind"] for t in s["top_ops"]} <= {"products", "attention", "other"}
    assert "torch._int_mm, activations rounded to int8" in rows[1]["alone_GBps"]

def test_an_older_recording_says_so():
    "A result recorded by an older qwen3_lib is captioned with its version and date, its contenders' names as recorded."
    gpu = json.loads((ROOT / "figures" / "data" / "bench_gpu.json").read_text())
    old = dict(gpu, meta=dict(gpu["meta"], qwen3_lib="0.0.1", date="2000-01-02"))
    assert provenance(old).startswith(f"Recorded with qwen3_lib 0.0.1 on 2000-01-02 ({gpu['meta']['device']}, ")
    assert provenance(old).endswith("; the current fast path has not been timed on a GPU")
    table = results_table(old)
    assert all(f"| {r['contender']} |" in table for r in gpu["decode"] if r["batch_size"] == 1)
    now = dict(gpu, meta=dict(gpu["meta"], qwen3_lib=__version__))
    assert "Recorded with" not in provenance(now) and __version__ in provenance(now)

def test_a_record_is_written_whole_and_read_back(tmp_path):
    "save_record leaves only the record (no temporary file); load_record refuses a file that cannot say where it ran."
    rec = dict(meta=record_meta(TINY, "cpu", prompt_tokens=4, new_tokens=3), decode=[], prefill=[])
    assert rec["meta"]["config"].startswith("custom ") and rec["meta"]["qwen3_lib"] == __version__
    path = save_record(rec, tmp_path / "sub" / "r.json")
    assert load_record(path) == rec and [f.name for f in path.parent.iterdir()] == ["r.json"]
    save_record(dict(rec, meta={"device": "x"}), path)                  # replaces the old record
    with pytest.raises(ValueError, match="lacks device_type, qwen3_lib, torch, date, config, prompt_tokens"):
        load_record(path)
    for name in ("bench_gpu.json", "bench_cpu.json"):                    # the book's records are records
        assert load_record(ROOT / "figures" / "data" / name)["decode"]

def test_every_program_and_data_file_is_read():
    "benchmarks/ holds no program, and figures/data/ no file, that no notebook, test, README, Makefile or program names."
    texts = {p: p.read_text(encoding="utf-8") for pattern in ("notebooks/*.ipynb", "tests/*.py", "benchmarks/*",
                                                              "README.md", "Makefile") for p in ROOT.glob(pattern)
             if p.is_file()}                                  # not benchmarks/__pycache__, which importing one makes
    not_readers = {"test_benchmarks.py", "README.md"}     # this file tests the programs; benchmarks/README.md lists them
    for f in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/*.sh"), *ROOT.glob("figures/data/*.json")]:
        readers = [p for p, t in texts.items() if p != f and f.name in t
                   and (p.name not in not_readers or p == ROOT / "README.md")]
        assert readers, f"{f.relative_to(ROOT)} is read by nothing: remove it"
