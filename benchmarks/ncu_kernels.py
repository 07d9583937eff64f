"""A few forward steps and fused-adjoint steps of the D3Q19 fp32 cavity, for Nsight Compute.

Run under ncu on the device machine (see benchmarks/gpu_profile.sh):
    python3 benchmarks/ncu_kernels.py [size] [precision] [replay]
"""
import sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, losses as L
from difflbm.bench import cavity_problem

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
prec = sys.argv[2] if len(sys.argv) > 2 else "float32"
replay = sys.argv[3] if len(sys.argv) > 3 else "auto"
p = cavity_problem("D3Q19", size, prec, "cuda:0")
st, params = p.state(), p.parameters()
A.value_and_grad(p, params, st, 4, L.KineticEnergy(), adjoint=A.StoreAll(), wrt=("initial", "wall_velocity"),
                  replay=replay)
wp.synchronize()
print("done", flush=True)
