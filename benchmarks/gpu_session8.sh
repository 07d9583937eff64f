#!/usr/bin/env bash
# Eighth session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session8.sh PART
source "$(dirname "$0")/_gpu_header.sh"
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
ncu6)
  # Nsight Compute of ghost2's fill and main, ghost3_plain, ghost7 and the library's step (256^3)
  m="gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_read.sum,lts__t_sectors_op_write.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_lg_throttle_per_warp_active.pct,smsp__warp_issue_stalled_drain_per_warp_active.pct,smsp__warp_issue_stalled_membar_per_warp_active.pct"
  timeout 280 ncu --profile-from-start off --clock-control none --csv --metrics $m python3 benchmarks/forward_lab6.py 256 ncu > $OUT/ncu6.csv 2>$OUT/ncu6.err
  echo "ncu rc $?"; python3 benchmarks/ncu_table.py $OUT/ncu6.csv > $OUT/ncu6.txt || tail -5 $OUT/ncu6.err
  cat $OUT/ncu6.txt
  ;;
dist)
  # for a session that is lent nvidia-h200-x2 or -x4 (none was in the fifth to eighth sessions): a
  # check run, then weak scaling 256^3 per GPU, forward and gradient, with and without the overlap
  # (since the eighth session the gradient's replays and reverse passes overlap too), strong 512^3
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  R="python3 -m torch.distributed.run --standalone"; S=$OUT/scaling.jsonl
  G=$(nvidia-smi -L | wc -l)
  run() { timeout 150 $R "$@" 2>&1 | grep -E '^\{|Error' | cut -c1-400; }
  run --nproc_per_node=2 benchmarks/dist_bench.py --mode weak --size 64 --steps 20 --repeats 2 --check 20
  run --nproc_per_node=1 benchmarks/dist_bench.py --mode weak --size 256 --gradient --out $S
  for g in 2 4; do
    [ $g -le $G ] || continue
    run --nproc_per_node=$g benchmarks/dist_bench.py --mode weak --size 256 --gradient --out $S --baseline $S
    run --nproc_per_node=$g benchmarks/dist_bench.py --mode weak --size 256 --gradient --no-overlap --out $S --baseline $S
  done
  run --nproc_per_node=1 benchmarks/dist_bench.py --mode strong --size 512 --steps 50 --repeats 3 --out $S
  run --nproc_per_node=$G benchmarks/dist_bench.py --mode strong --size 512 --steps 50 --repeats 3 --out $S --baseline $S
  python3 -c "
import json
for l in open('$S'):
    d = json.loads(l); print({k: d.get(k) for k in ('mode', 'world_size', 'overlap', 'forward_mlups', 'gradient_mlups_equivalent', 'forward_efficiency', 'gradient_efficiency')})"
  ;;
esac
