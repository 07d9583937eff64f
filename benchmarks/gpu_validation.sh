#!/usr/bin/env bash
# Validation runs at GPU resolutions (issue #2), one device call: bash benchmarks/gpu_validation.sh
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-.}
run() { timeout 200 python3 -m difflbm.cli validate "$@" --device cuda --json >> $out/validation.jsonl || echo "{\"failed\": \"$*\"}" >> $out/validation.jsonl; }
for re in 100 400 1000; do run cavity --resolution 256 --reynolds $re --precision fp64; done
for n in 82 164; do
  run cylinder --resolution $n --benchmark 2D-1 --precision fp64
  run cylinder --resolution $n --benchmark 2D-2 --precision fp64
done
run taylor-green-3d --resolution 32 --precision fp64
python3 - <<'PY'
import json, os
for line in open(os.path.join(os.environ.get("OUT", "."), "validation.jsonl")):
    r = json.loads(line)
    keep = {k: r.get(k) for k in ("case", "benchmark", "reynolds", "resolution", "steps", "max_deviation", "c_D", "c_L",
                                   "c_D_max", "c_L_max", "St", "order", "orders", "passed", "failed") if k in r}
    print(json.dumps(keep))
PY
