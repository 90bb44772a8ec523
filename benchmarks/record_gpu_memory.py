"""Record chapter 09b's GPU memory measurements (bf16 Qwen3-0.6B, random weights) as JSON.

    python benchmarks/record_gpu_memory.py --out gpu_memory.json
"""
import argparse, sys
from qwen3_lib.tools.records import record_gpu_memory

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the JSON")
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384, 32768, 40960])
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--no-transformers", action="store_true")
    a = p.parse_args(argv)
    try:
        record_gpu_memory(a.out, tuple(a.lengths), a.chunk_size, not a.no_transformers)
    except RuntimeError as e:
        print(f"record_gpu_memory: {e}", file=sys.stderr)
        return 1
    print("wrote", a.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
