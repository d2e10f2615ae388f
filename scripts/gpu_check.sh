#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): build the extension with CUDA, run the test
# suite on CUDA, and time the GPU benchmark cases. Everything is written to $OUT (or ./gpu-check);
# the last lines printed are the test summary and the benchmark table, for BENCHMARKS.md.
# The device image has torch, triton, pytest and ninja but no network: install with --no-deps.
set -uo pipefail
out="${OUT:-gpu-check}"
mkdir -p "$out"
py=python3

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
if ! $py -m pip install --no-deps --no-build-isolation -e . > "$out/build.txt" 2>&1; then
  tail -40 "$out/build.txt"
  exit 1
fi
$py -m fastgen info > "$out/info.txt" 2>&1
cat "$out/info.txt"

# The attention figures first (bf16, hd 64/128, L 2k/8k, causal or not, fwd and fwd+bwd, against
# torch SDPA's flash backend in the same run), so they survive a timeout later on.
timeout 150 $py -m fastgen bench --device cuda --full --filter attention --no-progress \
  --repeats 10 --json "$out/bench_attention.json" > "$out/bench_attention.txt" 2>&1
cat "$out/bench_attention.txt"

# Hash grid: CUDA vs CPU, fp16, deterministic mode, then its figures.
timeout 120 $py -m pytest -q -p no:cacheprovider tests/ops/test_hashgrid.py \
  > "$out/tests_hashgrid.txt" 2>&1
tail -5 "$out/tests_hashgrid.txt"
timeout 90 $py -m fastgen bench --device cuda --full --filter hashgrid --no-progress \
  --json "$out/bench_hashgrid.json" > "$out/bench_hashgrid.txt" 2>&1
cat "$out/bench_hashgrid.txt"

# Sampler step: the fused kernel's GB/s against the copy-bandwidth floor (goal >= 80 %).
timeout 60 $py -m fastgen bench --device cuda --full --filter sampler_step --no-progress \
  --json "$out/bench_sampler.json" > "$out/bench_sampler.txt" 2>&1
cat "$out/bench_sampler.txt"

# Decoding (decode attention GB/s, sampling) and NeRF (CUDA marcher and renderer vs CPU).
timeout 120 $py -m pytest -q -p no:cacheprovider tests/ops/test_decode.py \
  tests/ops/test_sampling.py tests/ops/test_transformer.py tests/ops/test_volrend.py tests/ops/test_raymarch.py \
  > "$out/tests_decode_nerf.txt" 2>&1
tail -5 "$out/tests_decode_nerf.txt"
timeout 90 $py -m fastgen bench --device cuda --full --filter "decode_attention|sample/|rms_norm" \
  --no-progress --json "$out/bench_decode.json" > "$out/bench_decode.txt" 2>&1
cat "$out/bench_decode.txt"

timeout 360 $py -m pytest -q -p no:cacheprovider tests/ops/test_attention.py tests \
  > "$out/tests.txt" 2>&1
echo "pytest exit status $?" >> "$out/tests.txt"
tail -15 "$out/tests.txt"

timeout 90 $py -m fastgen bench --device cuda --full --filter bias_act --no-progress \
  --json "$out/bench_cuda.json" > "$out/bench.txt" 2>&1
cat "$out/bench.txt"
