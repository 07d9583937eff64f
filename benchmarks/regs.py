"""Forward MLUPS (and gradient throughput) of the D3Q19 cavity under several CUDA register caps and
block sizes, in one call:  python3 benchmarks/regs.py [size] [precision] [cap[xblock]...]
(e.g. 128 96 128x128)."""
import dataclasses, json, sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
from difflbm import bench, kernels as K
from difflbm.problem import Problem

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
prec = sys.argv[2] if len(sys.argv) > 2 else "fp32"
variants = [tuple(int(v) for v in (a.split("x") + ["256"])[:2]) for a in sys.argv[3:]] or [(128, 256), (96, 256)]
orig = Problem.__init__
cap = {"v": None}
def patched(self, *a, **k):
    orig(self, *a, **k)
    self.config = dataclasses.replace(self.config, max_registers=cap["v"])
Problem.__init__ = patched
for v, block in variants:
    cap["v"] = v
    K.BLOCK_DIM = block
    r = bench.run_bench(lattice="D3Q19", precision=prec, size=size, steps=100, device="cuda:0", gradient=True)
    print(json.dumps({"max_registers": v, "block_dim": block, "precision": prec, "size": size, "mlups": round(r["forward_mlups"]),
                      "roofline_fraction": round(r["roofline_fraction"], 3), "copy_gbs": round(r["copy_bandwidth_gbs"]),
                      "gradient_mlups_equiv": round(r["gradient_mlups_equivalent"]),
                      "gradient_over_forward": round(r["gradient_over_forward"], 2)}), flush=True)
