#!/usr/bin/env bash
# Fifth session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session5.sh PART
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
case "$1" in
moments)
  # issue #3 / #6: the moments replay of a gradient's leaf segments vs the state replay
  timeout 420 python3 benchmarks/moments.py 256 ${2:-all}
  python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k "cuda" 2>&1 | tail -3
  ;;
final)
  timeout 170 python3 benchmarks/moments.py 256 all
  timeout 280 python3 benchmarks/gpu_bench.py v3 | cut -c1-700
  timeout 110 python3 benchmarks/long_gradient.py 256 10000 0
  ;;
cyl)
  # issue #2: Zou-He inlet with the tangential correction; 2D-2 at D = 40, u_max 0.02 (before: c_L,max
  # 0.98679) and 2D-1 at D = 40 (before: inside), two runs at once
  v() { timeout 560 python3 -m difflbm.cli validate cylinder --device cuda --json --resolution 164 --precision fp64 \
        --collision trt "$@"; }
  v --benchmark 2D-2 --u-max 0.02 > /tmp/cyl_a.json 2>/tmp/cyl_a.err &
  v --benchmark 2D-1 --u-max 0.02 > /tmp/cyl_b.json 2>/tmp/cyl_b.err &
  wait
  for x in a b; do python3 -c "
import json
try:
    r = json.loads(open('/tmp/cyl_$x.json').read().strip().splitlines()[-1])
    print(json.dumps({k: r.get(k) for k in ('benchmark', 'case', 'resolution', 'diameter_cells', 'u_max', 'collision', 'steps', 'c_D', 'c_L', 'c_D_max', 'c_L_max', 'c_L_min', 'St', 'inside_reference', 'wall_time_s')}))
except Exception as e:
    print('$x failed', e, open('/tmp/cyl_$x.err').read()[-800:])"; done
  ;;
esac
case "$1" in
ncu)
  # why the moments adjoint (172 B/cell) is slower than the adjoint that gathers the state (232 B/cell)
  m="--metrics dram__bytes_read.sum,dram__bytes_write.sum,smsp__inst_executed.sum,l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_lg_throttle_per_warp_active.pct,smsp__warp_issue_stalled_drain_per_warp_active.pct"
  secs="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats"
  for replay in states moments; do
    ncu --clock-control none $secs $m -k "regex:lbm_step_adjoint" --launch-skip 2 --launch-count 1 \
      python3 benchmarks/ncu_kernels.py 256 float32 $replay > /tmp/ncu.txt 2>&1
    echo "== $replay"; grep -E "lbm_step_adjoint|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occ|Registers Per|dram__bytes|l1tex__t|inst_executed|stalled|No Eligible|Warp Cycles Per Issued|Block Limit Reg" /tmp/ncu.txt | head -30
    cp /tmp/ncu.txt $OUT/ncu_$replay.txt
  done
  ;;
esac
