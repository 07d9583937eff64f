#!/usr/bin/env bash
# Seventh session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session7.sh PART
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import warp; print('warp', warp.__version__)"
# the values of each JSON line of $OUT/NAME.txt, one line each
values() { grep -E "check|variant|copy|lattice" $OUT/$1.txt | python3 -c "
import json, sys
for l in sys.stdin:
    try: d = json.loads(l)
    except Exception: continue
    print(' '.join(str(v) for v in d.values()))"; }
# the main Nsight Compute metrics of each launch in $OUT/NAME.txt (benchmarks/ncu_table.py output)
ncu_rows() { python3 -c "
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l); print(d['kernel'][:28], *(d.get(k, '?') for k in ('gpu__time_duration.sum', 'launch__registers_per_thread', 'sm__warps_active.avg.pct_of_peak_sustained_active', 'smsp__issue_active.avg.pct_of_peak_sustained_active', 'smsp__inst_executed.sum', 'stall_long_scoreboard', 'stall_no_instruction')))" $OUT/$1.txt; }
# Nsight Compute metrics of the round-2-on lab kernels named in ONLY (and the library's step) into
# $OUT/NAME.txt, then their main columns: lab_ncu NAME ONLY TIMEOUT LAUNCHES
lab_ncu() {
  local m="gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_no_instruction_per_warp_active.pct"
  LAB_ONLY=$2 timeout $3 ncu --clock-control none --csv --metrics $m -k "regex:lab2_|lbm_step" --launch-count $4 \
    python3 benchmarks/forward_lab.py 256 ncu 2 > $OUT/$1.csv 2>$OUT/$1.err
  python3 benchmarks/ncu_table.py $OUT/$1.csv > $OUT/$1.txt || tail -5 $OUT/$1.err
  ncu_rows $1
}
case "$1" in
lab)
  # issue #6: forward-kernel variants side by side (benchmarks/forward_lab.py), fp32 and fp16, 256^3,
  # then Nsight Compute metrics of each variant (two launches each; the second is the one to read)
  timeout 300 python3 benchmarks/forward_lab.py 256 time 2>&1 | grep -v "^Module"
  m="gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__bytes_write.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_lg_throttle_per_warp_active.pct,smsp__warp_issue_stalled_drain_per_warp_active.pct,smsp__warp_issue_stalled_wait_per_warp_active.pct,smsp__warp_issue_stalled_no_instruction_per_warp_active.pct"
  timeout 250 ncu --clock-control none --csv --metrics $m -k "regex:lab_|lbm_step" --launch-count 40 \
    python3 benchmarks/forward_lab.py 256 ncu > /tmp/ncu.csv 2>/tmp/ncu.err
  echo "ncu rc $?"; python3 benchmarks/ncu_table.py /tmp/ncu.csv || tail -5 /tmp/ncu.err
  ;;
esac
case "$1" in
pending)
  # the sixth session's unmeasured code: moments replay with open boundaries, float64 gathered caps
  timeout 200 python3 benchmarks/open_replay.py open 128 200 2>&1 | grep -v "^Module"
  timeout 200 python3 benchmarks/open_replay.py fp64 128 200 2>&1 | grep -v "^Module"
  ;;
esac
case "$1" in
lab2)
  # second round: pulls that do not wait for the cell code, runs of cells along x per thread, flat
  # addressing, float16 collision on deviations (benchmarks/forward_lab.py round 2), then ncu
  timeout 330 python3 benchmarks/forward_lab.py 256 time 2 > $OUT/lab2.txt 2>&1
  values lab2
  lab_ncu ncu2 fix,fix_walk,fix_walk_dev,fix_dev,ref 200 60
  ;;
esac
case "$1" in
lab3)
  # third round: the library's gather with flat (1D, 32-bit) addressing, single cells and runs along x
  export LAB_ROUND=3
  timeout 300 python3 benchmarks/forward_lab.py 256 time 2 > $OUT/lab3.txt 2>&1
  values lab3
  lab_ncu ncu3 lid_flat,lid_flat_dev,ref_flat 150 30
  ;;
esac
case "$1" in
lab4)
  # fourth round: the library's step at register caps 48 / 40 and blocks of 256; the library's gather
  # in runs along x (2D addressing), float16 also on deviations
  export LAB_ROUND=4
  timeout 300 python3 benchmarks/forward_lab.py 256 time 2 > $OUT/lab4.txt 2>&1
  values lab4
  tail -3 $OUT/lab4.txt
  ;;
esac
case "$1" in
lab5)
  # fifth round: cells without a code pull plainly, the others take the library's gather (one branch)
  export LAB_ROUND=5
  timeout 240 python3 benchmarks/forward_lab.py 256 time 2 > $OUT/lab5.txt 2>&1
  values lab5
  tail -2 $OUT/lab5.txt
  lab_ncu ncu5 split,split_dev 120 30
  ;;
esac
case "$1" in
lattices)
  # register caps and blocks of the forward step per lattice; D3Q19 512^3
  timeout 400 python3 benchmarks/lattices.py > $OUT/lattices.txt 2>&1
  values lattices
  tail -2 $OUT/lattices.txt
  ;;
esac
case "$1" in
verify)
  # the committed per-lattice defaults (D2Q9 cap 32, D3Q27 blocks of 64) through the bench CLI
  for a in "--lattice D2Q9 --size 4096" "--lattice D3Q27 --size 256" "--lattice D3Q19 --size 256" "--lattice D2Q9 --size 128 --ensemble 1024"; do
    timeout 120 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-700
  done
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k cuda 2>&1 | tail -2
  ;;
esac
case "$1" in
order)
  timeout 200 python3 benchmarks/d2q9_order.py 4096 2>&1 | grep -v "^Module"
  ;;
esac
case "$1" in
dist1)
  # one rank of the slab decomposition on one GPU (NCCL, world 1): the halo exchange as torch slicing
  # (old, .gpu/old/src = d8d0359) vs Warp pack / unpack kernels (new); forward and gradient, 256^3
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  python3 -c "import torch; print('torch', torch.__version__)"
  for who in old new; do
    pp=/tmp/site:$PWD/src; [ $who = old ] && pp=/tmp/site:$PWD/.gpu/old/src
    echo "== $who"
    PYTHONPATH=$pp timeout 140 python3 -m torch.distributed.run --standalone --nproc_per_node=1 \
      benchmarks/dist_bench.py --mode weak --size 256 --steps 100 --repeats 5 --gradient 2>&1 | grep -E '^\{|Error' | cut -c1-600
  done
  ;;
esac
case "$1" in
dist)
  # for a session that is lent nvidia-h200-x2 or -x4: weak scaling 256^3 per GPU (forward and
  # gradient) with and without the overlap, strong scaling 512^3 (forward), after a check run
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  R="python3 -m torch.distributed.run --standalone"; S=$OUT/scaling.jsonl
  G=$(nvidia-smi -L | wc -l)
  run() { timeout 150 $R "$@" 2>&1 | grep -E '^\{|Error' | cut -c1-400; }
  run --nproc_per_node=2 benchmarks/dist_bench.py --mode weak --size 64 --steps 20 --repeats 2 --check 20
  run --nproc_per_node=1 benchmarks/dist_bench.py --mode weak --size 256 --gradient --out $S
  for g in 2 4; do
    [ $g -le $G ] || continue
    run --nproc_per_node=$g benchmarks/dist_bench.py --mode weak --size 256 --gradient --out $S --baseline $S
    run --nproc_per_node=$g benchmarks/dist_bench.py --mode weak --size 256 --no-overlap --out $S --baseline $S
  done
  run --nproc_per_node=1 benchmarks/dist_bench.py --mode strong --size 512 --steps 50 --repeats 3 --out $S
  run --nproc_per_node=$G benchmarks/dist_bench.py --mode strong --size 512 --steps 50 --repeats 3 --out $S --baseline $S
  python3 -c "
import json
for l in open('$S'):
    d = json.loads(l); print({k: d.get(k) for k in ('mode', 'world_size', 'overlap', 'forward_mlups', 'gradient_mlups_equivalent', 'forward_efficiency', 'gradient_efficiency')})"
  ;;
esac
