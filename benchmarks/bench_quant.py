"""Decode speed of bfloat16, int8 and int4 weights (chapter 12), in one process on the same random weights.

    python benchmarks/bench_quant.py --out figures/data/bench_quant_cpu.json   # Qwen3-0.6B, a few minutes on 2 cores
    python benchmarks/bench_quant.py --tiny                                    # a miniature model: seconds

Chapter 10b's rules (qwen3_lib.tools.bench.time_decode): every contender is built and warmed up first, then all are
timed round-robin, `repeats` times, and the median is reported; decode time per token is (t_N - t_1) / (N - 1), so
the prefill and the first token are not in it. Each contender's greedy tokens are compared with the first's (bfloat16
generate): `first_divergence` is the first step at which they differ (None: never), which quantization is expected to
move, not to make nonsense of. llama.cpp runs the same weights as GGUF files when `import llama_cpp` works.
"""
import argparse, copy, sys, tempfile, time
from pathlib import Path
import torch
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, generate, FastQwen3, Qwen3Tokenizer
from qwen3_lib.fast import decode_bytes_per_token
from qwen3_lib.quant import quantize, quantized_bytes, export_gguf
from qwen3_lib.tools.bench import time_decode, copy_bandwidth, transformers_twin, CONTENDERS
from qwen3_lib.tools.records import record_meta, save_record

def llama_cpp_runs(model, ids, dtypes, tmp, log) -> dict:
    "name -> make() for llama.cpp on GGUF files of model's weights (empty if llama_cpp is not importable)."
    try:
        import llama_cpp
    except ImportError:
        return {}
    runs, prompt = {}, ids[0].tolist()
    for dtype in dtypes:
        path = Path(tmp) / f"model-{dtype}.gguf"
        log(f"writing {path.name}")
        export_gguf(model, Qwen3Tokenizer(), path, dtype)
        def make(path=path):
            llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=torch.get_num_threads(), verbose=False)
            def run(n):
                llm.reset(); out = []
                for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                    out.append(t)
                    if len(out) == n: break
                return torch.tensor([prompt + out])
            return run
        runs[f"llama.cpp {dtype} GGUF"] = make
    return runs

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", metavar="FILE", help="write the result as JSON")
    a = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    cfg = Qwen3Config.tiny(vocab_size=151_936) if a.tiny else Qwen3Config()
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(cfg, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 151_643, (1, a.prompt_tokens))
    S = a.prompt_tokens + a.new_tokens + 1
    ways = {"bf16": (base, 16, decode_bytes_per_token(cfg))}
    for mode, g in (("int8", 32), ("int4", 32)) + ((("int4", 128),) if not a.tiny else ()):
        m = quantize(copy.deepcopy(base), mode, g)
        bits = 8 + 16 / cfg.hidden_size if mode == "int8" else 4 + 32 / g
        ways[f"{mode}" + (f" g{g}" if mode == "int4" else "")] = (m, bits, quantized_bytes(cfg, mode, g) -
                                                                  cfg.vocab_size * cfg.hidden_size * 2)
    runs = {"bf16 generate": lambda: (lambda n: generate(base, ids, n, stop_token_ids=())),
            "bf16 FastQwen3": lambda: (lambda f: lambda n: f.generate(ids, n, stop_token_ids=()))(FastQwen3(base, S))}
    for name, (m, _, _) in list(ways.items())[1:]:
        runs[f"{name} generate"] = lambda m=m: (lambda n: generate(m, ids, n, stop_token_ids=()))
        runs[f"{name} FastQwen3"] = lambda m=m: (lambda f: lambda n: f.generate(ids, n, stop_token_ids=()))(FastQwen3(m, S))
    ref = transformers_twin(base)                      # the reference, timed in the same run (chapter 10b's rule)
    runs["bf16 transformers"] = lambda: next(c for c in CONTENDERS if c.name == "transformers").make(base, ref, ids, S)
    bw_before = copy_bandwidth("cpu")                  # before and after the timing: a shared machine varies
    with tempfile.TemporaryDirectory() as tmp:
        runs.update(llama_cpp_runs(base, ids, ["bf16", "q8_0"], tmp, log))
        log(f"timing {', '.join(runs)}: {a.repeats} round-robin repeats of {a.new_tokens} tokens")
        skipped = []
        times, _ = time_decode(runs, "cpu", a.prompt_tokens, a.new_tokens, a.repeats, skipped=skipped)
    bw = max(bw_before, copy_bandwidth("cpu"))
    meta = record_meta(cfg, "cpu", True, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, repeats=a.repeats,
                       threads=torch.get_num_threads(), copy_bandwidth_GBps=bw / 1e9)
    if any(n.startswith("llama.cpp") for n in runs):
        import llama_cpp
        meta["llama_cpp_python"] = llama_cpp.__version__
    meta["skipped"] = skipped + ([] if any(n.startswith("llama.cpp") for n in runs) else
                                 ["llama.cpp: llama_cpp is not importable (pip install llama-cpp-python)"])
    rows = []
    for name, t in times.items():
        way = name.split(" generate")[0].split(" FastQwen3")[0].split(" transformers")[0]
        if name.startswith("llama.cpp"):                 # GGUF: bf16 as ours; Q8_0 is 8.5 bits for every matrix
            way = "bf16" if "bf16" in name else None
            bits, nbytes = (16, ways["bf16"][2]) if way else (8.5, ways["bf16"][2] * 8.5 / 16)
        else:
            bits, nbytes = ways[way][1:] if way in ways else (None, None)
        rows.append(dict(contender=name, bits_per_weight=bits, bytes_per_token=nbytes, tokens_per_s=1e3 / t["ms_per_token"],
                         roofline_tokens_per_s=bw / nbytes if nbytes else None, **t))
    result = {"meta": meta, "decode": rows}
    for r in rows:
        print(f"{r['contender']:28s} {r['tokens_per_s']:6.1f} tok/s  first divergence {r['first_divergence']}")
    if a.out:
        save_record(result, a.out); print("wrote", a.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
