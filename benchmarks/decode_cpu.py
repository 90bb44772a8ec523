"""Decode speed of the full Qwen3-0.6B (random weights): qwen3_lib vs transformers, with and without a KV cache.

One process, the same weights for every contender, one warm-up run excluded, median of --repeats runs.
Each run generates --new-tokens greedy tokens after a --prompt-tokens prompt; tokens/s = new tokens /
wall time of the whole call (prefill included). --out FILE writes the rows as JSON (figures/data/decode_cpu.json
holds a recorded run).
    python benchmarks/decode_cpu.py [--new-tokens 16] [--prompt-tokens 32] [--repeats 3] [--dtypes float32 bfloat16] [--out FILE]
"""
import argparse, datetime, json, statistics, time
from pathlib import Path
import torch

def timed(fn, repeats):
    fn()                                                       # warm-up, excluded
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), out

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--out", default=None, metavar="FILE", help="also write the result as JSON")
    args = ap.parse_args()
    import transformers
    from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, generate
    from qwen3_lib.tokenizer import ENDOFTEXT_ID
    from qwen3_lib.tools.bench import device_name, transformers_twin
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    N, P = args.new_tokens, args.prompt_tokens
    ids = torch.randint(0, ENDOFTEXT_ID, (1, P))
    ours = Qwen3ForCausalLM(Qwen3Config()).eval()
    ref = transformers_twin(ours)                                          # transformers, same weights, its default (sdpa) attention
    mask = torch.ones_like(ids)

    def ours_cache(): return generate(ours, ids, N, stop_token_ids=())
    def ours_nocache():
        seq = ids
        with torch.inference_mode():
            for _ in range(N):
                seq = torch.cat([seq, ours(seq, logits_to_keep=1)[:, -1:].argmax(-1)], 1)
        return seq
    def hf(use_cache):
        def run():
            with torch.inference_mode():
                return ref.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N, min_new_tokens=N,
                                    eos_token_id=None, pad_token_id=0, use_cache=use_cache)
        return run

    rows = []
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        ours.to(dtype); ref.to(dtype)
        outs = {}
        for name, fn in [("qwen3_lib, KV cache", ours_cache), ("qwen3_lib, no cache", ours_nocache),
                         ("transformers, KV cache", hf(True)), ("transformers, no cache", hf(False))]:
            t, out = timed(fn, args.repeats)
            outs[name] = out
            rows.append(dict(dtype=dt, contender=name, seconds=t, tokens_per_s=N / t, ms_per_token=1e3 * t / N))
            print(f"  {dt:<9} {name:<24} {N / t:7.2f} tok/s  ({1e3 * t / N:7.1f} ms/token)", flush=True)
        same = torch.equal(outs["qwen3_lib, KV cache"], outs["transformers, KV cache"])
        rows.append(dict(dtype=dt, contender="greedy tokens identical (ours vs transformers, cached)", value=same))

    print(f"\nQwen3-0.6B random weights, prompt {P} tokens, {N} new greedy tokens, batch 1")
    print(f"machine: {device_name('cpu')}, torch {torch.__version__} (threads {torch.get_num_threads()}), "
          f"transformers {transformers.__version__}")
    print(f"{'dtype':<10}{'contender':<26}{'tok/s':>8}{'ms/token':>10}{'vs transformers':>17}")
    for r in rows:
        if "value" in r:
            print(f"{r['dtype']:<10}{r['contender']}: {r['value']}"); continue
        base = next(x for x in rows if x["dtype"] == r["dtype"] and x.get("contender") ==
                    ("transformers, KV cache" if "KV cache" in r["contender"] else "transformers, no cache"))
        print(f"{r['dtype']:<10}{r['contender']:<26}{r['tokens_per_s']:8.2f}{r['ms_per_token']:10.1f}"
              f"{r['tokens_per_s'] / base['tokens_per_s']:16.2f}x")
    meta = dict(device=device_name("cpu"), torch=torch.__version__, transformers=transformers.__version__,
                date=datetime.date.today().isoformat(), prompt_tokens=P, new_tokens=N, repeats=args.repeats)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
        print("wrote", args.out)

if __name__ == "__main__":
    main()
