#!/usr/bin/env bash
# Fourth session (2026-11-24), one H200. Usage: bash benchmarks/gpu_session4.sh PART
# (The `adjoint` and `variants` parts ran kernel variants that were removed afterwards; benchmarks/phases.py
# no longer has that mode. This file records what ran at the commits named in BENCHMARKS.md.)
#   adjoint : the streaming fused adjoint (v8) vs the previous head (carried as .gpu/old), then CUDA tests
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
case "$1" in
adjoint)
  echo "== new (working tree)"; python3 benchmarks/phases.py 256 adjoint
  echo "== old (HEAD before the change)"; PYTHONPATH=/tmp/site:$PWD/.gpu/old/src python3 benchmarks/phases.py 256 quick
  python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k "cuda" 2>&1 | tail -3
  ;;
variants)
  python3 benchmarks/phases.py 256 adjoint
  ;;
final)
  python3 benchmarks/phases.py 256 quick
  python3 benchmarks/gpu_bench.py v3 | cut -c1-600
  timeout 200 python3 benchmarks/long_gradient.py 256 10000 0
  python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k "cuda" 2>&1 | tail -3
  ;;
cyl)
  # issue #2, 2D-2 c_L,max (0.98821 at D = 80 vs [0.99, 1.01]): TRT magic parameter and the outlet sponge,
  # four runs at once (each is launch-bound on a small grid)
  v() { timeout 570 python3 -m difflbm.cli validate cylinder --device cuda --json --benchmark 2D-2 --u-max 0.02 \
        --precision fp64 --collision trt "$@"; }
  v --resolution 328 --trt-magic 0.0833333333 > /tmp/cyl_a.json 2>/tmp/cyl_a.err &
  v --resolution 328 --trt-magic 0.1875 > /tmp/cyl_b.json 2>/tmp/cyl_b.err &
  v --resolution 164 --trt-magic 0.0833333333 > /tmp/cyl_c.json 2>/tmp/cyl_c.err &
  timeout 570 python3 -c "
import json; from difflbm.validation import cylinder
print(json.dumps(cylinder.run(resolution=164, case='2D-2', u_max=0.02, collision='trt', precision='float64', device='cuda', sponge=False)))" > /tmp/cyl_d.json 2>/tmp/cyl_d.err &
  wait
  for x in a b c d; do python3 -c "
import json, sys
try:
    r = json.loads(open('/tmp/cyl_$x.json').read().strip().splitlines()[-1])
    print(json.dumps({k: r.get(k) for k in ('resolution', 'diameter_cells', 'u_max', 'collision', 'trt_magic', 'sponge', 'steps', 'c_D_max', 'c_L_max', 'St', 'inside_reference', 'wall_time_s')}))
except Exception as e:
    print('$x failed', e, open('/tmp/cyl_$x.err').read()[-500:])"; done
  ;;
dist)
  # issue #7 on nvidia-h200-x2: weak scaling at 256^3 per GPU with the exchange on Warp's stream
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  python3 -c "import torch; print('torch', torch.__version__)"
  R="python3 -m torch.distributed.run --standalone"; S=/tmp/scaling.jsonl
  timeout 120 $R --nproc_per_node=2 benchmarks/dist_bench.py --mode weak --size 64 --steps 20 --repeats 2 --check 20 2>&1 | grep -v Warning | tail -3
  timeout 200 $R --nproc_per_node=1 benchmarks/dist_bench.py --mode weak --size 256 --gradient --out $S 2>&1 | tail -2
  timeout 250 $R --nproc_per_node=2 benchmarks/dist_bench.py --mode weak --size 256 --gradient --out $S --baseline $S 2>&1 | tail -2
  ;;
caps)
  python3 benchmarks/phases.py 256 caps
  ;;
ncu)
  # where the adjoint's time goes: DRAM bytes read / written per launch vs the 232 B/cell model
  m="--metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_read.sum,lts__t_sectors_op_write.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_lg_throttle_per_warp_active.pct,smsp__warp_issue_stalled_drain_per_warp_active.pct,smsp__warp_issue_stalled_membar_per_warp_active.pct"
  secs="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats"
  for who in new old; do
    pp=/tmp/site:$PWD/src; [ $who = old ] && pp=/tmp/site:$PWD/.gpu/old/src
    for k in "regex:lbm_step_[0-9a-f]+_cuda_kernel_forward" "regex:lbm_step_adjoint"; do
      PYTHONPATH=$pp ncu --clock-control none $secs $m -k "$k" --launch-skip 2 --launch-count 1 \
        python3 benchmarks/ncu_kernels.py 256 > /tmp/ncu.txt 2>&1
      echo "== $who $k"; grep -E "Duration|DRAM Throughput|Achieved Occupancy|Registers Per|dram__bytes|lts__t_sectors|stalled|No Eligible|Warp Cycles Per Issued" /tmp/ncu.txt | head -20
    done
  done
  ;;
esac
