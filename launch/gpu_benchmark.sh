#!/usr/bin/env bash
# XLM-R base and large train-step speed on one GPU (H100/H200): installs xlm_jax[gpu] in a venv,
# then prints one line per preset (seq 512, bf16, 4 updates per call): tokens/s, MFU against the
# chip's bf16 peak, step time and peak memory. About 8 minutes, most of it pip.
#   bash launch/gpu_benchmark.sh
#   GPU_BENCH_PYTHON=python bash launch/gpu_benchmark.sh      # a Python that has xlm_jax[gpu]: no install
#   GPU_BENCH_SMOKE=1 GPU_BENCH_PYTHON=python bash launch/gpu_benchmark.sh   # tiny sizes: checks this on CPU
# Batches (no accumulation) fit an 80 GB H100 with the recipes' remat; override with
# GPU_BENCH_BASE_BATCH / GPU_BENCH_LARGE_BATCH. GPU_BENCH_ATTENTION="xla cudnn" adds a line per
# preset with cuDNN flash attention (no attention dropout; ~1.5 more minutes). Extra arguments go
# to every benchmark run.
# Offline GPU machines with jax, flax, optax and orbax already installed (the benchmark needs no
# TensorFlow): bring ml_collections and absl as wheels, then
#   PYTHONPATH=. GPU_BENCH_PYTHON=python3 bash launch/gpu_benchmark.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${GPU_BENCH_PYTHON:-}
if [[ -z $python ]]; then
  venv=${GPU_BENCH_VENV:-${TMPDIR:-/tmp}/xlm_jax_gpu_venv}
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e ".[gpu]"
  python=$venv/bin/python
fi

flags=(--dtype=bfloat16 --seq=512 --steps_per_call=4 --steps=20 --repeats=3 --rules=dp)
if [[ ${GPU_BENCH_SMOKE:-0} == 1 ]]; then   # the presets' vocabulary, remat and dtype at a toy size
  flags+=(--layers=2 --hidden=64 --heads=2 --ffn=128 --seq=32 --steps_per_call=2 --steps=2 --repeats=1)
  base_batch=2 large_batch=2
else
  base_batch=${GPU_BENCH_BASE_BATCH:-64} large_batch=${GPU_BENCH_LARGE_BATCH:-32}
fi

bench() {   # bench PRESET BATCH ATTENTION [FLAG...]: "PRESET ... on DEVICE: <the benchmark's xlm_jax line>"
  local preset=$1 batch=$2 attention=$3 out
  shift 3
  local name="$preset batch $batch attention $attention"
  if ! out=$("$python" -m xlm_jax.benchmarks.train_step --preset="$preset" --batch="$batch" \
               --attention="$attention" "${flags[@]}" "$@" 2>&1); then
    tail -n 20 <<<"$out" >&2
    echo "$name: FAILED (output above)"
    return 1
  fi
  echo "$name on $(sed -n 's/^devices: //p' <<<"$out"): $(grep '^xlm_jax:' <<<"$out")"
}

status=0
for attention in ${GPU_BENCH_ATTENTION:-xla}; do
  bench xlmr_base "$base_batch" "$attention" "$@" || status=1
  bench xlmr_large "$large_batch" "$attention" "$@" || status=1
done
exit $status
