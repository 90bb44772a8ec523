#!/usr/bin/env bash
# Everything this project measures on a GPU, in one go (a lent GPU's time is short):
#   1. tests/test_cuda.py  - the CPU checks again on CUDA (parity with transformers, fast paths, errors);
#   2. chapter 09b's memory measurements -> OUTDIR/gpu_memory.json (benchmarks/record_gpu_memory.py);
#   3. chapter 10b's speed benchmark     -> OUTDIR/bench_gpu.json  (benchmarks/bench.py);
#   4. FastQwen3's ways of building the decode step, timed, checked and profiled
#                                         -> OUTDIR/variants_gpu.json (benchmarks/compare_variants.py;
#                                            WAYS="layers layers+graph" picks some).
# `make gpu-session` copies the JSON files into figures/data/; benchmarks/README.md says what each program does.
# Run from the repository root on the GPU machine: bash benchmarks/gpu_session.sh [OUTDIR]
# Each step has a time limit and a log in OUTDIR; a step that fails does not stop the next one, and each
# program saves its JSON as it goes, so a run cut short keeps what it measured.
# Needs python3 with CUDA torch and transformers (PY=... to choose another); nothing is installed.
set -u
OUT=${1:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

step() {        # step NAME SECONDS COMMAND...: run with a limit, log to OUTDIR/NAME.log, show its tail
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}

STEPS=${STEPS:-tests memory bench variants}    # e.g. STEPS="tests bench" to run only those two
case " $STEPS " in *" tests "*)
  step tests  ${TESTS_LIMIT:-120}  $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py ;; esac
case " $STEPS " in *" memory "*)
  step memory ${MEMORY_LIMIT:-120} $PY benchmarks/record_gpu_memory.py --out "$OUT/gpu_memory.json" ;; esac
case " $STEPS " in *" bench "*)
  TAIL=60 TORCH_LOGS=perf_hints step bench ${BENCH_LIMIT:-300} $PY benchmarks/bench.py --device cuda --out "$OUT/bench_gpu.json" ;; esac
case " $STEPS " in *" variants "*)
  TAIL=60 step variants ${VARIANTS_LIMIT:-240} $PY benchmarks/compare_variants.py --device cuda --out "$OUT/variants_gpu.json" \
    ${WAYS:+--ways $WAYS} ;; esac
ls -l "$OUT"
