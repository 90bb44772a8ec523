"""Where one decode step's time goes: the kernels (GPU) or operators (CPU) of FastQwen3's step, by total time.

Chapter 10a finds the compiled GPU step at 1.74 ms against a 0.29 ms roofline and argues that the
chain of small kernels, not bytes, is the cost; this program measures that chain. For each variant
(eager, hand-recorded CUDA graph, compiled layers in a hand graph, whole step compiled) it profiles --steps decode steps after a warm-up and
prints the kernel count per step and the top kernels by device time (CPU: operators by CPU time).
    python benchmarks/profile_decode.py [--device cuda] [--variants eager graph compiled] [--steps 20]
"""
import argparse, json, time
from collections import defaultdict
from pathlib import Path
import torch
from torch.profiler import profile, ProfilerActivity

def profile_steps(fast, steps, cuda):
    "Profile `steps` single-token decode steps; returns (seconds per step, {name: (count, total device or CPU us)})."
    ids = torch.randint(0, 151_643, (fast.batch_size, 16), device=fast.kv_cache.device)
    nxt = ids[:, -1:].clone()
    room = fast.max_seq_len - 16                                       # positions after the prompt, reused in turn
    at = lambda s: fast.positions[16 + s % room:17 + s % room]
    with torch.inference_mode():
        fast.forward(ids, fast.positions[:16])
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

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--variants", nargs="+", default=None, choices=["eager", "graph", "layers", "compiled"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (for a quick check); default: the full 28")
    ap.add_argument("--out", default=None, help="also write the tables as JSON")
    a = ap.parse_args(argv)
    from qwen3_lib import Qwen3Config, Qwen3Model
    from qwen3_lib.fast import FastQwen3
    from qwen3_lib.bench import device_name
    cuda = a.device == "cuda"
    variants = a.variants or (["eager", "graph", "layers", "compiled"] if cuda else ["eager"])
    cfg = Qwen3Config() if a.layers is None else Qwen3Config(num_hidden_layers=a.layers)
    torch.manual_seed(0)
    model = Qwen3Model(cfg, device=a.device, dtype=getattr(torch, a.dtype)).eval()
    print(f"{device_name(a.device)} | torch {torch.__version__} | {a.dtype} | batch 1 | {cfg.num_hidden_layers} layers")
    report = {}
    for v in variants:
        fast = FastQwen3(model, 64)
        if v == "layers": fast.compile_layers()
        if v in ("graph", "layers") and cuda: fast.cuda_graph()
        if v == "compiled": fast.compile()
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
    if a.out:
        Path(a.out).write_text(json.dumps(dict(device=device_name(a.device), torch=torch.__version__, dtype=a.dtype,
                                               report=report), indent=1) + "\n")

if __name__ == "__main__":
    main()
