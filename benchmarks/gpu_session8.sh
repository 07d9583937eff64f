#!/usr/bin/env bash
# Eighth session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session8.sh PART
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
git log -1 --format=%h 2>/dev/null || true
# the values of each JSON line of $OUT/NAME.txt, one line each
values() { grep -E "check|variant|copy|phase|mlups" $OUT/$1.txt | python3 -c "
import json, sys
for l in sys.stdin:
    try: d = json.loads(l)
    except Exception: continue
    print(' '.join(str(v) for v in d.values()))"; }
case "$1" in
lab6)
  # issue #6: ghost-layer layout and the ranged (52-register) step vs the library's step, alternating
  timeout 400 python3 benchmarks/forward_lab6.py 256 time 3 > $OUT/lab6.txt 2>$OUT/lab6.err; echo "rc $?"
  values lab6
  ;;
lab6_512)
  timeout 500 python3 benchmarks/forward_lab6.py 512 time 2 > $OUT/lab6_512.txt 2>$OUT/lab6_512.err; echo "rc $?"
  values lab6_512
  ;;
lab6b)
  timeout 250 python3 benchmarks/forward_lab6.py 256 time 2 > $OUT/lab6.txt 2>$OUT/lab6.err; echo "rc $?"
  values lab6
  timeout 280 python3 benchmarks/forward_lab6.py 512 time 1 > $OUT/lab6_512.txt 2>$OUT/lab6_512.err; echo "rc $?"
  values lab6_512
  ;;
lab6c)
  LAB6_ONLY=lib,ghost3_plain,ghost7,ghost8,ref timeout 300 python3 benchmarks/forward_lab6.py 256 time 3 > $OUT/lab6.txt 2>$OUT/lab6.err; echo "rc $?"
  values lab6
  ;;
esac
