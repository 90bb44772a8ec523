"""Decode speed and accuracy of bfloat16, int8 and int4 weights (chapters 10a, 12), in one process on the same random weights.

    python benchmarks/bench_quant.py --out figures/data/bench_quant_cpu.json   # Qwen3-0.6B: tens of minutes on 2 cores
    python benchmarks/bench_quant.py --tiny                                    # a miniature model: minutes (it compiles)

Chapter 10b's rules (qwen3_lib.tools.bench.time_decode): every contender is built and warmed up first, then all are
timed round-robin, `repeats` times, and the median is reported; decode time per token is (t_N - t_1) / (N - 1), so
the prefill and the first token are not in it. Each contender's greedy tokens are compared with the first's (bfloat16
generate): `first_divergence` is the first step at which they differ (None: never).

Accuracy, for every contender: its decode logits at `--accuracy-positions` positions of a random prompt, fed one
token a step as decoding feeds them, against the float32 model of the same weights in one forward pass: the mean
cosine similarity and the fraction of positions whose top-1 token agrees.

llama.cpp runs the same weights as GGUF files when `import llama_cpp` works (pip install llama-cpp-python: optional,
not in requirements.txt): bf16 and Q8_0 written by qwen3_lib.quant.export_gguf, Q4_0 made from the bf16 file by
llama.cpp's own quantizer. `meta` names its version and its build (llama_print_system_info).
"""
import argparse, copy, ctypes, gc, sys, tempfile, time
from pathlib import Path
import torch, torch.nn.functional as F
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, generate, FastQwen3, Qwen3Tokenizer
from qwen3_lib.kv_cache import KVCache
from qwen3_lib.fast import decode_bytes_per_token
from qwen3_lib.quant import quantize, quantized_bytes, export_gguf
from qwen3_lib.tools.bench import time_decode, copy_bandwidth, transformers_twin, CONTENDERS
from qwen3_lib.tools.records import record_meta, save_record

def accuracy(logits, ref) -> dict:
    "logits, ref (T, V) -> mean cosine similarity and top-1 agreement over the T positions (float64 arithmetic)."
    logits, ref = logits.double(), ref.double()
    return dict(logits_cosine=F.cosine_similarity(logits, ref, dim=-1).mean().item(),
                top1_agreement=(logits.argmax(-1) == ref.argmax(-1)).float().mean().item())

@torch.inference_mode()
def cached_logits(model, ids):
    "Chapter 08's decode: ids (1, T) one token a step through a KVCache -> (T, V)."
    cache = KVCache(model.cfg, 1, ids.shape[1], dtype=model.model.embed_tokens.weight.dtype)
    return torch.cat([model(ids[:, t:t + 1], kv_cache=cache)[0] for t in range(ids.shape[1])])

@torch.inference_mode()
def fast_logits(fast, ids):
    "A FastQwen3's steps, one token each -> (T, V)."
    return torch.stack([fast.step(ids[:, t:t + 1], fast.positions[t:t + 1])[0] for t in range(ids.shape[1])])

@torch.inference_mode()
def transformers_logits(ref, ids):
    "transformers' decode, one token a step with its cache -> (T, V)."
    out, past = [], None
    for t in range(ids.shape[1]):
        o = ref(ids[:, t:t + 1], past_key_values=past, use_cache=True)
        out.append(o.logits[0, -1]); past = o.past_key_values
    return torch.stack(out)

def llama_cpp_runs(model, ids, acc_ids, tmp, log) -> tuple:
    "(name -> make() for llama.cpp on GGUF files of model's weights, name -> (logits, file bytes)); empty without llama_cpp."
    try:
        import llama_cpp
    except ImportError:
        return {}, {}
    runs, scored, prompt, threads = {}, {}, ids[0].tolist(), torch.get_num_threads()
    files = {}
    for dtype in ("bf16", "q8_0"):
        files[dtype] = Path(tmp) / f"model-{dtype}.gguf"
        log(f"writing {files[dtype].name}")
        export_gguf(model, Qwen3Tokenizer(), files[dtype], dtype)
    files["q4_0"] = Path(tmp) / "model-q4_0.gguf"
    log("quantizing the bf16 GGUF to Q4_0 with llama.cpp's own quantizer")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, threads
    rc = llama_cpp.llama_model_quantize(str(files["bf16"]).encode(), str(files["q4_0"]).encode(),
                                       ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc} for {files['bf16'].name} -> Q4_0")
    for dtype, path in files.items():
        name = f"llama.cpp {dtype} GGUF"
        llm = llama_cpp.Llama(str(path), n_ctx=acc_ids.shape[1] + 8, n_threads=threads, logits_all=True, verbose=False)
        for t in acc_ids[0].tolist(): llm.eval([t])               # one token a step, as decoding feeds them
        scored[name] = (torch.from_numpy(llm.scores[:acc_ids.shape[1]].copy()), path.stat().st_size)
        del llm; gc.collect()
        def make(path=path):
            # n_batch=1: the prompt goes in one token at a time, as the accuracy run above feeds it. On a CPU with
            # AMX, llama-cpp-python 0.3.36's build crashes (SIGSEGV) in its AMX kernels on multi-token batches of
            # Q8_0 weights; the decode steps timed here are one token each either way (prefill is not in
            # ms_per_token, and llama.cpp's prefill_plus_first_ms is token by token: not comparable).
            llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=threads, n_batch=1, verbose=False)
            def run(n):
                llm.reset(); out = []
                for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                    out.append(t)
                    if len(out) == n: break
                return torch.tensor([prompt + out])
            return run
        runs[name] = make
    return runs, scored

def weight_formats(tiny: bool) -> tuple:
    """(cfg, the bfloat16 model, {name: (model, bits a weight, weight bytes a decode step reads)}) for bfloat16 and
    each quantized format, all from the same random weights (seed 0). Shared with profile_decode.py."""
    cfg = Qwen3Config.tiny(vocab_size=151_936) if tiny else Qwen3Config()
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(cfg, dtype=torch.bfloat16).eval()
    embedding = cfg.vocab_size * cfg.hidden_size * 2                  # looked up, not read whole: the head has a copy
    ways = {"bf16": (base, 16, decode_bytes_per_token(cfg))}
    for mode, g in (("int8", None), ("int8", 32), ("int4", 32)) + ((("int4", 128),) if not tiny else ()):
        bits = (8 + 16 / (g or cfg.hidden_size)) if mode == "int8" else 4 + 32 / g
        ways[mode + (f" g{g}" if g else "")] = (quantize(copy.deepcopy(base), mode, g), bits,
                                                quantized_bytes(cfg, mode, g) - embedding)
    return cfg, base, ways

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accuracy-positions", type=int, default=64, help="positions whose logits are compared with float32")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled FastQwen3 contenders")
    p.add_argument("--out", metavar="FILE", help="write the result as JSON")
    a = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    cfg, base, ways = weight_formats(a.tiny)
    ids = torch.randint(0, 151_643, (1, a.prompt_tokens))
    acc_ids = torch.randint(0, 151_643, (1, a.accuracy_positions))
    S = max(a.prompt_tokens + a.new_tokens + 1, a.accuracy_positions)   # one cache length: one compiled window
    with torch.inference_mode():
        f32 = copy.deepcopy(base).float()
        ref_logits = f32(acc_ids)[0]                                   # (T, V): the float32 model of the same weights
    del f32; gc.collect()
    fast_kinds = {"FastQwen3": {}}
    if not a.no_compile:                     # compile_layers in the weights' dtype, and computing wide in float32
        fast_kinds.update({"FastQwen3 compiled": dict(compile_layers=True),
                           "FastQwen3 f32-compute compiled": dict(compile_layers=True, compute_dtype=torch.float32)})
    runs, scores = {}, {}
    for name, (m, _, _) in ways.items():
        grouped_int8 = name.startswith("int8 g")    # no eager kernel: eagerly it widens every weight first (chapter 14)
        if not grouped_int8:
            runs[f"{name} generate"] = lambda m=m: (lambda n: generate(m, ids, n, stop_token_ids=()))
            scores[f"{name} generate"] = lambda m=m: cached_logits(m, acc_ids)
        for kind, kw in fast_kinds.items():
            if ("f32" in kind and name != "bf16") or (grouped_int8 and "compiled" not in kind):
                continue                     # computing wide is for float weights
            f = FastQwen3(m, S, **kw)
            runs[f"{name} {kind}"] = lambda f=f: (lambda n: f.generate(ids, n, stop_token_ids=()))
            scores[f"{name} {kind}"] = lambda f=f: fast_logits(f, acc_ids)
    ref = transformers_twin(base)                      # the reference, timed in the same run (chapter 10b's rule)
    runs["bf16 transformers"] = lambda: next(c for c in CONTENDERS if c.name == "transformers").make(base, ref, ids, S)
    scores["bf16 transformers"] = lambda: transformers_logits(ref, acc_ids)
    bw_before = copy_bandwidth("cpu")                  # before and after the timing: a shared machine varies
    with tempfile.TemporaryDirectory() as tmp:
        llama, llama_scored = llama_cpp_runs(base, ids, acc_ids, tmp, log)
        runs.update(llama)
        acc = {n: accuracy(lg, ref_logits) for n, (lg, _) in llama_scored.items()}
        skipped = [f"{n} generate and FastQwen3 (eager): int8 in groups has no eager kernel, it is made for the "
                   "compiled step" for n in ways if n.startswith("int8 g")]
        for n, score in scores.items():               # compiles the compiled contenders: their build time is here
            try:
                t0 = time.perf_counter(); acc[n] = accuracy(score(), ref_logits)
            except Exception as e:                    # reported; the contender is not timed
                skipped.append(f"{n}: {type(e).__name__}: {str(e)[:300]}"); runs.pop(n); continue
            acc[n]["accuracy_s"] = time.perf_counter() - t0
            log(f"{n:34s} cosine {acc[n]['logits_cosine']:.6f}  top-1 {acc[n]['top1_agreement']:.3f}  "
                f"({acc[n]['accuracy_s']:.0f} s, compilation included)")
        log(f"timing {', '.join(runs)}: {a.repeats} round-robin repeats of {a.new_tokens} tokens")
        times, _ = time_decode(runs, "cpu", a.prompt_tokens, a.new_tokens, a.repeats, skipped=skipped)
    bw = max(bw_before, copy_bandwidth("cpu"))
    meta = record_meta(cfg, "cpu", True, not a.no_compile, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens,
                       repeats=a.repeats,
                       threads=torch.get_num_threads(), copy_bandwidth_GBps=bw / 1e9,
                       accuracy_positions=a.accuracy_positions, accuracy_reference="float32 model, same weights")
    if llama:
        import llama_cpp
        meta["llama_cpp_python"] = llama_cpp.__version__
        meta["llama_cpp_build"] = llama_cpp.llama_print_system_info().decode().strip()
        meta["llama_cpp_n_batch"] = 1                  # its prompt fed token by token: see llama_cpp_runs
    meta["skipped"] = skipped + ([] if llama else ["llama.cpp: llama_cpp is not importable (pip install llama-cpp-python)"])
    rows = []
    for name, t in times.items():
        way = name.split(" generate")[0].split(" FastQwen3")[0].split(" transformers")[0]
        if name.startswith("llama.cpp"):      # GGUF: bf16 as ours; Q8_0 8.5 bits a weight; Q4_0 as its file holds it
            way = "bf16" if "bf16" in name else None
            nbytes = ways["bf16"][2] if way else (ways["bf16"][2] * 8.5 / 16 if "q8_0" in name else llama_scored[name][1])
            bits = 16 if way else (8.5 if "q8_0" in name else None)
        else:
            bits, nbytes = ways[way][1:] if way in ways else (None, None)
        rows.append(dict(contender=name, bits_per_weight=bits, bytes_per_token=nbytes, tokens_per_s=1e3 / t["ms_per_token"],
                         roofline_tokens_per_s=bw / nbytes if nbytes else None, **t, **acc.get(name, {})))
    result = {"meta": meta, "decode": rows}
    for r in rows:
        print(f"{r['contender']:34s} {r['tokens_per_s']:6.1f} tok/s  cosine {r.get('logits_cosine', float('nan')):.6f}"
              f"  top-1 {r.get('top1_agreement', float('nan')):.3f}  first divergence {r['first_divergence']}")
    if a.out:
        save_record(result, a.out); print("wrote", a.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
