#!/usr/bin/env bash
# Second session, second call: traceback of the CUDA torch.compile test, then issue #5 on the GPU.
set -u
out=${OUT:-.}
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py -k "compile and cuda" --tb=long > $out/compile_tb.txt 2>&1
grep -E "Error|error|raise" $out/compile_tb.txt | tail -12
bash benchmarks/gpu_optimize.sh
