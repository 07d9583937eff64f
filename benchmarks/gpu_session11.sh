#!/usr/bin/env bash
# Eleventh session (2026-12-02), one H200. Usage: bash benchmarks/gpu_session11.sh PART [PART ...]
# Each part fits one 600 s call. The tree each part ran is in BENCHMARKS.md ("H200, eleventh session").
# Ran: final, gap (gpu_session10.sh), patch, tests, cli, walls, final, lean. Prepared: shell, rows, tests.
source "$(dirname "$0")/_gpu_header.sh"
for part in "$@"; do
echo "== $part"
case "$part" in
patch)
  # issue #6: the patched loads (populations loaded without waiting for the cell code, links patched
  # after) next to the forms of the tenth session, all with the grid and coded box as constants
  forms_part patch 560 "one+c,pairs+c,pairs_split+c,pairs_joint+c,patch+c,pairs_patch+c,pairs_joint_patch+c" "D3Q19:256:float16,D3Q19:256:float32,D3Q19:512:float32,D3Q19:512:float16,D3Q19:256:float16:ball,D3Q19:256:float32:channel,D3Q27:256:float16,D3Q27:256:float32"
  ;;
cli)
  # the issue's bench command with candidate forms (DIFFLBM_NATIVE_FORM), then the gradient with the
  # default form (replay: one cell per thread) and with the patched pair form (replay: patch)
  for f in pairs_joint pairs_patch pairs_joint_patch; do
    for a in "--size 256" "--size 512" "--size 256 --precision fp16"; do
      echo "form $f $a"; DIFFLBM_NATIVE_FORM=$f timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-600
    done
  done
  for f in default pairs_joint_patch; do
    echo "gradient form $f"
    if [ $f = default ]; then unset DIFFLBM_NATIVE_FORM; else export DIFFLBM_NATIVE_FORM=$f; fi
    timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  done
  unset DIFFLBM_NATIVE_FORM
  ;;
walls)
  # where the walls cost float16 its speed: still walls on all faces, on the z faces (with and without
  # the lid), on the x faces, none; the patched loads with the moving-wall slot read next to the code,
  # and with the own opposite populations loaded speculatively (spec, pairs_spec: forms of 9dcaa18, the
  # tree this part ran; removed after it, being slower in every case)
  forms_part walls 400 "pairs+c,pairs_patch+c,pairs_spec+c,spec+c,one+c" "D3Q19:256:float16,D3Q19:256:float16:box,D3Q19:256:float16:zwalls,D3Q19:256:float16:zlid,D3Q19:256:float16:xwalls,D3Q19:256:float16:periodic,D3Q19:256:float32"
  ;;
final)
  # the issue's commands with this session's defaults (f2ce2e5), the gradient with the default form
  for a in "--size 256" "--size 512" "--lattice D3Q27 --size 256" "--lattice D3Q27 --size 256 --precision fp16"; do
    timeout 60 python3 -m difflbm.cli bench --device cuda $a --json 2>/dev/null | tail -1 | cut -c1-600
  done
  timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --steps 1000 --gradient --json 2>/dev/null | tail -1 | cut -c1-900
  ;;
lean)
  # the lean path: a warp none of whose cells can have a code runs the body compiled for code 0
  forms_part lean 200 "pairs+c,pairs_lean+c,pairs_joint+c,pairs_joint_lean+c,lean+c" "D3Q19:256:float16,D3Q19:256:float16:xwalls,D3Q19:256:float32,D3Q19:512:float32"
  ;;
shell)
  # prepared for the next session (not run in the eleventh): the lean path with the threads in shell
  # order (the z-face pairs of 32 rows per warp first), so no interior warp holds a z-face cell
  forms_part shell 500 "pairs+c,pairs_joint+c,pairs_joint_lean+c,pairs_shell+c,pairs_joint_shell+c" "D3Q19:256:float16,D3Q19:256:float32,D3Q19:512:float32,D3Q19:512:float16,D3Q19:256:float32:channel,D3Q19:256:float16:ball,D3Q27:256:float32,D3Q27:256:float16"
  ;;
rows)
  # prepared for the next session (not run in the eleventh): the moving-wall terms from the table of
  # distinct rows (+r, DIFFLBM_NATIVE_WALL_ROWS=1) against a row per cell, on the lid cavity and z lid
  forms_part rows 400 "pairs+c,pairs+c+r,pairs_patch+c,pairs_patch+c+r,pairs_joint+c,pairs_joint+c+r,pairs_joint_shell+c+r" "D3Q19:256:float16,D3Q19:256:float16:zlid,D3Q19:256:float32,D3Q19:512:float32"
  ;;
tests)
  timeout 420 python3 -m pytest -q tests/test_native.py -k cuda 2>&1 | tail -3
  timeout 150 python3 -m pytest -q tests/test_gradients.py tests/test_bridges.py -k cuda 2>&1 | tail -3
  ;;
*)
  echo "unknown part $part"; exit 2
  ;;
esac
done
