"""The moments replay (fifth session): a gradient's leaf replay keeps (rho, u) per step, 16 B per
cell, and the adjoint reads them instead of gathering the state (172 B per cell instead of 232).

python3 benchmarks/moments.py [size] -> JSON lines, all on the 3D lid cavity D3Q19 fp32 (bench's
problem): copy bandwidth; forward step and forward step storing moments (CUDA graph of 100 steps);
the fused adjoint step from a state and from moments at several register caps (graph of 100
launches); the checkpointed gradient of T steps, replay="states" vs "moments", in steady state (two
warm-up calls), and a per-kernel device-time profile of one moments gradient without graphs.
Medians of 5 (gradients: of 3), device synchronized (difflbm.bench._time).
"""
import dataclasses, json, sys, time
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, kernels as K, losses as L, bench
from difflbm.bench import cavity_problem
from difflbm.solver import Solver

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
dev = "cuda:0"
cells = size ** 3
timed = lambda fn, repeats=5: bench._time(fn, dev, repeats)[0]


def graph_of(fn):
    fn()
    with wp.ScopedCapture(device=dev, force_module_load=False) as cap:
        fn()
    return lambda: wp.capture_launch(cap.graph)


def emit(**kw):
    print(json.dumps(kw), flush=True)


bw = bench.copy_bandwidth(dev)
emit(copy_gbs=round(bw / 1e9), device=wp.get_device(dev).name, warp=wp.__version__, size=size)
p = cavity_problem("D3Q19", size, "float32", dev)
solver = Solver(p)
params = p.parameters()
a, b = p.state(), p.state()
mom = wp.zeros((4, cells), dtype=wp.float32, device=dev)
solver.update_wall_term(params)


def fwd():
    for _ in range(50):
        solver.step(a, b, params, update_walls=False)
        solver.step(b, a, params, update_walls=False)


def fwd_m():
    for _ in range(50):
        solver.step_moments(a, b, mom, params)
        solver.step_moments(b, a, mom, params)


t_f = timed(graph_of(fwd)) / 100
emit(phase="forward step", ms=t_f * 1e3, mlups=cells / t_f / 1e6, fraction_152B=cells * 152 / t_f / bw)
t_fm = timed(graph_of(fwd_m)) / 100
emit(phase="forward step storing moments", ms=t_fm * 1e3, over_forward=t_fm / t_f, fraction_168B=cells * 168 / t_fm / bw)

grads = params.zeros_like()
adj1, adj2 = p.state(), p.state()
adj_wall = wp.zeros_like(solver.wall_term)
wrt = ("initial", "wall_velocity")


def adjoint_time(kernel, moments):
    def run():
        for _ in range(50):
            A._fused_step_adjoint(solver, kernel, a, adj1, adj2, params, grads, None, wrt, adj_wall, None, moments=moments)
            A._fused_step_adjoint(solver, kernel, a, adj2, adj1, params, grads, None, wrt, adj_wall, None, moments=moments)
    return timed(graph_of(run)) / 100


t_b = adjoint_time(K.step_adjoint_kernel(p.config, omega_grad=False, force_grad=False), None)
emit(phase="adjoint step from the state (cap 96)", ms=t_b * 1e3, over_forward=t_b / t_f, fraction_232B=cells * 232 / t_b / bw)
t_m = adjoint_time(K.step_adjoint_kernel(p.config, omega_grad=False, force_grad=False, moments=True), mom)
emit(phase="adjoint step from moments (cap 96)", ms=t_m * 1e3, over_forward=t_m / t_f, fraction_172B=cells * 172 / t_m / bw)
if len(sys.argv) > 2 and sys.argv[2] == "kernels":
    sys.exit(0)

st = p.state()
for steps in (100, 400):
    for replay in ("states", "moments"):
        run = lambda: A.value_and_grad(p, params, st, steps, L.KineticEnergy(), wrt=wrt, replay=replay)
        run(); run()
        t_g = timed(run, 3)
        emit(phase=f"gradient T={steps} replay={replay}", s=t_g, mlups_equivalent=cells * steps / t_g / 1e6,
             over_forward=t_g / (steps * t_f))

run_ng = lambda: A.value_and_grad(p, params, st, 100, L.KineticEnergy(), wrt=wrt, graph=False)
run_ng()
wp.synchronize_device(dev)
t0 = time.perf_counter()
wp.timing_begin(cuda_filter=wp.TIMING_ALL)
run_ng()
res = wp.timing_end()
wall = time.perf_counter() - t0
agg = {}
for r in res:
    n, ms = agg.get(r.name[:60], (0, 0.0))
    agg[r.name[:60]] = (n + 1, ms + r.elapsed)
emit(profile="moments gradient T=100 without graphs", wall_s=wall, device_ms_total=sum(v[1] for v in agg.values()),
     by_name={k: [v[0], round(v[1], 2)] for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])[:12]})
