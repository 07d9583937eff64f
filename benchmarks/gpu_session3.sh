#!/usr/bin/env bash
# Third session (2026-11-23), one H200. Usage: bash benchmarks/gpu_session3.sh PART
#   regs  : forward + gradient MLUPS of the uncapped kernels vs caps / block sizes, then the CUDA tests
#   bench : the v2 plan of gpu_bench.py (lattices, precisions, 512^3, gradient, ensemble)
#   long  : inflow-control at GPU resolution (fused inlet/outlet adjoint), 10,000-step 256^3 gradient
set -u
out=${OUT:-.}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
case "$1" in
regs)
  python3 benchmarks/regs.py 256 fp32 0x128 0x256 64x128 96x128
  python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k "cuda" 2>&1 | tail -4
  ;;
bench)
  python3 benchmarks/phases.py 256
  python3 benchmarks/gpu_bench.py v2 | cut -c1-700
  ;;
long)
  timeout 250 python3 -m difflbm.cli optimize inflow-control --resolution 256 --steps 4000 --iterations 20 \
      --precision float32 --device cuda --out /tmp/opt-inflow > /tmp/inflow.log 2>&1; echo "inflow rc=$?"
  tail -c 1500 /tmp/inflow.log; cat /tmp/opt-inflow/summary.json 2>/dev/null | head -c 1500; echo
  timeout 300 python3 benchmarks/long_gradient.py 256 10000 0
  ;;
sweep)
  python3 benchmarks/phases.py 256 sweep
  ;;
final)
  python3 benchmarks/phases.py 256 quick
  python3 benchmarks/gpu_bench.py v2 | tail -12
  bash benchmarks/gpu_session3.sh opt
  ;;
opt)
  # inflow-control after the one-term observation series (graphs on, no per-step Python over terms)
  timeout 200 python3 -m difflbm.cli optimize inflow-control --resolution 256 --steps 4000 --iterations 20 \
      --precision float32 --device cuda --out /tmp/opt-inflow > /tmp/inflow.log 2>&1; echo "inflow rc=$?"
  tail -c 600 /tmp/inflow.log; python3 -c "
import json; s = json.load(open('/tmp/opt-inflow/summary.json'))
print(json.dumps({k: s.get(k) for k in ('device', 'wall_time_s', 'metrics', 'peak_device_memory_bytes', 'iterations')}, default=str)[:1500])
print('loss first/last', s['loss_history'][0], s['loss_history'][-1], len(s['loss_history']))"
  ;;
cyl)
  v() { timeout "$1" python3 -m difflbm.cli validate cylinder --device cuda --json "${@:2}" | python3 -c "
import json, sys; r = json.loads(sys.stdin.read())
print(json.dumps({k: r.get(k) for k in ('benchmark', 'resolution', 'diameter_cells', 'u_max', 'collision', 'steps', 'converged', 'c_D', 'c_L', 'c_D_max', 'c_L_max', 'St', 'inside_reference', 'passed', 'wall_time_s')}))"; }
  v 170 --resolution 164 --benchmark 2D-1 --u-max 0.02 --precision fp64
  v 150 --resolution 164 --benchmark 2D-2 --u-max 0.05 --precision fp64 --collision trt
  v 150 --resolution 164 --benchmark 2D-2 --u-max 0.05 --precision fp64
  ;;
cyl2)
  bash benchmarks/gpu_session3.sh opt
  v() { timeout "$1" python3 -m difflbm.cli validate cylinder --device cuda --json "${@:2}" | python3 -c "
import json, sys; r = json.loads(sys.stdin.read())
print(json.dumps({k: r.get(k) for k in ('benchmark', 'resolution', 'diameter_cells', 'u_max', 'collision', 'steps', 'c_D_max', 'c_L_max', 'St', 'inside_reference', 'passed', 'wall_time_s')}))"; }
  v 330 --resolution 164 --benchmark 2D-2 --u-max 0.02 --precision fp64 --collision trt
  ;;
cyl3)
  v() { timeout "$1" python3 -m difflbm.cli validate cylinder --device cuda --json "${@:2}" | python3 -c "
import json, sys; r = json.loads(sys.stdin.read())
print(json.dumps({k: r.get(k) for k in ('benchmark', 'resolution', 'diameter_cells', 'u_max', 'collision', 'steps', 'c_D_max', 'c_L_max', 'St', 'sample_every', 'inside_reference', 'passed', 'wall_time_s')}))"; }
  v 540 --resolution 328 --benchmark 2D-2 --u-max 0.02 --precision fp64 --collision trt
  ;;
esac
