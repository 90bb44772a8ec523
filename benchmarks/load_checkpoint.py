"""Load time and peak memory (RSS) of a full-size Qwen3-0.6B checkpoint: qwen3_lib vs transformers.

Writes a random bf16 Qwen3-0.6B with transformers' save_pretrained to a temporary directory, then
loads it in fresh processes (so peak RSS belongs to one loader) with each library, in bfloat16.
    python benchmarks/load_checkpoint.py [--repeats 3]
"""
import argparse, json, platform, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r"""
import sys, time, torch
def hwm_kib():   # peak RSS of this process image (VmHWM; unlike ru_maxrss it is not inherited across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
kind, path = sys.argv[1], sys.argv[2]
base = hwm_kib()
t0 = time.perf_counter()
if kind == "qwen3_lib":
    import qwen3_lib
    m = qwen3_lib.load_pretrained(path, dtype=torch.bfloat16, progress=False)
else:
    import transformers
    m = transformers.Qwen3ForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
dt = time.perf_counter() - t0
with torch.no_grad():
    out = m(torch.tensor([[9707, 11, 1879, 0]]))
    out = out if torch.is_tensor(out) else out.logits
print(dt, hwm_kib(), base, float(out.float().abs().sum()))
"""

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch, transformers
    from qwen3_lib import Qwen3Config
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        hc = transformers.Qwen3Config(**Qwen3Config().to_hf())
        transformers.Qwen3ForCausalLM(hc).to(torch.bfloat16).save_pretrained(d)
        size = sum(p.stat().st_size for p in Path(d).glob("*.safetensors"))
        rows = {}
        for kind in ("qwen3_lib", "transformers"):
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, "-c", CHILD, kind, d], capture_output=True, text=True, check=True)
                t, rss, base, checksum = out.stdout.split()
                runs.append((float(t), int(rss) / 2**20, float(checksum), int(base) / 2**20))
            runs.sort()
            rows[kind] = dict(load_s=runs[len(runs) // 2][0], peak_rss_gib=max(r[1] for r in runs),
                              rss_after_imports_gib=runs[0][3], checksum=runs[0][2])
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"checkpoint: random Qwen3-0.6B, bf16, written by transformers, {size / 2**30:.2f} GiB on disk")
    print(f"{'loader':<14}{'load (s, median)':>18}{'peak RSS (GiB)':>16}{'RSS before load':>17}")
    for k, r in rows.items():
        print(f"{k:<14}{r['load_s']:>18.2f}{r['peak_rss_gib']:>16.2f}{r['rss_after_imports_gib']:>17.2f}")
    same = rows["qwen3_lib"]["checksum"] == rows["transformers"]["checksum"]
    print("same logits checksum from both loaders:", same)
    print(json.dumps(rows))

if __name__ == "__main__":
    main()
