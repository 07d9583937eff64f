#!/usr/bin/env bash
# Ninth session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session9.sh PART
source "$(dirname "$0")/_gpu_header.sh"
case "$1" in
lab7)
  # issue #6: the native (wp.func_native) cell body vs the library's step, alternating, 256^3
  timeout 420 python3 benchmarks/forward_lab7.py 256 time 3 > $OUT/lab7.txt 2>$OUT/lab7.err; echo "rc $?"
  values lab7; tail -3 $OUT/lab7.err
  ;;
lab7_512)
  LAB7_PRECISION=float32 timeout 500 python3 benchmarks/forward_lab7.py 512 time 2 > $OUT/lab7_512.txt 2>$OUT/lab7_512.err; echo "rc $?"
  values lab7_512; tail -3 $OUT/lab7_512.err
  ;;
ncu7)
  m="gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct"
  timeout 280 ncu --profile-from-start off --clock-control none --csv --metrics $m python3 benchmarks/forward_lab7.py 256 ncu > $OUT/ncu7.csv 2>$OUT/ncu7.err
  echo "ncu rc $?"; python3 benchmarks/ncu_table.py $OUT/ncu7.csv > $OUT/ncu7.txt || tail -5 $OUT/ncu7.err
  cat $OUT/ncu7.txt
  ;;
native)
  # the library's native forward step vs the Warp-generated one, per lattice / precision / size, then the bench CLI
  timeout 330 python3 benchmarks/native_bench.py 3 > $OUT/native.txt 2>$OUT/native.err; echo "rc $?"
  grep -E "case|copy" $OUT/native.txt | python3 -c "
import json, sys
for l in sys.stdin:
    print(' '.join(str(v) for v in json.loads(l).values()))"; tail -3 $OUT/native.err
  for a in "--size 256" "--size 256 --precision fp16" "--size 512"; do
    timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-700
  done
  timeout 150 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  ;;
blocks)
  # the face-only code read (lab) first
  LAB7_ONLY=lib,nat_offfast,nat_face,nat_offfast_dev,nat_face_dev,ref timeout 160 python3 benchmarks/forward_lab7.py 256 time 3 > $OUT/lab7f.txt 2>$OUT/lab7f.err; echo "rc $?"
  values lab7f; tail -3 $OUT/lab7f.err
  # block sizes of the native step, then Nsight Compute of the native and generated steps
  timeout 200 python3 benchmarks/native_bench.py 3 "D3Q19:256:float32,D3Q19:256:float16,D3Q19:512:float32,D3Q27:256:float32,D3Q27:256:float16,D2Q9:4096:float32" blocks > $OUT/blocks.txt 2>$OUT/blocks.err; echo "rc $?"
  values blocks; tail -3 $OUT/blocks.err
  m="gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct"
  timeout 200 ncu --profile-from-start off --clock-control none --csv --metrics $m python3 benchmarks/native_bench.py 1 "D3Q19:256:float32,D3Q19:256:float16,D3Q27:256:float32" ncu > $OUT/ncu9.csv 2>$OUT/ncu9.err
  echo "ncu rc $?"; python3 benchmarks/ncu_table.py $OUT/ncu9.csv > $OUT/ncu9.txt || tail -5 $OUT/ncu9.err
  cat $OUT/ncu9.txt
  ;;
grad)
  # the gradient at T = 1000 with the native forward step, the generated one, the native one again
  for v in 1 0 1; do
    echo "DIFFLBM_NATIVE_STEP=$v"
    DIFFLBM_NATIVE_STEP=$v timeout 110 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  done
  ;;
caps)
  # register caps of the native step (ptxas: D3Q19 fp32 56 without spills), then the face-only lab at caps
  timeout 250 python3 benchmarks/native_bench.py 3 "D3Q19:256:float32,D3Q19:256:float16,D3Q19:512:float32,D3Q27:256:float32" caps > $OUT/caps.txt 2>$OUT/caps.err; echo "rc $?"
  values caps; tail -3 $OUT/caps.err
  ;;
nadj)
  # the native moments adjoint (opt-in, DIFFLBM_NATIVE_ADJOINT=1): per launch, then the gradient, alternating
  timeout 200 python3 benchmarks/native_adjoint_bench.py 3 > $OUT/nadj.txt 2>$OUT/nadj.err; echo "rc $?"
  values nadj; tail -3 $OUT/nadj.err
  for v in 1 0 1 0; do
    echo "DIFFLBM_NATIVE_ADJOINT=$v"
    DIFFLBM_NATIVE_ADJOINT=$v timeout 100 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  done
  ;;
open)
  # the native step's open boundaries (opt-in, DIFFLBM_NATIVE_OPEN=1) against the generated step
  timeout 250 python3 benchmarks/native_bench.py 3 "D3Q19:256:float32:channel,D3Q19:256:float16:channel,D2Q9:4096:float32:channel,D3Q19:512:float32:channel" > $OUT/open.txt 2>$OUT/open.err; echo "rc $?"
  values open; tail -3 $OUT/open.err
  ;;
cudatests)
  # the native step's bit-identity tests on CUDA (skipped on machines without a GPU), then the CUDA graph tests
  timeout 400 python3 -m pytest -q tests/test_native.py -k cuda 2>&1 | tail -5
  timeout 150 python3 -m pytest -q tests/test_gradients.py tests/test_bridges.py -k cuda 2>&1 | tail -3
  ;;
*)
  echo "unknown part $1"; exit 2
  ;;
esac
