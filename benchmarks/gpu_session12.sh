#!/usr/bin/env bash
# Twelfth session (2026-12-02), one H200. Usage: bash benchmarks/gpu_session12.sh PART [PART ...]
# Each part fits one 600 s call. The tree each part ran is in BENCHMARKS.md ("H200, twelfth session").
# Ran before this file: gpu_session11.sh shell and rows, and forms_part rows2 (BENCHMARKS.md). Ran
# from it: solid, final, gradient, tests. Prepared, then run from gpu_session13.sh: deviation (the float16
# deviation collision).
source "$(dirname "$0")/_gpu_header.sh"
for part in "$@"; do
echo "== $part"
case "$part" in
solid)
  # the solid test compiled out where the problem has no solid cell (+c: any_solid a constant) against
  # the test at run time (+c+s: DIFFLBM_NATIVE_SOLID_FLAG=0), with the wall-row table (+r)
  forms_part solid 400 "pairs_patch+c+r,pairs_patch+c+r+s,pairs_joint_patch+c+r,pairs_joint_patch+c+r+s,pairs_split+c+r,pairs_split+c+r+s" "D3Q19:256:float16,D3Q19:256:float32,D3Q19:256:float16:box,D3Q19:256:float16:ball,D3Q27:256:float16,D3Q27:256:float32"
  ;;
final)
  # the issue's commands with this session's defaults
  for a in "--size 256" "--size 512" "--size 256 --precision fp16" "--lattice D3Q27 --size 256" "--lattice D3Q27 --size 256 --precision fp16" "--lattice D2Q9 --size 4096" "--size 64" "--size 128"; do
    timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-700
  done
  timeout 100 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  ;;
gradient)
  # the gradient after the wall-row table's fix (d61cb17), float32 and float16 storage
  for a in "--size 256 --steps 1000 --gradient" "--size 256 --steps 1000 --gradient --precision fp16"; do
    timeout 100 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-900
  done
  ;;
deviation)
  # prepared here, ran as gpu_session13.sh devforms / devbench / devtests (BENCHMARKS.md, thirteenth session)
  bash "$(dirname "$0")/gpu_session13.sh" devforms devbench devtests
  ;;
tests)
  timeout 400 python3 -m pytest -q -x tests/test_native.py -k cuda 2>&1 | tail -3
  timeout 150 python3 -m pytest -q -x tests/test_gradients.py tests/test_bridges.py -k cuda 2>&1 | tail -3
  ;;
*)
  echo "unknown part $part"; exit 2
  ;;
esac
done
