"""How many kernels one compiled decoder layer launches on a GPU, counted on a CPU.

PyTorch's compiler can generate Triton code for a CPU (`torch._inductor.config.cpu_backend = "triton"`), and
then it schedules and fuses exactly as it does for a GPU: one generated kernel per group of steps that loop
over one shape. This program compiles the decode step's layer function (one full-size Qwen3-0.6B layer, bfloat16,
one token) that way for each choice of experiments.layer_function (the library's layer_step, "reduce", "fold";
attention "sdpa" or "math"), lets the compiler write its Triton module, stops before the kernels themselves would
be built (that needs a GPU driver), and counts the launches in the module's `call`: generated kernels, and library
calls (attention, library products).

Needs the `triton` package (no GPU): `pip install triton`. It patches two private helpers of torch
(`torch.utils._triton.triton_backend` / `triton_hash_with_backend`, which ask the GPU driver for a target),
so it is a measuring tool, not part of the library, and may need adjusting for another torch.
The CPU's decompositions differ from CUDA's (RMSNorm; and a one-row bf16 product on a CPU is chapter 03's torch.mv,
a library call, where CUDA's compiler with coordinate-descent tuning generates it), so the counts are for comparing
the choices with each other, not a prediction of a profiler's count on a GPU.
    python benchmarks/count_kernels.py [--layer library reduce fold] [--attention sdpa math] [--out counts.json]
"""
import argparse, datetime, glob, json, os, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def count_one(layer: str, attention: str) -> dict:
    "Compile one layer in this process (fresh cache dir already set) and count the launches in its Triton module."
    import torch
    from torch._inductor import config
    import torch.utils._triton as tu
    config.cpu_backend, config.compile_threads = "triton", 1
    tu.triton_backend = lambda: type("NoDriver", (), {"hash": lambda self: "none"})()
    tu.triton_hash_with_backend = lambda: "none"
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, FastQwen3
    from experiments import layer_function, compiled
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=1), dtype=torch.bfloat16).eval()
    fast = FastQwen3(model, 32)
    fast._layer = compiled(layer_function(layer, attention))    # the layer alone: inputs and last norm stay eager
    ids = torch.randint(0, 1000, (1, 4))
    with torch.inference_mode():
        fast.prefill(ids)
        failure = None
        try:                      # the module is written, then building its kernels fails for want of a driver
            fast.step(ids[:, -1:], fast.positions[4:5])
        except Exception as e:
            failure = e
    modules = [open(f).read() for f in glob.glob(os.environ["TORCHINDUCTOR_CACHE_DIR"] + "/**/*.py", recursive=True)]
    modules = [m for m in modules if "def call(" in m and ".run(" in m]
    if not modules:
        raise RuntimeError("the compiler wrote no Triton module; this torch or triton may need other patches "
                           f"(the step stopped with {failure!r})")
    call = max(modules, key=len).split("def call(", 1)[1]
    generated = re.findall(r"^\s+(triton_\w+)\.run\(", call, flags=re.M)
    library = re.findall(r"^\s+\w+ = (extern_kernels\.\w+|torch\.ops\.[\w.]+)\(", call, flags=re.M)
    return dict(layer=layer, attention=attention, generated=len(generated), library=len(library),
                generated_kernels=generated, library_calls=library)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", nargs="+", default=["library", "reduce", "fold"], choices=["library", "reduce", "fold"])
    ap.add_argument("--attention", nargs="+", default=["sdpa"], choices=["sdpa", "math"])
    ap.add_argument("--out", default=None, help="also write the counts as JSON")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)          # internal: count one case in this process
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(count_one(*a.one))); return
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit("count_kernels.py needs the triton package (no GPU needed): pip install triton")
    import torch
    rows = []
    for attention in a.attention:
        for layer in a.layer:                    # one process each: a fresh compiler and cache
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                r = subprocess.run([sys.executable, __file__, "--one", layer, attention], env=env,
                                   capture_output=True, text=True)
            if r.returncode:
                print(f"{layer}/{attention}: failed\n{r.stderr[-2000:]}", file=sys.stderr); continue
            row = json.loads(r.stdout.strip().splitlines()[-1]); rows.append(row)
            print(f"layer={layer:<8} attention={attention:<5} {row['generated']:3d} generated kernels + "
                  f"{row['library']} library calls per layer  ({', '.join(sorted(set(row['library_calls']))) or '-'})")
    if a.out:
        from qwen3_lib import __version__
        Path(a.out).write_text(json.dumps(dict(torch=torch.__version__, triton=__import__("triton").__version__,
                                               qwen3_lib=__version__, date=datetime.date.today().isoformat(),
                                               layer="Qwen3-0.6B decoder layer, bf16, one token", rows=rows), indent=1) + "\n")

if __name__ == "__main__":
    main()
