#!/usr/bin/env bash
# Thirteenth session (2026-12-02), one H200. Usage: bash benchmarks/gpu_session13.sh PART [PART ...]
# Each part fits one 600 s call. The tree each part ran is in BENCHMARKS.md ("H200, thirteenth session").
source "$(dirname "$0")/_gpu_header.sh"
for part in "$@"; do
echo "== $part"
case "$part" in
devforms)
  # the float16 deviation collision (DIFFLBM_FP16_COLLISION=deviation, read when a Problem is built)
  # against the shifted one, two rounds each, alternating, on the default float16 forms
  for round in 1 2; do
    for mode in shifted deviation; do
      export DIFFLBM_FP16_COLLISION=$mode
      forms_part dev_${mode}_$round 140 "pairs_patch+c+r,pairs_split+c+r" "D3Q19:256:float16,D3Q27:256:float16,D3Q19:256:float16:periodic"
    done
  done
  unset DIFFLBM_FP16_COLLISION
  ;;
faces)
  # the codes from the faces (DIFFLBM_NATIVE_FACE_CODES; +f: off) with the patched loads face by face
  # (FACEBLOCK=1, the experiment's switch, since removed) or by link bits (FACEBLOCK=0, kept), the
# float16 deviation collision on
  export DIFFLBM_FP16_COLLISION=deviation
  for round in 1 2; do
    export FACEBLOCK=1
    forms_part faces_b_$round 150 "pairs_patch+c+r,pairs_patch+c+r+f,pairs_joint_patch+c+r,pairs_joint_patch+c+r+f" "D3Q19:256:float16,D3Q19:256:float32,D3Q27:256:float16"
    export FACEBLOCK=0
    forms_part faces_a_$round 150 "pairs_patch+c+r,pairs_joint_patch+c+r" "D3Q19:256:float16,D3Q19:256:float32,D3Q27:256:float16"
  done
  unset DIFFLBM_FP16_COLLISION FACEBLOCK
  ;;
devbench)
  # the issue's float16 commands with each collision, alternating, then the float16 gradient
  for round in 1 2; do
    for mode in shifted deviation; do
      export DIFFLBM_FP16_COLLISION=$mode
      timeout 60 python3 -m difflbm.cli bench --device cuda --size 256 --precision fp16 --json 2>/dev/null | tail -1 | cut -c1-700
    done
  done
  export DIFFLBM_FP16_COLLISION=deviation
  for a in "--size 512 --precision fp16" "--lattice D3Q27 --size 256 --precision fp16" "--size 256 --steps 1000 --gradient --precision fp16"; do
    timeout 100 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-900
  done
  unset DIFFLBM_FP16_COLLISION
  ;;
validate)
  # float16 accuracy at 256^2 (Ghia Re 400 and 1000): each float16 collision, then float32.
  # Ran once with 60 s per run (tree b4fe3e9): each run hit the limit before printing; give each
  # run a call of its own (600 s) next time
  for re in 400 1000; do
    for mode in deviation shifted; do
      DIFFLBM_FP16_COLLISION=$mode timeout ${VALIDATE_TIMEOUT:-60} python3 -m difflbm.cli validate cavity --resolution 256 --reynolds $re --precision fp16 --device cuda --json 2>/dev/null | tail -1 | cut -c1-600
    done
    timeout ${VALIDATE_TIMEOUT:-60} python3 -m difflbm.cli validate cavity --resolution 256 --reynolds $re --precision fp32 --device cuda --json 2>/dev/null | tail -1 | cut -c1-600
  done
  ;;
devtests)
  timeout 250 python3 -m pytest -q -x tests/test_native.py tests/test_float16.py -k "deviation and cuda" 2>&1 | tail -3
  ;;
final)
  # the issue's commands with this session's defaults
  for a in "--size 256" "--size 512" "--size 256 --precision fp16" "--size 512 --precision fp16" "--lattice D3Q27 --size 256" "--lattice D3Q27 --size 256 --precision fp16" "--lattice D2Q9 --size 4096" "--size 64" "--size 128"; do
    timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-700
  done
  for a in "--size 256 --steps 1000 --gradient" "--size 256 --steps 1000 --gradient --precision fp16"; do
    timeout 100 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-900
  done
  ;;
tests)
  timeout 400 python3 -m pytest -q -x tests/test_native.py -k cuda 2>&1 | tail -3
  timeout 150 python3 -m pytest -q -x tests/test_gradients.py tests/test_bridges.py tests/test_float16.py -k cuda 2>&1 | tail -3
  ;;
*)
  echo "unknown part $part"; exit 2
  ;;
esac
done
