"""Speed of one MoE block on this machine's CPU: the naive loop, grouped dispatch, and transformers' two.

One process, the same weights and the same tokens for every contender. The block has the routing of
Qwen3-30B-A3B (128 experts, 8 per token, renormalised) at a reduced width (--hidden, --moe-intermediate:
a quarter of the real 2048 and 768 by default). For each number of tokens N, every contender runs once to
warm up, then --repeats times in round-robin order; tokens/s = N / median time of one block forward
(router + experts). Outputs are compared with the grouped dispatch's. Writes figures/data/moe_dispatch_cpu.json.

    python benchmarks/moe_dispatch.py                        # about 20 s; what figures/data holds
    python benchmarks/moe_dispatch.py --tokens 1 16 --repeats 3 --out /tmp/quick.json
"""
import argparse, datetime, json, statistics, time
from pathlib import Path
import torch

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 16, 64, 256], help="tokens per block forward")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--moe-intermediate", type=int, default=192)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=15, help="round-robin repeats; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is steadiest on a shared machine)")
    p.add_argument("--no-transformers", action="store_true", help="leave out transformers' block")
    p.add_argument("--out", metavar="FILE", help="also write the result as JSON (chapter 11 draws figures/data/moe_dispatch_cpu.json)")
    a = p.parse_args(argv)
    if min(a.tokens) < 1 or a.repeats < 1: p.error("--tokens and --repeats must be >= 1")
    if not 1 <= a.top_k <= a.experts: p.error(f"--top-k must be in 1 .. --experts ({a.experts}), got {a.top_k}")

    import qwen3_lib
    from qwen3_lib.moe import Qwen3MoeConfig, Qwen3MoeSparseMoeBlock, dispatch_naive
    from qwen3_lib.tools.records import device_name
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    cfg = Qwen3MoeConfig(hidden_size=a.hidden, moe_intermediate_size=a.moe_intermediate, num_experts=a.experts,
                         num_experts_per_tok=a.top_k, num_hidden_layers=1)
    block = Qwen3MoeSparseMoeBlock(cfg)
    with torch.no_grad():
        for t in block.parameters(): t.normal_(0.0, 0.02)
    block.to(dtype).eval()

    def naive(x):
        _, w, e = block.gate(x)
        return dispatch_naive(block.experts, x, e, w)
    contenders = {"naive loop (token x choice)": naive, "grouped (sorted by expert)": block}
    if not a.no_transformers:
        import transformers
        # Both of transformers' expert implementations: the per-expert loop written in modeling_qwen3_moe.py
        # ("eager"), and the sorted, grouped product a full model chooses by default ("grouped_mm").
        for impl in ("eager", "grouped_mm"):
            hc = transformers.Qwen3MoeConfig(**cfg.to_hf())
            hc._experts_implementation = impl
            hf = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock(hc)
            hf.load_state_dict(block.state_dict(), strict=True)   # same names: gate.weight, experts.gate_up_proj, ...
            contenders[f"transformers, experts {impl}"] = hf.to(dtype).eval()

    rows = []
    for n in a.tokens:
        x = torch.randn(n, a.hidden, dtype=dtype)
        times = {name: [] for name in contenders}
        with torch.inference_mode():
            outs = {name: fn(x[None] if name.startswith("transformers") else x).reshape(n, -1)
                    for name, fn in contenders.items()}                # warm-up, excluded; outputs compared
            for _ in range(a.repeats):
                for name, fn in contenders.items():
                    arg = x[None] if name.startswith("transformers") else x
                    t0 = time.perf_counter(); fn(arg); times[name].append(time.perf_counter() - t0)
        base = outs["grouped (sorted by expert)"].float()
        for name in contenders:
            s = statistics.median(times[name])
            rows.append(dict(contender=name, tokens=n, dtype=a.dtype, seconds=s, tokens_per_s=n / s,
                             max_abs_diff=(outs[name].float() - base).abs().max().item()))
            print(f"{n:>5} tokens  {name:<36} {n / s:>10,.0f} tokens/s  ({s * 1e3:8.2f} ms)")

    hf_version = None if a.no_transformers else __import__("transformers").__version__
    result = dict(meta=dict(device=device_name("cpu"), threads=torch.get_num_threads(), torch=torch.__version__,
                            transformers=hf_version, qwen3_lib=qwen3_lib.__version__,
                            date=datetime.date.today().isoformat(), repeats=a.repeats, dtype=a.dtype,
                            block=dict(hidden_size=a.hidden, moe_intermediate_size=a.moe_intermediate,
                                       num_experts=a.experts, num_experts_per_tok=a.top_k, norm_topk_prob=True)),
                  rows=rows)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", a.out)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
