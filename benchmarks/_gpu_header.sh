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
