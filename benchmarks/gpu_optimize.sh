#!/usr/bin/env bash
# Issue #5 on the GPU, one device call: the four problems at their CPU defaults (for CPU/GPU
# agreement) and at a GPU resolution. Summaries (wall time, peak memory) land in $OUT/opt/*.
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-.}/opt
mkdir -p $out
opt() { name=$1; shift; timeout 150 python3 -m difflbm.cli optimize "$@" --device cuda --out $out/$name > $out/$name.log 2>&1; echo "$name rc=$?"; tail -c 600 $out/$name.log; echo; }
for p in initial-state inflow-control topology viscosity; do opt default-$p $p; done
opt big-initial-state initial-state --resolution 1024 --steps 2000 --iterations 20 --precision float32
opt big-viscosity viscosity --resolution 1024 --steps 2000 --iterations 10 --precision float32
opt big-inflow-control inflow-control --resolution 256 --steps 4000 --iterations 20 --precision float32
opt big-topology topology --resolution 256 --steps 4000 --iterations 20 --precision float32
find $out -name "*.vti" -size +20M -delete  # keep the call's return small; summaries and PNGs stay
