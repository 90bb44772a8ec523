"""Which way of building FastQwen3's decode step is fastest on this machine, and which prefill chunk size.

The variants are the library's ways (chapter 10a: eager, graph = cuda_graph, layers = compile_layers, layers+graph =
both, the fastest recorded) and the experiments of benchmarks/experiments.py on top of them (reduce, fold, math,
prefetch, step = the whole step compiled; words joined by "+", see experiments.variant_options). For each, on the
same random weights, this program times the step (graph replays alone, then generate() end to end), checks its
logits against the library's eager step, and profiles it (kernels per step, top kernels by device time). First,
as it is quick, it sweeps prefill chunk sizes (chunked, and split: attention in one pass; time and peak memory).
One JSON file holds everything; each variant is saved as it finishes. Findings: benchmarks/NOTES.md.
    python benchmarks/compare_variants.py --out variants.json [--variants layers+graph layers+graph+fold ...] [--layers 4]
"""
import argparse, datetime, json, statistics, time, traceback
from pathlib import Path
import torch, torch._dynamo
from experiments import build, variant_options   # benchmarks/ is on the path when run as a script
from profile_decode import profile_steps, config

CUDA_VARIANTS = ["graph", "layers+graph", "layers+graph+reduce", "layers+graph+math", "layers+graph+reduce+math",
                 "layers+graph+fold", "layers+graph+fold+math", "layers+graph+prefetch", "layers+graph+fold+prefetch",
                 "step", "step+reduce"]
CPU_VARIANTS = ["eager", "layers", "layers+fold"]

def time_variant(fast, ref, dev, steps: int, new_tokens: int) -> dict:
    "ms per step (steps alone), decode tok/s from generate() as the benchmark counts it, logits against ref's eager step."
    from qwen3_lib.tokenizer import ENDOFTEXT_ID
    from qwen3_lib.tools.bench import timed
    B, P = fast.batch_size, 16
    prompt = torch.randint(0, min(fast.cfg.vocab_size, ENDOFTEXT_ID), (B, P), device=dev,
                           generator=torch.Generator(dev).manual_seed(1))
    with torch.inference_mode():
        fast.prefill(prompt); ref.prefill(prompt)
        nxt = prompt[:, -1:].clone()
        for s in range(3): fast.step(nxt, fast.positions[P + s:P + s + 1])
        pos = fast.positions[P:P + 1]
        got = fast.step(nxt, pos).float().clone()
        want = ref.forward(nxt, pos).float()                        # eager, the same prompt and position
        rel = ((got - want).abs().max() / want.abs().max()).item()
        room = fast.max_seq_len - P - 1
        def replays():
            for s in range(steps): fast.step(nxt, fast.positions[P + s % room:P + 1 + s % room])
        ms = timed(replays, dev) / steps * 1e3
    gen = lambda n: timed(lambda: fast.generate(prompt, n, stop_token_ids=()), dev)
    gen(new_tokens)
    t1 = statistics.median(gen(1) for _ in range(3)); tn = statistics.median(gen(new_tokens) for _ in range(3))
    return dict(ms_per_step=ms, generate_tok_s=B * (new_tokens - 1) / max(tn - t1, 1e-9), logits_rel_diff=rel)

def profile_variant(fast, dev, steps: int = 10, top: int = 10) -> dict:
    "Kernels (GPU) or operators (CPU) per step, busy time per step and the top ones, from profile_decode.py."
    _, table = profile_steps(fast, steps, dev == "cuda")
    rows = sorted(table.items(), key=lambda kv: -kv[1][1])
    return dict(kernels_per_step=sum(n for n, _ in table.values()) / steps,
                busy_us_per_step=sum(t for _, t in table.values()) / steps,
                top=[dict(name=k[:120], per_step=n / steps, us_per_step=t / steps) for k, (n, t) in rows[:top]])

def _seconds_and_peak(fn, dev):
    "Median seconds of 3 runs after a warm-up, and on a GPU the peak bytes allocated above what was before (as chapter 10b)."
    from qwen3_lib.tools.bench import timed
    fn()
    seconds = statistics.median(timed(fn, dev) for _ in range(3))
    if dev != "cuda": return seconds, None
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize()
    return seconds, torch.cuda.max_memory_allocated() - base

def prefill_sweep(model, L: int, chunks, dev, log, split_chunks=(), split_kv_heads=(None,)) -> list:
    """Time and peak of chunked (chunks; None = one pass) and split prefills of L tokens (chapter 09a).
    split_kv_heads: key/value heads per attention call of the split prefill (None: all in one call)."""
    from qwen3_lib.config import kv_cache_bytes
    from qwen3_lib.kv_cache import KVCache
    from qwen3_lib.prefill import prefill, prefill_split
    from qwen3_lib.tokenizer import ENDOFTEXT_ID
    dtype = next(model.parameters()).dtype
    kv = kv_cache_bytes(model.cfg, L, 1, dtype)
    ids = torch.randint(0, min(model.cfg.vocab_size, ENDOFTEXT_ID), (1, L), device=dev)
    cache = lambda: KVCache(model.cfg, 1, L, device=dev, dtype=dtype)
    out = []
    runs = [(False, c, None) for c in chunks] + [(True, c, n) for c in split_chunks for n in split_kv_heads]
    for split, c, n in runs:
        fn = (lambda: prefill_split(model, ids, cache(), c, n)) if split else (lambda: prefill(model, ids, cache(), c))
        seconds, peak = _seconds_and_peak(fn, dev)
        row = dict(chunk_size=c, split=split, kv_heads_per_call=n, seconds=seconds, peak_above_weights_bytes=peak,
                   peak_above_kv_gib=None if peak is None else (peak - kv) / 2**30)
        out.append(row)
        log(f"prefill {L} {'split, ' if split else ''}chunk {c}{f', {n} KV heads a call' if n else ''}: {seconds:.3f} s"
            + ("" if peak is None else f", KV + {row['peak_above_kv_gib']:.3f} GiB"))
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=None,
                    help=f"default on CUDA: {' '.join(CUDA_VARIANTS)}; on a CPU: {' '.join(CPU_VARIANTS)}")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick check")
    ap.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    ap.add_argument("--prefill-length", type=int, default=40_960)
    ap.add_argument("--chunks", nargs="*", type=int, default=[0, 4096, 8192, 16384], help="0 = one pass")
    ap.add_argument("--split-chunks", nargs="*", type=int, default=[2048, 4096],
                    help="chunk sizes for prefill_split (attention in one pass, the rest in chunks)")
    ap.add_argument("--split-kv-heads", nargs="*", type=int, default=[0, 1],
                    help="key/value heads per attention call for prefill_split (0 = all in one call)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--out", required=True, metavar="FILE", help="where to write the JSON")
    a = ap.parse_args(argv)
    dev = a.device
    names = a.variants or (CUDA_VARIANTS if dev == "cuda" else CPU_VARIANTS)
    for name in names:
        try: variant_options(name, dev)
        except ValueError as e: ap.error(str(e))
    from qwen3_lib import Qwen3ForCausalLM, FastQwen3, __version__
    from qwen3_lib.tools.bench import device_name
    cfg = config(a.layers, a.tiny)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg, device=dev, dtype=getattr(torch, a.dtype)).eval()
    S = 16 + a.new_tokens
    ref = FastQwen3(model, S, a.batch_size)                 # the library's eager step: what every variant must give
    result = dict(device=device_name(dev), torch=torch.__version__, qwen3_lib=__version__,
                  date=datetime.date.today().isoformat(), dtype=a.dtype, layers=cfg.num_hidden_layers,
                  config="Qwen3-0.6B" if a.layers is None and not a.tiny else "custom", batch_size=a.batch_size,
                  variants={}, prefill=[])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['device']} | torch {torch.__version__} | {a.dtype} | batch {a.batch_size} | "
          f"{cfg.num_hidden_layers} layers", flush=True)
    if (a.chunks or a.split_chunks) and a.prefill_length:
        try:
            result["prefill"] = prefill_sweep(model, a.prefill_length, [c or None for c in a.chunks], dev, print,
                                             a.split_chunks, [n or None for n in a.split_kv_heads])
        except Exception as e:
            traceback.print_exc(); result["prefill_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        save()
    for name in names:
        torch._dynamo.reset()
        try:
            t0 = time.perf_counter()
            fast = build(model, name, S, a.batch_size)
            with torch.inference_mode():                     # the first step compiles and records
                fast.step(torch.zeros(a.batch_size, 1, dtype=torch.long, device=dev), fast.positions[16:17])
            ready = time.perf_counter() - t0
            r = dict(options=variant_options(name, dev), ready_s=ready,
                     **time_variant(fast, ref, dev, a.steps, a.new_tokens), **profile_variant(fast, dev))
        except Exception as e:
            traceback.print_exc()
            r = dict(error=f"{type(e).__name__}: {str(e)[:500]}")
        result["variants"][name] = r; save()
        fast = None
        if dev == "cuda": torch.cuda.empty_cache()
        if "error" in r: print(f"== {name}: FAILED {r['error']}", flush=True); continue
        print(f"== {name}: ready in {r['ready_s']:.1f} s | step {r['ms_per_step']:.3f} ms | generate {r['generate_tok_s']:.1f} tok/s"
              f" | {r['kernels_per_step']:.0f} kernels, {r['busy_us_per_step'] / 1e3:.3f} ms busy | logits rel diff {r['logits_rel_diff']:.1e}", flush=True)
        for k in r["top"]:
            print(f"   {k['us_per_step']:8.1f} us {k['per_step']:6.1f}x  {k['name'][:110]}")
    print("wrote", out)

if __name__ == "__main__":
    main()
