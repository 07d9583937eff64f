# Sourced by the gpu_session*.sh scripts: the machine and versions first, and ``values NAME``, which
# prints the values of each JSON line of $OUT/NAME.txt that names a check, variant, copy, phase or MLUPS.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
git log -1 --format=%h 2>/dev/null || true
values() { grep -E "check|variant|copy|phase|mlups" $OUT/$1.txt | python3 -c "
import json, sys
for l in sys.stdin:
    try: d = json.loads(l)
    except Exception: continue
    print(' '.join(str(v) for v in d.values()))"; }
# ``forms_part NAME TIMEOUT FORMS CASES``: benchmarks/native_bench.py's forms mode, two rounds, output in
# $OUT/NAME.txt; prints its values, any case x form whose 4 steps mismatched, and the end of its stderr.
forms_part() {
  NATIVE_BENCH_FORMS="$3" timeout "$2" python3 benchmarks/native_bench.py 2 "$4" forms > $OUT/$1.txt 2>$OUT/$1.err; echo "rc $?"
  values "$1"; grep mismatch $OUT/$1.txt | grep -v '"mismatches_after_4_steps": 0'; tail -3 $OUT/$1.err
}
