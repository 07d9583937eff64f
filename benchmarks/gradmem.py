"""Peak device memory of a checkpointed gradient (fresh process per run): python benchmarks/gradmem.py SIZE T"""
import json, sys, time
import warp as wp
wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
from difflbm import adjoint as A, losses as L
from difflbm.bench import cavity_problem
size, T = int(sys.argv[1]), int(sys.argv[2])
p = cavity_problem("D3Q19", size, "float32", "cuda:0")
st = p.state()
base = wp.get_mempool_used_mem_current("cuda:0")
t0 = time.perf_counter()
A.value_and_grad(p, p.parameters(), st, T, L.KineticEnergy(), wrt=("initial", "wall_velocity"))
wp.synchronize()
print(json.dumps({"size": size, "steps": T, "state_bytes": st.f.capacity, "base_bytes": base,
                  "peak_bytes": wp.get_mempool_used_mem_high("cuda:0"), "wall_s": time.perf_counter() - t0}))
