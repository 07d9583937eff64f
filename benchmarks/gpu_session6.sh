#!/usr/bin/env bash
# Sixth session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session6.sh PART
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
summary() { python3 -c "
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    print(json.dumps({k: r.get(k) for k in ('benchmark', 'resolution', 'diameter_cells', 'u_max', 'collision', 'steps', 'sample_every', 'c_D', 'c_L', 'c_D_max', 'c_L_max', 'c_L_min', 'c_D_mean', 'St', 'inside_reference', 'wall_time_s', 'elapsed_s')}))
except Exception as e:
    print(sys.argv[1], 'failed', e, open(sys.argv[2]).read()[-800:])" "$1" "$2"; }
case "$1" in
cyl)
  # issue #2: Schaefer-Turek 2D-2 c_L,max against the lattice velocity (Mach number) at D = 40 and 80,
  # with the steps between force samples replayed as CUDA graphs; 2D-1 at D = 40 first (fifth session:
  # c_D 5.58652, c_L 0.010530 with the same chunk of 3000 steps, so it must come out the same)
  v() { local res=$1; shift; SECONDS=0
        timeout 300 python3 -m difflbm.cli validate cylinder --device cuda --json --resolution $res --precision fp64 \
          --collision trt "$@" > /tmp/cyl.json 2>/tmp/cyl.err
        echo "resolution $res $* : ${SECONDS} s"; summary /tmp/cyl.json /tmp/cyl.err; }
  v 164 --benchmark 2D-1 --u-max 0.02
  for u in 0.02 0.03 0.05; do v 164 --benchmark 2D-2 --u-max $u; done
  for u in 0.04 0.03 0.02; do v 328 --benchmark 2D-2 --u-max $u; done
  ;;
esac
case "$1" in
grad)
  # issue #6: the moments adjoint in the gathered form and the forward keeping its last leaf
  timeout 500 python3 benchmarks/session6.py 256 ${2:-all}
  ;;
esac
case "$1" in
sweep)
  # register caps and block sizes of the gathered-form adjoint, gradients at the better caps, where a
  # gradient's time goes, and the CUDA tests (graphs vs eager with the new leaf)
  timeout 330 python3 benchmarks/session6.py 256 sweep
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k cuda 2>&1 | tail -3
  ;;
esac
case "$1" in
final)
  # the committed defaults: kernels as launched, gradients vs the fifth session's schedule, bench CLI
  timeout 300 python3 benchmarks/session6.py 256 final
  timeout 150 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json | cut -c1-900
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k cuda 2>&1 | tail -3
  ;;
esac
case "$1" in
long)
  # 10,000 steps at 256^3 with the default schedule (now balanced for the 16 B moments leaf), then the
  # bench CLI's gradient for fp16 storage and D3Q27
  timeout 200 python3 benchmarks/long_gradient.py 256 10000 0
  timeout 120 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --precision fp16 --gradient --json | cut -c1-900
  timeout 100 python3 -m difflbm.cli bench --device cuda --lattice D3Q27 --size 128 --steps 1000 --gradient --json | cut -c1-900
  ;;
esac
