"""Where one CPU decode step's time goes, per weight format: the matrix products against everything else.

    python benchmarks/profile_decode.py --out FILE      # Qwen3-0.6B, random weights: a few minutes on 2 cores
    python benchmarks/profile_decode.py --tiny          # a miniature model: seconds, numbers not comparable

For bfloat16, int8 (a scale per row, and g32: a scale per 32, compiled only) and int4 (g32, g128) weights, a FastQwen3
runs `--steps` decode steps under torch.profiler (eager, and for bfloat16 and int8 also with compile_layers=True). Each operator's own time (children
excluded) is put in one of three kinds: `products` (the weight-times-activation kernels: mm, mv, addmm and the packed
int8/int4 kernels), `attention` (scaled dot-product attention and its matmuls), `other` (norms, RoPE, cache writes,
casts, compiled fused kernels) and `between_ops` (the step's wall time that no operator accounts for: Python and
dispatch). The products' GB/s inside the step is the weight bytes one token reads
divided by their time per token. Where a compiled step multiplies through the compiler's own loop (appendix A5's
`compiled_row_kernel` chose "reduce"), the products are fused into its kernels and counted in `other`; the step's
weight bytes over its wall time say how fast it streams them then.

Beside it, `alone`: the same products, one row, over every matrix of the model in turn (so no cache holds them), with
nothing else running: the speed those kernels reach by themselves. For int8, `torch._int_mm` on an activation row
rounded to int8 (one scale per row) is timed the same way: the int8-by-int8 product that llama.cpp's Q8_0 computes
with (it rounds activations in blocks of 32), which the library does not use. For int8 g32, the compiled
`block_row_product` alone (its one-row product in a compiled step: chapter 14).
"""
import argparse, gc, sys, time
import torch
from torch.profiler import profile, ProfilerActivity
from qwen3_lib import FastQwen3
from qwen3_lib.attention import Linear
from qwen3_lib.quant import QuantLinear
from qwen3_lib.kernels import block_row_product
from qwen3_lib.tools.bench import copy_bandwidth
from qwen3_lib.tools.records import record_meta, save_record
from bench_quant import weight_formats                   # benchmarks/ is on the path when this file runs

PRODUCTS = {"aten::mm", "aten::mv", "aten::addmm", "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu",
            "aten::_int_mm"}

def kind(name: str) -> str:
    "An operator's kind: products, attention or other."
    if name in PRODUCTS:
        return "products"
    if "scaled_dot_product" in name or name in ("aten::bmm", "aten::baddbmm", "aten::_softmax"):
        return "attention"
    return "other"

@torch.inference_mode()
def profiled_step(fast, ids, steps: int) -> dict:
    """ms per token of `steps` decode steps of fast (after ids, fed one token a step as a warm-up), by kind, from
    torch.profiler's self times; the wall time of the same steps."""
    tokens = torch.cat([ids, torch.randint(0, 151_643, (1, steps))], dim=1)
    run = lambda t: fast.step(tokens[:, t:t + 1], fast.positions[t:t + 1])
    for t in range(ids.shape[1]): run(t)                             # warm up (and compile) outside the profile
    for t in range(ids.shape[1]): run(t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for t in range(ids.shape[1], tokens.shape[1]): run(t)
        wall = time.perf_counter() - t0
    by = {"products": 0.0, "attention": 0.0, "other": 0.0}
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    for e in top:
        by[kind(e.key)] += e.self_cpu_time_total / 1e3 / steps       # microseconds over all steps -> ms a step
    out = dict(by, wall_ms_per_token=wall * 1e3 / steps)
    out["between_ops"] = out["wall_ms_per_token"] - sum(by.values())  # Python and dispatch, in no operator
    out["top_ops"] = [dict(op=e.key, kind=kind(e.key), ms_per_token=e.self_cpu_time_total / 1e3 / steps,
                           calls_per_token=e.count / steps) for e in top[:8]]
    return out

def weights(model) -> list:
    "Every matrix a decode step multiplies by, in step order (the layers' projections, then the head)."
    return [m for m in model.modules() if isinstance(m, (Linear, QuantLinear, torch.nn.Linear))]

@torch.inference_mode()
def alone_ms(model, repeats: int = 3) -> dict:
    "ms to run every matrix's one-row product in turn, nothing else: the layers' own forward, and _int_mm for int8."
    x_of = lambda m: torch.randn(1, m.in_features, dtype=torch.bfloat16)
    mats = weights(model)
    xs = [x_of(m) for m in mats]
    def best(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        return min(ts) * 1e3
    if all(isinstance(m, QuantLinear) and m.bits == 8 and m.group_size for m in mats):   # no eager kernel: compiled
        product = torch.compile(lambda x, m: block_row_product(x, m.qweight, m.scales).to(x.dtype), dynamic=False)
        return {"compiled block_row_product": best(lambda: [product(x, m) for m, x in zip(mats, xs)])}
    out = {"layers' forward": best(lambda: [m(x) for m, x in zip(mats, xs)])}
    if all(isinstance(m, QuantLinear) and m.bits == 8 for m in mats):
        codes = [m.qweight.t() for m in mats]                          # (K, N) views of the stored (N, K) codes
        def int_mm():
            for m, x, c in zip(mats, xs, codes):
                s = x.abs().amax().float().clamp(min=1e-8) / 127       # one scale for the row
                q = (x.float() / s).round().to(torch.int8)
                torch._int_mm(q, c)
        out["torch._int_mm, activations rounded to int8"] = best(int_mm)
    return out

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    p.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    p.add_argument("--no-compile", action="store_true", help="profile the eager steps only")
    p.add_argument("--out", metavar="FILE", help="write the result as JSON")
    a = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    cfg, base, ways = weight_formats(a.tiny)             # the same formats as bench_quant.py, same weights
    ids = torch.randint(0, 151_643, (1, 8))
    S = 8 + a.steps + 2
    meta = record_meta(cfg, "cpu", False, not a.no_compile, steps=a.steps, threads=torch.get_num_threads(),
                       copy_bandwidth_GBps=copy_bandwidth("cpu") / 1e9)
    rows = []
    for name, (m, _, nbytes) in ways.items():
        if a.no_compile and name.startswith("int8 g"):
            continue                                   # profiled compiled only, and its product alone compiles too
        alone = alone_ms(m)
        for compiled in (False, True):
            grouped = name.startswith("int8 g")         # made for the compiled step: eagerly it widens (chapter 14)
            if (compiled and (a.no_compile or name.startswith("int4"))) or (grouped and not compiled):
                continue
            log(f"{name} {'compiled' if compiled else 'eager'}: profiling {a.steps} steps")
            r = profiled_step(FastQwen3(m, S, compile_layers=compiled), ids, a.steps)
            inside = compiled and (meta["compiled_row_kernel"] == "reduce" or grouped)   # fused into compiled kernels
            r.update(way=name, compiled=compiled, product_bytes_per_token=nbytes, products_in_compiled_kernels=inside,
                     products_GBps_in_step=nbytes / r["products"] / 1e6 if r["products"] and not inside else None,
                     weights_GBps_whole_step=nbytes / r["wall_ms_per_token"] / 1e6,
                     alone_ms={k: v for k, v in alone.items()},
                     alone_GBps={k: nbytes / v / 1e6 for k, v in alone.items()})
            rows.append(r)
            gc.collect()
    for r in rows:
        products = ("inside the compiled kernels (in other)" if r["products_in_compiled_kernels"] else
                    f"{r['products']:6.1f} ms ({r['products_GBps_in_step']:5.1f} GB/s)")
        print(f"{r['way']:9s} {'compiled' if r['compiled'] else 'eager':8s} {r['wall_ms_per_token']:7.1f} ms/token "
              f"({r['weights_GBps_whole_step']:4.1f} GB/s of weights over the step): products {products}, attention "
              f"{r['attention']:5.1f}, other {r['other']:6.1f}, between ops {r['between_ops']:5.1f};  alone: " +
              ", ".join(f"{k} {v:.1f} GB/s" for k, v in r["alone_GBps"].items()))
    if a.out:
        save_record({"meta": meta, "steps": rows}, a.out); print("wrote", a.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
