"""Where one decode step's time goes, for each way of building FastQwen3's step (chapter 10a).

The ways are FastQwen3's two options: eager, graph (cuda_graph=True), layers (compile_layers=True) and
layers+graph (both). For each, on the same random weights, this program times the step (the step alone, then
generate() end to end as chapter 10b's benchmark counts it), compares its logits with the eager step's, and
profiles it: kernels (GPU) or operators (CPU) per step, device time per step, the top ones by time. Each way is
saved as it finishes; chapter 10b reads figures/data/variants_gpu.json.
    python benchmarks/compare_variants.py --out variants.json [--ways eager layers] [--layers 4] [--tiny]
"""
import argparse, dataclasses, datetime, json, os, statistics, time, traceback
os.environ.setdefault("KINETO_LOG_LEVEL", "6")      # keep the profiler's start/stop lines off the output
from collections import defaultdict
from pathlib import Path
import torch
from torch.profiler import profile, ProfilerActivity

WAYS = {"eager": {}, "graph": dict(cuda_graph=True), "layers": dict(compile_layers=True),
        "layers+graph": dict(compile_layers=True, cuda_graph=True)}
P = 16                                               # prompt tokens before the timed steps

def config(layers: int = None, tiny: bool = False):
    "Qwen3-0.6B's config, or the miniature one (with the real vocabulary), with `layers` layers if given."
    from qwen3_lib import Qwen3Config
    cfg = Qwen3Config.tiny(vocab_size=151_936) if tiny else Qwen3Config()
    return cfg if layers is None else dataclasses.replace(cfg, num_hidden_layers=layers)

def _prompt(fast, dev):
    from qwen3_lib.tokenizer import ENDOFTEXT_ID
    return torch.randint(0, min(fast.cfg.vocab_size, ENDOFTEXT_ID), (fast.batch_size, P), device=dev,
                         generator=torch.Generator(dev).manual_seed(1))

def time_way(fast, ref, dev, steps: int, new_tokens: int) -> dict:
    "ms per step (steps alone), decode tok/s from generate() as the benchmark counts it, logits against ref's."
    from qwen3_lib.tools.bench import timed
    prompt = _prompt(fast, dev)
    room = fast.max_seq_len - P - 1
    with torch.inference_mode():
        fast.prefill(prompt); ref.prefill(prompt)
        nxt = prompt[:, -1:].clone()
        for s in range(3): fast.step(nxt, fast.positions[P + s:P + s + 1])     # warm-up: compile, record
        pos = fast.positions[P:P + 1]
        got, want = fast.step(nxt, pos).float().clone(), ref.forward(nxt, pos).float()
        def replays():
            for s in range(steps): fast.step(nxt, fast.positions[P + s % room:P + 1 + s % room])
        ms = timed(replays, dev) / steps * 1e3
    gen = lambda n: timed(lambda: fast.generate(prompt, n, stop_token_ids=()), dev)
    gen(new_tokens)
    t1 = statistics.median(gen(1) for _ in range(3)); tn = statistics.median(gen(new_tokens) for _ in range(3))
    return dict(ms_per_step=ms, generate_tok_s=fast.batch_size * (new_tokens - 1) / max(tn - t1, 1e-9),
                logits_rel_diff=((got - want).abs().max() / want.abs().max()).item())

def profile_way(fast, dev, steps: int = 10, top: int = 10) -> dict:
    "Kernels (GPU) or top-level operators (CPU) per step, busy time per step and the top ones by time."
    cuda = dev == "cuda"
    prompt = _prompt(fast, dev)
    nxt, room = prompt[:, -1:].clone(), fast.max_seq_len - P
    with torch.inference_mode():
        fast.prefill(prompt)
        for s in range(3): fast.step(nxt, fast.positions[P + s:P + s + 1])
        if cuda: torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for s in range(steps): fast.step(nxt, fast.positions[P + (3 + s) % room:P + 1 + (3 + s) % room])
            if cuda: torch.cuda.synchronize()
    table = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
            table[e.name][0] += 1; table[e.name][1] += e.device_time
        elif not cuda and e.name.startswith(("aten::", "mkldnn::", "qwen3_lib::")) and e.cpu_parent is None:
            table[e.name][0] += 1; table[e.name][1] += e.cpu_time
    rows = sorted(table.items(), key=lambda kv: -kv[1][1])
    return dict(kernels_per_step=sum(n for n, _ in table.values()) / steps,
                busy_us_per_step=sum(t for _, t in table.values()) / steps,
                top=[dict(name=k[:120], per_step=n / steps, us_per_step=t / steps) for k, (n, t) in rows[:top]])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ways", nargs="+", choices=list(WAYS), default=None,
                    help="default: all four on CUDA, eager and layers on a CPU")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per way")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick check")
    ap.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--out", required=True, metavar="FILE", help="where to write the JSON")
    a = ap.parse_args(argv)
    dev = a.device
    ways = a.ways or (list(WAYS) if dev == "cuda" else ["eager", "layers"])
    if dev != "cuda" and any(WAYS[w].get("cuda_graph") for w in ways):
        ap.error(f"{[w for w in ways if 'graph' in w]} record a CUDA graph: they need --device cuda")
    from qwen3_lib import Qwen3ForCausalLM, FastQwen3, __version__
    from qwen3_lib.tools.records import device_name
    cfg = config(a.layers, a.tiny)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg, device=dev, dtype=getattr(torch, a.dtype)).eval()
    S = P + a.new_tokens
    ref = FastQwen3(model, S, a.batch_size)               # the eager step: what every way must compute
    result = dict(device=device_name(dev), device_type=torch.device(dev).type, torch=torch.__version__,
                  qwen3_lib=__version__, date=datetime.date.today().isoformat(), dtype=a.dtype,
                  layers=cfg.num_hidden_layers, batch_size=a.batch_size, variants={})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{result['device']} | torch {torch.__version__} | {a.dtype} | batch {a.batch_size} | "
          f"{cfg.num_hidden_layers} layers", flush=True)
    for name in ways:
        torch._dynamo.reset()
        try:
            t0 = time.perf_counter()
            fast = FastQwen3(model, S, a.batch_size, **WAYS[name])
            with torch.inference_mode():                       # the first step compiles and records
                fast.step(torch.zeros(a.batch_size, 1, dtype=torch.long, device=dev), fast.positions[P:P + 1])
            r = dict(options=WAYS[name], ready_s=time.perf_counter() - t0,
                     **time_way(fast, ref, dev, a.steps, a.new_tokens), **profile_way(fast, dev))
        except Exception as e:                                 # reported; the other ways still run
            traceback.print_exc()
            r = dict(error=f"{type(e).__name__}: {str(e)[:500]}")
        result["variants"][name] = r
        out.write_text(json.dumps(result, indent=1) + "\n")
        fast = None
        if dev == "cuda": torch.cuda.empty_cache()
        if "error" in r: print(f"== {name}: FAILED {r['error']}", flush=True); continue
        print(f"== {name}: ready in {r['ready_s']:.1f} s | step {r['ms_per_step']:.3f} ms | generate "
              f"{r['generate_tok_s']:.1f} tok/s | {r['kernels_per_step']:.0f} {'kernels' if dev == 'cuda' else 'operators'}, "
              f"{r['busy_us_per_step'] / 1e3:.3f} ms busy | logits rel diff {r['logits_rel_diff']:.1e}", flush=True)
        for k in r["top"]:
            print(f"   {k['us_per_step']:8.1f} us {k['per_step']:6.1f}x  {k['name'][:110]}")
    print("wrote", out)

if __name__ == "__main__":
    main()
