"""Where one decode step's time goes: the kernels (GPU) or operators (CPU) of FastQwen3's step, by total time.

For each variant (the library's ways: eager, graph, layers, layers+graph; or any experiment of experiments.py, e.g.
step, layers+graph+fold) it fills the cache with a 16-token prompt, warms up, profiles --steps decode steps and
prints the kernel count per step and the top kernels by device time (CPU: operators by CPU time).
    python benchmarks/profile_decode.py [--device cuda] [--variants eager graph layers+graph] [--steps 20] [--out FILE]
"""
import argparse, dataclasses, datetime, json, os, time
os.environ.setdefault("KINETO_LOG_LEVEL", "6")      # keep the profiler's start/stop lines off the output
from collections import defaultdict
from pathlib import Path
import torch
from torch.profiler import profile, ProfilerActivity
from experiments import build, variant_options   # benchmarks/ is on the path when run as a script

def profile_steps(fast, steps, cuda):
    "Profile `steps` single-token decode steps; returns (seconds per step, {name: (count, total device or CPU us)})."
    from qwen3_lib.tokenizer import ENDOFTEXT_ID
    P = 16
    ids = torch.randint(0, min(fast.cfg.vocab_size, ENDOFTEXT_ID), (fast.batch_size, P), device=fast.kv_cache.device)
    nxt = ids[:, -1:].clone()
    room = fast.max_seq_len - P                                        # positions after the prompt, reused in turn
    at = lambda s: fast.positions[P + s % room:P + 1 + s % room]
    with torch.inference_mode():
        fast.prefill(ids)
        for s in range(3):                                              # warm-up: compile, capture, allocate
            fast.step(nxt, at(s))
        if cuda: torch.cuda.synchronize()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for s in range(steps):
                fast.step(nxt, at(3 + s))
            if cuda: torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / steps
    table = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
            table[e.name][0] += 1; table[e.name][1] += e.device_time
        elif not cuda and e.name.startswith(("aten::", "mkldnn::", "qwen3_lib::")) and e.cpu_parent is None:
            table[e.name][0] += 1; table[e.name][1] += e.cpu_time
    return wall, {k: tuple(v) for k, v in table.items()}

def config(layers: int = None, tiny: bool = False):
    "Qwen3-0.6B's config, or the miniature one (with the real vocabulary), with `layers` layers if given."
    from qwen3_lib import Qwen3Config
    cfg = Qwen3Config.tiny(vocab_size=151_936) if tiny else Qwen3Config()
    return cfg if layers is None else dataclasses.replace(cfg, num_hidden_layers=layers)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--variants", nargs="+", default=None, help="variant names (see experiments.variant_options)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (for a quick check); default: the full 28")
    ap.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    ap.add_argument("--out", default=None, help="also write the tables as JSON")
    a = ap.parse_args(argv)
    from qwen3_lib import Qwen3ForCausalLM, __version__
    from qwen3_lib.tools.bench import device_name
    cuda = a.device == "cuda"
    variants = a.variants or (["eager", "graph", "layers+graph"] if cuda else ["eager"])
    for v in variants:
        try: variant_options(v, a.device)
        except ValueError as e: ap.error(str(e))
    cfg = config(a.layers, a.tiny)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg, device=a.device, dtype=getattr(torch, a.dtype)).eval()
    print(f"{device_name(a.device)} | torch {torch.__version__} | {a.dtype} | batch 1 | {cfg.num_hidden_layers} layers")
    report = {}
    for v in variants:
        torch._dynamo.reset()
        fast = build(model, v, 64)
        wall, table = profile_steps(fast, a.steps, cuda)
        count = sum(n for n, _ in table.values()) / a.steps
        busy = sum(t for _, t in table.values()) / a.steps
        print(f"\n== {v}: {wall * 1e3:.3f} ms per step (under the profiler), {count:.0f} "
              f"{'kernels' if cuda else 'operators'} per step, {busy / 1e3:.3f} ms of {'device' if cuda else 'CPU'} time")
        rows = sorted(table.items(), key=lambda kv: -kv[1][1])[:a.top]
        for name, (n, t) in rows:
            print(f"  {t / a.steps:9.1f} us {n / a.steps:6.1f}x  {name[:100]}")
        report[v] = dict(ms_per_step=wall * 1e3, per_step_count=count, per_step_busy_us=busy,
                         top=[dict(name=k, per_step_count=n / a.steps, per_step_us=t / a.steps) for k, (n, t) in rows])
        del fast
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(dict(device=device_name(a.device), torch=torch.__version__, qwen3_lib=__version__,
                                               date=datetime.date.today().isoformat(), dtype=a.dtype,
                                               layers=cfg.num_hidden_layers, report=report), indent=1) + "\n")

if __name__ == "__main__":
    main()
