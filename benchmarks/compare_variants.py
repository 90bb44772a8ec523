"""Which way of building FastQwen3's decode step is fastest on this machine, and which prefill chunk size.

Chapter 10a offers several ways to run the one-token step: recorded by hand as a CUDA graph (`cuda_graph()`),
the decoder layer compiled once and the whole step recorded by hand (`compile_layers().cuda_graph()`), or the
whole step compiled (`compile()`, reduce-overhead); matrix-vector products from the library ("linear"), generated
("reduce", the default on a GPU at batch 1) or generated with each RMSNorm computed inside the kernel that reads it ("fold");
attention fused ("sdpa") or written out ("math"); and one experiment that is not in the library, "+prefetch"
(a second stream reads each layer's weights into the L2 cache just before its products need them, see
l2_prefetch). This program builds each on the same
random bf16 weights, times the step (graph replays alone, then generate() end to end), checks its logits against
the eager step, and profiles it (kernels per step, top kernels by device time). It also sweeps prefill chunk sizes
at 40,960 tokens (time and peak memory; chunked, and split: attention in one pass), first, as it is quick. One JSON file holds everything; each variant is saved as it finishes.
    python benchmarks/compare_variants.py --out variants.json [--variants graph layers ...] [--layers 4]
"""
import argparse, json, statistics, time, traceback
from pathlib import Path
import torch, torch._dynamo
from profile_decode import profile_steps          # benchmarks/ is on the path when run as a script
from qwen3_lib.bench import _sync as sync, _prefill_ours

VARIANTS = {   # name -> (how the step is built, FastQwen3 options, compile options)
    "graph":                 ("graph", {}, {}),
    "layers":                ("layers", {}, {}),
    "layers-math":           ("layers", dict(attention="math"), {}),
    "layers-linear":         ("layers", {}, dict(matvec="linear")),
    "layers-linear-math":    ("layers", dict(attention="math"), dict(matvec="linear")),
    "layers-fold":           ("layers", {}, dict(matvec="fold")),
    "layers-fold-math":      ("layers", dict(attention="math"), dict(matvec="fold")),
    "layers-prefetch":       ("layers+prefetch", {}, {}),
    "layers-fold-prefetch":  ("layers+prefetch", {}, dict(matvec="fold")),
    "compiled":              ("compiled", {}, {}),
    "compiled-math":         ("compiled", dict(attention="math"), {}),
    "compiled-linear":       ("compiled", {}, dict(matvec="linear")),
    "compiled-fold":         ("compiled", {}, dict(matvec="fold")),
}

def l2_prefetch(fast):
    """Experiment (not in the library until a GPU says it pays): the generated products read their 4-13 MB at under
    half the bandwidth, mostly start-up and drain. While layer i runs, a second stream reads layer i's o, gate/up
    and down weights and layer i+1's q/k/v weights (31.5 MB; the L2 cache holds 50 MB on an H100, 60 on the H200), one 8-byte
    load per 32-byte sector, so that the products find them in L2. The prefetch only reads; the main stream waits
    for it at the next layer's start (and after the last layer), which CUDA-graph capture needs anyway. On a CPU
    the reads run inline (a check of the bookkeeping, not a speed-up)."""
    layers, inner = fast.layers, fast.layer
    sectors = lambda t: t.view(-1).view(torch.int64)[::4]          # every 4th 8-byte word: one load per 32 bytes
    plan = {id(w.qkv): (i, [sectors(t) for t in (w.o, w.gate_up, w.down)] +
                           ([sectors(layers[i + 1].qkv)] if i + 1 < len(layers) else []))
            for i, w in enumerate(layers)}
    dev = fast.kv_cache.device
    sink = torch.zeros((), dtype=torch.int64, device=dev)
    side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    def layer(x, d, w, *args, **kw):
        i, reads = plan[id(w.qkv)]
        if side is None:
            for r in reads: torch.sum(r, 0, out=sink)
            return inner(x, d, w, *args, **kw)
        main = torch.cuda.current_stream(dev)
        if i: main.wait_stream(side)                # the previous layer's prefetch has finished (it long has)
        side.wait_stream(main)                      # start with this layer, not before (in a capture: fork here)
        with torch.cuda.stream(side):
            for r in reads: torch.sum(r, 0, out=sink)
        out = inner(x, d, w, *args, **kw)
        if i == len(layers) - 1: main.wait_stream(side)   # join before the step ends
        return out
    fast.layer = layer
    return fast

def build(model, kind, opts, comp, max_seq_len, dev):
    from qwen3_lib.fast import FastQwen3
    fast = FastQwen3(model, max_seq_len, **opts)
    base = kind.split("+")[0]
    if base == "layers": fast.compile_layers(**comp)
    if base == "compiled": fast.compile(**comp)
    if kind.endswith("+prefetch"): l2_prefetch(fast)
    if dev == "cuda" and base in ("graph", "layers"): fast.cuda_graph()
    return fast

def time_variant(fast, dev, steps, new_tokens):
    "ms per step (replays alone), decode tok/s from generate() as the benchmark counts it, logits check."
    prompt = torch.randint(0, 151_643, (1, 16), device=dev, generator=torch.Generator(dev).manual_seed(1))
    P = prompt.shape[1]
    with torch.inference_mode():
        fast.forward(prompt, fast.positions[:P])
        nxt = prompt[:, -1:].clone()
        for s in range(3): fast.step(nxt, fast.positions[P + s:P + s + 1])
        pos = fast.positions[P:P + 1]
        got = fast.step(nxt, pos).float().clone()
        want = fast.forward(nxt, pos).float()                       # eager, same cache, same position
        rel = ((got - want).abs().max() / want.abs().max()).item()
        n_pos = fast.max_seq_len - P - 1
        sync(dev); t0 = time.perf_counter()
        for s in range(steps): fast.step(nxt, fast.positions[P + s % n_pos:P + s % n_pos + 1])
        sync(dev); ms = (time.perf_counter() - t0) / steps * 1e3
    def gen(n):
        sync(dev); t0 = time.perf_counter(); fast.generate(prompt, n, stop_token_ids=()); sync(dev)
        return time.perf_counter() - t0
    gen(new_tokens)
    t1 = statistics.median(gen(1) for _ in range(3)); tn = statistics.median(gen(new_tokens) for _ in range(3))
    return dict(ms_per_step=ms, generate_tok_s=(new_tokens - 1) / (tn - t1), logits_rel_diff=rel)

def profile_variant(fast, dev, steps=10, top=10):
    "Kernels (GPU) or operators (CPU) per step, busy time per step and the top ones, from profile_decode.py."
    _, table = profile_steps(fast, steps, dev == "cuda")
    rows = sorted(table.items(), key=lambda kv: -kv[1][1])
    return dict(kernels_per_step=sum(n for n, _ in table.values()) / steps,
                busy_us_per_step=sum(t for _, t in table.values()) / steps,
                top=[dict(name=k[:120], per_step=n / steps, us_per_step=t / steps) for k, (n, t) in rows[:top]])

def prefill_sweep(model, L, chunks, dev, log, split_chunks=(), split_kv_heads=(None,)):
    """Time (median of 3) and peak of chunked and split prefills of L tokens, with the benchmark's own measurement.
    split_kv_heads: key/value heads per attention call of the split prefill (None: all in one call)."""
    from qwen3_lib.memory import kv_cache_bytes
    kv = kv_cache_bytes(model.cfg, L, 1, next(model.parameters()).dtype)
    out = []
    runs = [(False, c, None) for c in chunks] + [(True, c, n) for c in split_chunks for n in split_kv_heads]
    for split, c, n in runs:
        seconds, peak = _prefill_ours(model, L, dev, c, split, n)
        row = dict(chunk_size=c, split=split, kv_heads_per_call=n, seconds=seconds, peak_above_weights_bytes=peak,
                   peak_above_kv_gib=None if peak is None else (peak - kv) / 2**30)
        out.append(row)
        log(f"prefill {L} {'split, ' if split else ''}chunk {c}{f', {n} KV heads a call' if n else ''}: {seconds:.3f} s"
            + ("" if peak is None else f", KV + {row['peak_above_kv_gib']:.3f} GiB"))
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=200, help="timed replays per variant")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick check")
    ap.add_argument("--prefill-length", type=int, default=40_960)
    ap.add_argument("--chunks", nargs="*", type=int, default=[0, 4096, 8192, 16384], help="0 = one pass")
    ap.add_argument("--split-chunks", nargs="*", type=int, default=[2048, 4096],
                    help="chunk sizes for prefill_split (attention in one pass, the rest in chunks)")
    ap.add_argument("--split-kv-heads", nargs="*", type=int, default=[0, 1],
                    help="key/value heads per attention call for prefill_split (0 = all in one call)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="variants.json")
    a = ap.parse_args(argv)
    from qwen3_lib import Qwen3Config, Qwen3Model
    from qwen3_lib.bench import device_name
    dev = a.device
    cfg = Qwen3Config() if a.layers is None else Qwen3Config(num_hidden_layers=a.layers)
    torch.manual_seed(0)
    model = Qwen3Model(cfg, device=dev, dtype=getattr(torch, a.dtype)).eval()
    names = a.variants or (list(VARIANTS) if dev == "cuda" else ["layers", "layers-math", "compiled"])
    result = dict(device=device_name(dev), torch=torch.__version__, dtype=a.dtype, layers=cfg.num_hidden_layers,
                  variants={}, prefill=[])
    save = lambda: Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['device']} | torch {torch.__version__} | {a.dtype} | batch 1 | {cfg.num_hidden_layers} layers", flush=True)
    if (a.chunks or a.split_chunks) and a.prefill_length:
        try:
            result["prefill"] = prefill_sweep(model, a.prefill_length, [c or None for c in a.chunks], dev, print,
                                             a.split_chunks, [n or None for n in a.split_kv_heads])
        except Exception as e:
            traceback.print_exc(); result["prefill_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        save()
    for name in names:
        kind, opts, comp = VARIANTS[name]
        torch._dynamo.reset()
        try:
            t0 = time.perf_counter()
            fast = build(model, kind, opts, comp, 16 + a.new_tokens, dev)
            with torch.inference_mode(): fast.step(torch.zeros(1, 1, dtype=torch.long, device=dev), fast.positions[16:17])
            ready = time.perf_counter() - t0
            r = dict(ready_s=ready, **time_variant(fast, dev, a.steps, a.new_tokens), **profile_variant(fast, dev))
        except Exception as e:
            traceback.print_exc()
            r = dict(error=f"{type(e).__name__}: {str(e)[:500]}")
        result["variants"][name] = r; save()
        if "error" in r: print(f"== {name}: FAILED {r['error']}", flush=True); continue
        print(f"== {name}: ready in {r['ready_s']:.1f} s | step {r['ms_per_step']:.3f} ms | generate {r['generate_tok_s']:.1f} tok/s"
              f" | {r['kernels_per_step']:.0f} kernels, {r['busy_us_per_step'] / 1e3:.3f} ms busy | logits rel diff {r['logits_rel_diff']:.1e}", flush=True)
        for k in r["top"]:
            print(f"   {k['us_per_step']:8.1f} us {k['per_step']:6.1f}x  {k['name'][:110]}")
        del fast
        if dev == "cuda": torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
