"""Forward MLUPS of the D3Q19 fp32 cavity at 256^3 under several CUDA register caps (one call)."""
import dataclasses, json
import warp as wp
wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
from difflbm import bench
from difflbm.problem import Problem

orig = Problem.__init__
cap = {"v": None}
def patched(self, *a, **k):
    orig(self, *a, **k)
    self.config = dataclasses.replace(self.config, max_registers=cap["v"])
Problem.__init__ = patched
for v in [None, 128, 96, 64]:
    cap["v"] = v
    r = bench.run_bench(lattice="D3Q19", precision="fp32", size=256, steps=100, device="cuda:0")
    print(json.dumps({"max_registers": v, "mlups": r["forward_mlups"], "roofline_fraction": r["roofline_fraction"],
                      "copy_gbs": r["copy_bandwidth_gbs"]}), flush=True)
