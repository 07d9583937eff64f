#!/usr/bin/env bash
# Second session, last call: CUDA bridge tests after the graph fix, issue #5 on the GPU (pyevtk carried).
set -u
out=${OUT:-.}
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_bridges.py tests/test_gradients.py -k "cuda" 2>&1 | tail -4 | tee $out/pytest_cuda.txt
mkdir -p $out/opt
opt() { name=$1; shift; timeout 100 python3 -m difflbm.cli optimize "$@" --device cuda --out $out/opt/$name > $out/opt/$name.log 2>&1; echo "$name rc=$?"; }
for p in initial-state inflow-control topology viscosity; do opt default-$p $p; done
opt big-initial-state initial-state --resolution 1024 --steps 2000 --iterations 20 --precision float32
opt big-viscosity viscosity --resolution 1024 --steps 2000 --iterations 10 --precision float32
opt big-topology topology --resolution 256 --steps 4000 --iterations 20 --precision float32
find $out/opt -name "*.vti" -delete; find $out/opt -name "iterate.npz" -delete; find $out/opt/big-* -name "*.npy" -delete
for f in $out/opt/*.log; do tail -c 1500 $f > $f.tail; rm $f; done
