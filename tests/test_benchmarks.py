"The benchmark tool (qwen3_lib.tools.bench) and the programs in benchmarks/, on miniature models: they run and report."
import collections, contextlib, importlib.util, json, subprocess, sys
from pathlib import Path
import pytest, torch
from torch.overrides import TorchFunctionMode
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, FastQwen3, generate
from qwen3_lib.tools import bench
from qwen3_lib.tools.bench import run_benchmark, results_table, CONTENDERS
from conftest import randomize_norms, max_diff

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))       # the programs import each other, as when run as scripts
import experiments, compare_variants, profile_decode, count_kernels
from experiments import ExperimentalFastQwen3, build
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

@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval(); randomize_norms(m); return m

class Calls(TorchFunctionMode):
    "Counts the torch functions called under it, by name (a function that another mode answers is not called)."
    def __init__(self):
        super().__init__(); self.n = collections.Counter()
    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))

def _steps(fast, ids, n=3, calls=None):
    "Prefill ids (B, P), then n one-token steps after it (under the mode calls, if given): their logits."
    P = ids.shape[1]
    with torch.inference_mode():
        fast.prefill(ids)
        with calls or contextlib.nullcontext():
            return [fast.step(ids[:, :1] + t, fast.positions[P + t:P + t + 1]).clone() for t in range(n)]

# experiment -> per step of the 2-layer tiny model: (library products F.linear, fused attention calls)
EAGER_EXPERIMENTS = {"reduce": (1, 2), "math": (9, 0), "reduce+math": (1, 0), "fold": (1, 2), "fold+math": (1, 0),
                     "prefetch": (9, 2), "fold+prefetch": (1, 2)}

def test_experiments_give_the_eager_steps_logits(tiny):
    """Each experiment's step (float32, run eagerly) computes what the library's eager step computes, and does it its
    own way: its layers' products (4 per layer; the head's stays the library's) and attention are not the library's."""
    ids = torch.randint(0, 1000, (2, 6))
    calls = Calls()
    want = _steps(FastQwen3(tiny, 12, 2), ids, calls=calls)
    assert (calls.n["linear"], calls.n["scaled_dot_product_attention"]) == (3 * 9, 3 * 2)
    for name, (products, attention) in EAGER_EXPERIMENTS.items():
        calls = Calls()
        got = _steps(build(tiny, name, 12, 2), ids, calls=calls)
        assert max(max_diff(a, b) for a, b in zip(got, want)) <= 1e-5, name
        assert (calls.n["linear"], calls.n["scaled_dot_product_attention"]) == (3 * products, 3 * attention), name
    fast = build(tiny, "fold+math", 6 + 20, 2)
    assert torch.equal(fast.generate(ids, 20, stop_token_ids=()), generate(tiny, ids, 20, stop_token_ids=()))

def test_compiled_experiments_trace_as_one_graph(tiny, monkeypatch):
    """The compiled experiments (a layer compiled for all layers; the whole step) trace without a graph break and keep
    the logits. Traced with the "eager" backend: seconds instead of a minute of code generation on a CPU."""
    from torch._dynamo.utils import counters
    monkeypatch.setattr(experiments, "compiled", lambda fn, cudagraphs=False:
                        torch.compile(fn, fullgraph=True, dynamic=False, backend="eager"))
    ids = torch.randint(0, 1000, (2, 6))
    want = _steps(FastQwen3(tiny, 12, 2), ids)
    for name, graphs in (("layers+fold+math", 3), ("step+reduce", 1)):
        torch._dynamo.reset(); counters.clear()
        got = _steps(build(tiny, name, 12, 2), ids)
        assert max(max_diff(a, b) for a, b in zip(got, want)) <= 1e-5, name
        assert counters["stats"]["unique_graphs"] == graphs, name      # inputs, layer, last norm; or the whole step

def test_prefetch_reads_the_next_weights_once_per_step(tiny):
    "l2_prefetch: per step, every layer's o, gate/up and down weights and the next layer's q/k/v, one word per 32 bytes."
    reads = []
    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.sum and "out" in (kwargs or {}): reads.append(args[0].numel() * 8)
            return func(*args, **(kwargs or {}))
    fast = ExperimentalFastQwen3(tiny, 8, prefetch=True)
    with torch.inference_mode(), Count():
        fast.step(torch.tensor([[3]]), fast.positions[:1])
    layers = tiny.model.layers
    want = [l.self_attn.o_proj.weight.nbytes + qkv_gu[1].nbytes + l.mlp.down_proj.weight.nbytes for l, qkv_gu in zip(layers, fast.fused)]
    want = sum(want) + sum(qkv.nbytes for qkv, _ in fast.fused[1:])
    assert len(reads) == 4 * len(layers) - 1 and sum(reads) == want // 4

def test_experiment_options_are_checked(tiny):
    with pytest.raises(ValueError, match="compile_step"):
        ExperimentalFastQwen3(tiny, 8, compile_step=True, prefetch=True)
    with pytest.raises(ValueError, match="layer must be"):
        ExperimentalFastQwen3(tiny, 8, layer="linear")
    with pytest.raises(ValueError, match="unknown word 'fused'"):
        build(tiny, "layers+fused", 8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            build(tiny, "layers+graph", 8)

def test_variants_program_runs(tmp_path, capsys):
    "benchmarks/compare_variants.py (a GPU-session tool) runs on a CPU: times, checks and profiles each variant."
    out = tmp_path / "v.json"
    compare_variants.main(["--device", "cpu", "--tiny", "--layers", "1", "--steps", "2", "--new-tokens", "4",
                           "--variants", "math", "reduce+prefetch", "--prefill-length", "32", "--chunks", "0", "8",
                           "--split-chunks", "8", "--out", str(out)])
    data = json.loads(out.read_text())
    for name in ("math", "reduce+prefetch"):
        v = data["variants"][name]
        assert "error" not in v and v["ms_per_step"] > 0 and v["generate_tok_s"] > 0, name
        assert v["logits_rel_diff"] < 0.05 and v["kernels_per_step"] > 10, name
    assert data["variants"]["reduce+prefetch"]["options"] == dict(layer="reduce", prefetch=True)
    sums = {k["name"]: k["per_step"] for k in data["variants"]["reduce+prefetch"]["top"]}.get("aten::sum")
    assert sums == 4 + 3                               # the four products, and the prefetch's three reads
    assert [(p["chunk_size"], p["split"], p["kv_heads_per_call"]) for p in data["prefill"]] == \
        [(None, False, None), (8, False, None), (8, True, None), (8, True, 1)]
    assert "CUDA" in usage_error(compare_variants.main, ["--device", "cpu", "--variants", "layers+graph", "--out", str(out)], capsys)

def test_profile_program_runs(tmp_path):
    "benchmarks/profile_decode.py (a GPU-session tool) works on a CPU: it counts the step's operators."
    out = tmp_path / "p.json"
    profile_decode.main(["--device", "cpu", "--tiny", "--layers", "1", "--steps", "2", "--out", str(out)])
    rep = json.loads(out.read_text())["report"]["eager"]
    assert rep["per_step_count"] > 10 and rep["top"][0]["name"] in ("aten::linear", "qwen3_lib::mv")   # the head's product

def test_kernel_count_program_says_what_it_needs():
    "benchmarks/count_kernels.py needs the triton package; without it, it says so and exits non-zero."
    if importlib.util.find_spec("triton"):
        pytest.skip("triton is installed here: the program would run for minutes instead")
    with pytest.raises(SystemExit, match="pip install triton"):
        count_kernels.main([])
