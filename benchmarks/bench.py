"""Decode and prefill speed of every contender, ours and transformers', in one process on the same weights.

    python benchmarks/bench.py                      # this machine's defaults: see --help
    python benchmarks/bench.py --out bench.json     # also write the result as JSON
    python benchmarks/bench.py --tiny               # a miniature model: seconds, for checking the machinery

The measurement itself is qwen3_lib.tools.bench (chapter 10b), which states the rules it follows.
"""
import argparse, sys
import torch
from qwen3_lib.config import Qwen3Config
from qwen3_lib.tools.bench import run_benchmark
from qwen3_lib.tools.records import results_table, save_record

def main(argv=None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if gpu else "cpu")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"],
                   default=["bfloat16"] if gpu else ["float32", "bfloat16"])
    p.add_argument("--tiny", action="store_true", help="a miniature config: fast, numbers not comparable")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64 if gpu else 16, help="N: decode time per token = (t_N - t_1) / (N - 1)")
    p.add_argument("--repeats", type=int, default=3, help="round-robin repeats; the median is reported")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64] if gpu else [1])
    p.add_argument("--full-batch-sizes", nargs="+", type=int, default=[1],
                   help="batch sizes at which the compiled and transformers contenders run too")
    p.add_argument("--prefill-lengths", nargs="*", type=int, default=[1024, 4096, 16384, 40960] if gpu else [])
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled contenders")
    p.add_argument("--no-transformers", action="store_true", help="leave out transformers")
    p.add_argument("--out", metavar="FILE", help="write the result as JSON (after every section: a run cut short keeps what it measured)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not gpu: p.error("--device cuda, but no CUDA device is available")
    if a.new_tokens < 2: p.error("--new-tokens must be >= 2")
    if min(a.batch_sizes) < 1 or a.repeats < 1 or a.prompt_tokens < 1: p.error("sizes and --repeats must be >= 1")
    def save(result):                                   # whole or not at all: appendix A6
        if a.out: save_record(result, a.out)
    cfg = Qwen3Config.tiny(vocab_size=151_936) if a.tiny else Qwen3Config()
    result = run_benchmark(cfg, a.device, a.dtypes, a.prompt_tokens, a.new_tokens, a.repeats, a.batch_sizes,
                           a.full_batch_sizes, a.prefill_lengths, not a.no_compile, not a.no_transformers,
                           log=lambda s: print(s, file=sys.stderr, flush=True), on_section=save)
    save(result)
    for B in a.batch_sizes:
        print(results_table(result, B), end="\n\n")
    for s in result["meta"]["skipped"]:
        print("skipped:", s)
    if a.out: print("wrote", a.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
