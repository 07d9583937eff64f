#!/usr/bin/env bash
# Fourteenth session (2026-12-02), one H200. Usage: bash benchmarks/gpu_session14.sh PART [PART ...]
# Each part fits one 600 s call. The tree each part ran is in BENCHMARKS.md ("H200, fourteenth session").
source "$(dirname "$0")/_gpu_header.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R="python3 -m torch.distributed.run --standalone --nproc_per_node=1"
dist() { timeout "$1" $R benchmarks/dist_bench.py "${@:2}" 2>$OUT/dist.err | grep -E '^\{' | cut -c1-900; tail -2 $OUT/dist.err | cut -c1-300; }
for part in "$@"; do
echo "== $part"
case "$part" in
dist1)
  # issue #7 on one GPU: the single-GPU graph-replayed loop (bench, with the copy bandwidth), then the
  # one-rank decomposition as it runs by default (whole-slab step + one wrap kernel) and with the
  # overlapped schedule forced (the split launches and the pack / copy / unpack of a multi-rank step,
  # the rank's own planes as the messages), 256^3 forward and gradient, alternating; then 32^3 (host-bound)
  timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --json 2>/dev/null | tail -1 | cut -c1-600
  S=$OUT/one.jsonl
  for round in 1 2; do
    dist 150 --mode weak --size 256 --gradient --repeats 5 --out $S
    dist 150 --mode weak --size 256 --gradient --repeats 5 --overlap-one-rank --out $S
  done
  dist 60 --mode weak --size 32 --steps 500 --repeats 5 --out $S
  dist 60 --mode weak --size 32 --steps 500 --repeats 5 --overlap-one-rank --out $S
  timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --json 2>/dev/null | tail -1 | cut -c1-600
  ;;
dist2)
  # recorded launches (2f531a9, src/) against the tree before them (0a18763, old_src/, an untracked
  # copy carried for this call), one rank, plain and with the overlapped schedule forced, alternating
  S=$OUT/two.jsonl
  for round in 1 2; do
    for tree in old_src src; do
      for mode in "" --overlap-one-rank; do
        echo "-- $tree $mode"
        PYTHONPATH=/tmp/site:$PWD/$tree dist 120 --mode weak --size 256 --gradient --repeats 5 $mode --out $S
      done
    done
  done
  for tree in old_src src; do
    for mode in "" --overlap-one-rank; do
      echo "-- $tree $mode 32^3"
      PYTHONPATH=/tmp/site:$PWD/$tree dist 60 --mode weak --size 32 --steps 500 --repeats 5 $mode --out $S
    done
  done
  timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --json 2>/dev/null | tail -1 | cut -c1-600
  ;;
dist3)
  # the overlapped step's second CUDA stream (default) against one stream (--one-stream), one rank with
  # the overlap forced, and the plain one-rank run, alternating; then the CUDA tests of the slab code.
  # Ran on ac8a4dc; the second stream measured no faster and was taken out again (the flags are gone)
  S=$OUT/three.jsonl
  for round in 1 2; do
    for mode in "--overlap-one-rank" "--overlap-one-rank --one-stream" ""; do
      echo "-- $mode"
      dist 120 --mode weak --size 256 --gradient --repeats 5 $mode --out $S
    done
  done
  timeout 90 python3 -m difflbm.cli bench --device cuda --size 256 --json 2>/dev/null | tail -1 | cut -c1-600
  timeout 200 python3 -m pytest -q -x tests/test_distributed.py -k "cuda or overlap_forced" 2>&1 | tail -3
  ;;
failing)
  lscpu | grep -E "Model name|Flags" | cut -c1-200
  timeout 200 python3 -m pytest -q tests/test_distributed.py -k "overlap_forced" 2>&1 | grep -E "^E |Error|assert|passed|failed" | head -40
  ;;
loop)
  # Solver.run's loop (no graph) with recorded launches (src) and without (prev_src: 0a18763, an
  # untracked copy carried for the call), alternating
  for round in 1 2; do
    for tree in prev_src src; do
      PYTHONPATH=/tmp/site:$PWD/$tree timeout 100 python3 benchmarks/run_loop.py 32 64 128 2>&1 | grep '^{' | cut -c1-300
    done
  done
  ;;
tests2)
  # what device time was left: the tests of the changed code paths first, then test_native's CUDA tests
  timeout 120 python3 -m pytest -q -x tests/test_distributed.py tests/test_physics.py tests/test_gradients.py tests/test_bridges.py tests/test_float16.py tests/test_ensemble.py -k "cuda or recorded or replay" 2>&1 | tail -3
  timeout 300 python3 -m pytest -q -x tests/test_native.py -k cuda 2>&1 | tail -4
  ;;
tests)
  timeout 560 python3 -m pytest -q -x tests/test_native.py tests/test_physics.py tests/test_gradients.py tests/test_bridges.py tests/test_float16.py tests/test_ensemble.py -k "cuda or recorded or replay" 2>&1 | tail -4
  ;;
esac
done
