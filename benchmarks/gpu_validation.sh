#!/usr/bin/env bash
# Validation runs at GPU resolutions (issue #2), one device call (not yet run: no device time was left).
# On the device machine after the .gpu setup:  bash benchmarks/gpu_validation.sh
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-.}
for re in 100 400 1000; do
  python3 -m difflbm.cli validate cavity --resolution 256 --reynolds $re --precision fp32 --json >> $out/validation.jsonl
done
python3 -m difflbm.cli validate cylinder --resolution 164 --benchmark 2D-1 --precision fp32 --json >> $out/validation.jsonl
python3 -m difflbm.cli validate cylinder --resolution 164 --benchmark 2D-2 --precision fp32 --json >> $out/validation.jsonl
python3 -m difflbm.cli validate taylor-green-3d --resolution 32 --precision fp64 --json >> $out/validation.jsonl
cat $out/validation.jsonl
