#!/usr/bin/env bash
# Nsight Compute sections of the forward and fused-adjoint kernels (D3Q19 fp32 256^3), one call.
set -u
out=${OUT:-.}
secs="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats"
ncu --clock-control none $secs -k regex:lbm_step_[0-9a-f]+_cuda_kernel_forward --launch-skip 3 --launch-count 1 \
  python3 benchmarks/ncu_kernels.py 256 > $out/ncu_forward.txt 2>&1
ncu --clock-control none $secs -k regex:lbm_step_adjoint --launch-skip 1 --launch-count 1 \
  python3 benchmarks/ncu_kernels.py 256 > $out/ncu_adjoint.txt 2>&1
for f in $out/ncu_forward.txt $out/ncu_adjoint.txt; do
  echo "== $f"; grep -E "lbm_step|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Size|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|Issue Slots|Warp Cycles Per Issued|No Eligible|Stall|Local" $f | head -40
done
