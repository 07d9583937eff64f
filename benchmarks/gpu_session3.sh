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
esac
