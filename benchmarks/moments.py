"""The moments replay (fifth session): a gradient's leaf replay keeps (rho, u) per step, 16 B per
cell, and the adjoint reads them instead of gathering the state (172 B per cell instead of 232).

python3 benchmarks/moments.py [size] -> JSON lines, all on the 3D lid cavity D3Q19 fp32 (bench's
problem): copy bandwidth; forward step and forward step storing moments (CUDA graph of 100 steps);
the fused adjoint step from a state and from moments at several register caps (graph of 100
launches); the checkpointed gradient of T steps, replay="states" vs "moments", in steady state (two
warm-up calls), and a per-kernel device-time profile of one moments gradient without graphs.
Medians of 5 (gradients: of 3), device synchronized (difflbm.bench._time).
"""
import sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import adjoint as A, kernels as K, losses as L
from _common import Cavity, emit, graph_of, profile, timed

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
c = Cavity(size)
p, solver, params, a, mom, cells, bw, t_f = c.p, c.solver, c.params, c.a, c.mom, c.cells, c.bw, c.t_f

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

emit(profile="moments gradient T=100 without graphs", **profile(
    lambda: A.value_and_grad(p, params, st, 100, L.KineticEnergy(), wrt=wrt, graph=False)))
