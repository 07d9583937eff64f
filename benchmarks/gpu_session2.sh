#!/usr/bin/env bash
# Second session's single-GPU measurement, one call (H200): CUDA tests of the bridges and graphs,
# block-size variants, launch overhead with/without graphs, the v2 plan, 10,000-step gradient.
set -u
out=${OUT:-.}
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k "cuda or torch or jax" 2>&1 | tail -8 | tee $out/pytest_cuda.txt
python3 benchmarks/regs.py 256 fp32 128x128 128x256 | tee $out/regs.jsonl
python3 benchmarks/graphs.py 64 128 | tee $out/graphs.jsonl
python3 benchmarks/gpu_bench.py v2 > $out/v2.txt 2>&1; tail -14 $out/v2.txt
timeout 300 python3 benchmarks/long_gradient.py 256 10000 0 | tee $out/long.jsonl
