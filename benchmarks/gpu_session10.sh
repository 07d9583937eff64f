#!/usr/bin/env bash
# Tenth session (2026-12-01), one H200. Usage: bash benchmarks/gpu_session10.sh PART [PART ...]
# Ran this session: lab caps ball, tests bench, forms formtests, last. Prepared for the next: final, gap,
# tests (each its own call: a call may run 600 s).
source "$(dirname "$0")/_gpu_header.sh"
for part in "$@"; do
echo "== $part"
case "$part" in
lab)
  # issue #6: float16 with one, two or four cells per thread (pull alone and pull + BGK), 256^3
  timeout 300 python3 benchmarks/fp16_pairs_lab.py 3 > $OUT/lab.txt 2>$OUT/lab.err; echo "rc $?"
  values lab; tail -3 $OUT/lab.err
  ;;
caps)
  # register caps of the native step (ptxas: D3Q19 fp32 56 without spills)
  timeout 250 python3 benchmarks/native_bench.py 3 "D3Q19:256:float32,D3Q19:256:float16,D3Q19:512:float32,D3Q27:256:float32" caps > $OUT/caps.txt 2>$OUT/caps.err; echo "rc $?"
  values caps; tail -3 $OUT/caps.err
  ;;
ball)
  # the native step with a solid ball in the cavity (solid cells, links on a sphere), bit for bit
  timeout 150 python3 benchmarks/native_bench.py 3 "D3Q19:256:float32:ball,D3Q19:256:float16:ball" > $OUT/ball.txt 2>$OUT/ball.err; echo "rc $?"
  values ball; grep mismatch $OUT/ball.txt; tail -3 $OUT/ball.err
  ;;
forms)
  # the native step's forms: one cell per thread, link-free loads, two cells per thread (paired stores)
  timeout 420 python3 benchmarks/native_bench.py 3 "D3Q19:256:float16,D3Q19:256:float32,D3Q19:512:float32,D3Q19:512:float16,D3Q27:256:float32,D3Q27:256:float16,D2Q9:4096:float32,D2Q9:4096:float16,D3Q19:256:float32:channel,D3Q19:256:float16:ball" forms > $OUT/forms.txt 2>$OUT/forms.err; echo "rc $?"
  values forms; grep mismatch $OUT/forms.txt | grep -v '"mismatches_after_4_steps": 0' ; tail -3 $OUT/forms.err
  ;;
final)
  # the issue's commands with the per-lattice default forms, then the gradient with the default form
  # and with one cell per thread (the CUDA tests: part tests, in its own call)
  for a in "--size 256" "--size 512" "--size 256 --precision fp16" "--lattice D3Q27 --size 256" "--lattice D3Q27 --size 256 --precision fp16" "--lattice D2Q9 --size 4096"; do
    timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-600
  done
  for f in default one; do
    echo "form $f"
    if [ $f = default ]; then unset DIFFLBM_NATIVE_FORM; else export DIFFLBM_NATIVE_FORM=$f; fi
    timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  done
  unset DIFFLBM_NATIVE_FORM
  ;;
last)
  # the grid and coded box as compile-time constants (+c) next to the forms, then the gradient with
  # the default form and with one cell per thread, two bench commands, the native CUDA tests
  NATIVE_BENCH_FORMS="one,pairs,pairs_split,one+c,pairs+c,pairs_split+c" timeout 260 python3 benchmarks/native_bench.py 2 "D3Q19:256:float16,D3Q19:256:float32,D3Q19:512:float32,D3Q27:256:float32" forms > $OUT/last.txt 2>$OUT/last.err; echo "rc $?"
  values last; grep mismatch $OUT/last.txt | grep -v '"mismatches_after_4_steps": 0' ; tail -3 $OUT/last.err
  for f in default one; do
    echo "form $f"
    if [ $f = default ]; then unset DIFFLBM_NATIVE_FORM; else export DIFFLBM_NATIVE_FORM=$f; fi
    timeout 80 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  done
  unset DIFFLBM_NATIVE_FORM
  for a in "--size 256" "--size 256 --precision fp16"; do
    timeout 40 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-600
  done
  timeout 120 python3 -m pytest -q tests/test_native.py -k cuda 2>&1 | tail -3
  ;;
gap)
  # the float16 gap: the lab's kernels with the side at run time, the library's step on the lab's
  # periodic box and on the cavity; the joint-load pairs (untimed forms of this session's end)
  timeout 300 python3 benchmarks/fp16_pairs_lab.py 3 > $OUT/gap.txt 2>$OUT/gap.err; echo "rc $?"
  values gap; tail -3 $OUT/gap.err
  NATIVE_BENCH_FORMS="one,pairs+c,pairs_joint+c,pairs_joint_split+c,one+c" timeout 300 python3 benchmarks/native_bench.py 2 "D3Q19:256:float16:periodic,D3Q19:256:float16,D3Q19:256:float32,D3Q19:512:float32,D3Q27:256:float16" forms > $OUT/gapp.txt 2>$OUT/gapp.err; echo "rc $?"
  values gapp; grep mismatch $OUT/gapp.txt | grep -v '"mismatches_after_4_steps": 0'; tail -3 $OUT/gapp.err
  ;;
formtests)
  timeout 200 python3 -m pytest -q tests/test_native.py -k "cuda and (forms or equals_warp)" 2>&1 | tail -3
  ;;
tests)
  timeout 420 python3 -m pytest -q tests/test_native.py -k cuda 2>&1 | tail -3
  timeout 150 python3 -m pytest -q tests/test_gradients.py tests/test_bridges.py -k cuda 2>&1 | tail -3
  ;;
bench)
  # the issue's commands with the tenth session's defaults (native open boundaries and adjoint)
  for a in "--size 256" "--size 256 --precision fp16" "--size 512" "--size 64" "--size 128"; do
    timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-600
  done
  for a in "" "--precision fp16"; do
    timeout 120 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient $a --json 2>/dev/null | tail -1 | cut -c1-900
  done
  ;;
*)
  echo "unknown part $part"; exit 2
  ;;
esac
done
