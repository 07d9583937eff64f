"""Gradient through a long rollout: MemoryBudget(states=STATES), or the default Checkpointed() when
STATES is 0 (which adds checkpoint levels when 2 sqrt(T) states do not fit in free memory).

python benchmarks/long_gradient.py SIZE STEPS STATES  -> one JSON line (schedule, peak memory, times)
"""
import json, sys, time
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, losses as L
from difflbm.bench import cavity_problem

size, T, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
p = cavity_problem("D3Q19", size, "float32", "cuda:0")
st, params = p.state(), p.parameters()
A.value_and_grad(p, params, st, 2, L.KineticEnergy(), wrt=("initial",))  # compile outside the timing
wp.synchronize()
strategy = A.MemoryBudget(states=n) if n else A.Checkpointed()
spans, _ = A._schedule(strategy, T, st.f.capacity, p.device, 16 * p.cell_count)  # moments leaf: 16 B per cell
print(json.dumps({"strategy": repr(strategy), "spans": spans}), flush=True)
t0 = time.perf_counter()
v, g = A.value_and_grad(p, params, st, T, L.KineticEnergy(), adjoint=strategy, wrt=("initial",))
wp.synchronize()
dt = time.perf_counter() - t0
print(json.dumps({"size": size, "steps": T, "strategy": repr(strategy), "spans": spans, "state_bytes": st.f.capacity, "loss": v,
                  "gradient_s": dt, "mlups_equivalent": p.cell_count * T / dt / 1e6,
                  "peak_mempool_bytes": wp.get_mempool_used_mem_high("cuda:0"),
                  "device": wp.get_device("cuda:0").name}), flush=True)
